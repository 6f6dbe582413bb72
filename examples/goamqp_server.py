"""A goamqp-compatible server: the service "greeter", answering the routing key "greet".

    python examples/goamqp_server.py             # in-memory broker: serves, asks itself, exits
    HARE_URL=amqp://guest:guest@localhost/ python examples/goamqp_server.py   # serves until ^C

It declares what a goamqp ``RequestResponseHandler("greet", ...)`` would:
``greeter.direct.exchange.request`` (direct), its queue
``greeter.direct.exchange.request.queue`` bound with ``greet``, and the
response exchange ``greeter.headers.exchange.response`` (headers). A Go
service calls it with goamqp's ``ServicePublisher("greeter", ...)`` and
``ServiceResponseConsumer("greeter", "greet", ...)``; examples/goamqp_client.py
calls it from Python.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import structlog

from hare_py import JSON, Caller, Connection, Reply, Request, RPCClient, RPCServer
from hare_py.conventions import goamqp
from hare_py.testing import SandboxBroker

SERVICE = "greeter"
ROUTING_KEY = "greet"

log = structlog.get_logger("goamqp_server")


class Greeter(RPCServer[int]):
    """Greets ``{"name": ...}`` with ``{"greeting": ...}``; counts what it served."""

    async def init(self, arg: Any) -> int:
        return 0

    async def handle_request(self, request: Request, caller: Caller, served: int) -> Any:
        name = request.payload.get("name") if isinstance(request.payload, dict) else None
        if not name:
            # hare_py callers get RemoteError; goamqp callers get no response (their
            # protocol has no error responses), as from a goamqp handler that failed.
            raise ValueError("a greeting needs a name")
        log.info("greeter.request", name=name, caller=request.headers.get("service"))
        return Reply({"greeting": f"Hello, {name}!"}, served + 1)

    async def handle_call(self, message: Any, caller: Caller, served: int) -> Any:
        return Reply(served, served)


def serve(conn: Connection) -> AbstractAsyncContextManager[Greeter]:
    """The greeter server on ``conn`` (goamqp names, JSON bodies)."""
    return Greeter.start(conn, routing_keys=[ROUTING_KEY], codec=JSON, convention=goamqp(SERVICE))


async def main(url: str | None = None, *, serve_for: float | None = None) -> dict[str, Any]:
    """Serve on ``url`` (default ``HARE_URL``) for ``serve_for`` seconds (default: until
    cancelled). On the in-memory broker, which nobody else can reach, ask it once and stop."""
    url = url or os.environ.get("HARE_URL")
    sandbox = None if url else SandboxBroker()
    result: dict[str, Any] = {"reply": None}
    try:
        async with (
            Connection(url or sandbox.url, name="goamqp-example-server") as conn,  # type: ignore[union-attr]
            serve(conn) as server,
        ):
            if sandbox is not None:
                caller = goamqp(SERVICE, caller="greeter-demo")
                client: RPCClient[Any]
                async with RPCClient.start(conn, codec=JSON, convention=caller) as client:
                    result["reply"] = await client.request({"name": "sandbox"}, ROUTING_KEY)
                    log.info("greeter.demo", reply=result["reply"])
            else:
                log.info("greeter.serving", queue=server.queue)
                await anyio.sleep(math.inf if serve_for is None else serve_for)
            result["served"] = await server.call("served")
    finally:
        if sandbox is not None:
            sandbox.close()
    return result


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        outcome = anyio.run(main)
    except KeyboardInterrupt:
        sys.exit(0)
    print(outcome)
