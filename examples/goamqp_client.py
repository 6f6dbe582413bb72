"""Call the goamqp service "greeter" as the service "greeter-client".

    python examples/goamqp_client.py             # in-memory broker: runs the server here too
    HARE_URL=amqp://guest:guest@localhost/ python examples/goamqp_client.py
        # calls whatever serves "greeter" there: examples/goamqp_server.py, or a Go
        # service with goamqp's RequestResponseHandler("greet", ...)

Responses come back on ``greeter.headers.exchange.response.queue.greeter-client``,
bound to ``greeter.headers.exchange.response`` with ``service: greeter-client``.
A goamqp server puts no correlation id on its responses, so the client keeps
one request per routing key in flight and matches each response to it (see
"Correlation" in docs/conventions.md).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import structlog

from hare_py import JSON, Connection, RemoteError, RPCClient, Unroutable
from hare_py.conventions import goamqp
from hare_py.testing import SandboxBroker

SERVICE = "greeter"  # the service called
CALLER = "greeter-client"  # our own service name: responses are addressed to it
ROUTING_KEY = "greet"
HERE = Path(__file__).resolve().parent

log = structlog.get_logger("goamqp_client")


async def greet(conn: Connection, names: Sequence[str], *, wait: float = 10.0) -> list[Any]:
    """Greet each name in turn; a failed greeting is listed as its error text."""
    results: list[Any] = []
    client: RPCClient[Any]
    async with RPCClient.start(
        conn, codec=JSON, convention=goamqp(SERVICE, CALLER), timeout=5.0
    ) as client:
        with anyio.fail_after(wait):  # the server may still be starting: wait for it
            while True:
                try:
                    await client.request({"name": "ping"}, ROUTING_KEY)
                    break
                except Unroutable:
                    await anyio.sleep(0.1)
        for name in names:
            try:
                results.append(await client.request({"name": name}, ROUTING_KEY))
            except RemoteError as exc:
                results.append(f"error: {exc}")
            log.info("greeter.reply", name=name, reply=results[-1])
    return results


async def main(url: str | None = None, names: Sequence[str] = ("Ada", "Grace", "")) -> list[Any]:
    """Greet ``names`` through the broker at ``url`` (default ``HARE_URL``, else in memory)."""
    url = url or os.environ.get("HARE_URL")
    if url:
        async with Connection(url, name="goamqp-example-client") as conn:
            return await greet(conn, names)
    # Nobody else can reach an in-memory broker: run the example server in this process.
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from goamqp_server import serve

    with SandboxBroker() as broker:
        async with Connection(broker.url) as conn, serve(conn):
            return await greet(conn, names)


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    print(anyio.run(main))
