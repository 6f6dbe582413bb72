"""A Loom service instance on NATS: "agent-coder" instance "inst123", method "task.assign".

    python examples/loom_server.py             # in-memory NATS: serves, asks itself, exits
    HARE_URL=nats://127.0.0.1:4222 python examples/loom_server.py   # serves until ^C

It answers what Loom's Go ``rpc.Register(nc, "loom.rpc.agent-coder.inst123.task.assign",
...)`` would, and also ``loom.rpc.agent-coder.any.task.assign`` in queue group
``agent-coder``, so that callers asking for any instance reach exactly one.
Start it with ``COMPAT_WILDCARD=1`` to let unmodified Loom callers, which
request ``loom.rpc.agent-coder.*.task.assign``, reach one instance too (then a
call to an instance that does not exist waits out its deadline instead of
failing at once: see the loom convention).
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
from hare_py.conventions import loom
from hare_py.testing import SandboxNatsBroker

SERVICE = "agent-coder"
INSTANCE = "inst123"
METHOD = "task.assign"

log = structlog.get_logger("loom_server")


class Coder(RPCServer[int]):
    """Takes ``{"task": ...}`` and answers ``{"accepted": ..., "by": ...}``; counts tasks."""

    async def init(self, arg: Any) -> int:
        return 0

    async def handle_request(self, request: Request, caller: Caller, taken: int) -> Any:
        task = request.payload.get("task") if isinstance(request.payload, dict) else None
        if not task:
            raise ValueError("a task needs a name")  # the caller gets ok: false
        log.info("coder.task", task=task, trace_id=request.trace_id)
        return Reply({"accepted": task, "by": INSTANCE}, taken + 1)

    async def handle_call(self, message: Any, caller: Caller, taken: int) -> Any:
        return Reply(taken, taken)


def serve(conn: Connection) -> AbstractAsyncContextManager[Coder]:
    """The coder instance on ``conn``."""
    compat = os.environ.get("COMPAT_WILDCARD") == "1"
    convention = loom(SERVICE, instance_id=INSTANCE, compat_wildcard=compat)
    return Coder.start(conn, codec=JSON, convention=convention, routing_keys=[METHOD])


async def main(url: str | None = None, *, serve_for: float | None = None) -> dict[str, Any]:
    """Serve on ``url`` (default ``HARE_URL``) for ``serve_for`` seconds (default: until
    cancelled). On the in-memory broker, which nobody else can reach, ask it once and stop."""
    url = url or os.environ.get("HARE_URL")
    sandbox = None if url else SandboxNatsBroker()
    result: dict[str, Any] = {"reply": None}
    try:
        async with (
            Connection(url or sandbox.url, name="loom-example-server") as conn,  # type: ignore[union-attr]
            serve(conn) as server,
        ):
            if sandbox is not None:
                client: RPCClient[Any]
                async with RPCClient.start(conn, codec=JSON, convention=loom(SERVICE)) as client:
                    result["reply"] = await client.request({"task": "demo"}, f"any.{METHOD}")
                    log.info("coder.demo", reply=result["reply"])
            else:
                log.info("coder.serving", subject=f"loom.rpc.{SERVICE}.{INSTANCE}.{METHOD}")
                await anyio.sleep(math.inf if serve_for is None else serve_for)
            result["taken"] = await server.call("taken")
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
