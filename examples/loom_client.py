"""Call the Loom service "agent-coder": one instance by name, then any instance.

    python examples/loom_client.py             # in-memory NATS: runs the server here too
    HARE_URL=nats://127.0.0.1:4222 python examples/loom_client.py
        # calls whatever serves agent-coder there: examples/loom_server.py, or a Loom
        # Go service registered on loom.rpc.agent-coder.inst123.task.assign

Routing keys are ``"<instance>.<method>"``: ``"inst123.task.assign"`` for that
instance, ``"any.task.assign"`` for any one instance. A handler's failure
(``ok: false``) raises ``RemoteError``; a method nobody serves raises
``Unroutable`` at once (NATS's no-responders), not at the deadline.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import structlog

from hare_py import JSON, Connection, RemoteError, RPCClient, Unroutable
from hare_py.conventions import loom
from hare_py.testing import SandboxNatsBroker

SERVICE = "agent-coder"
HERE = Path(__file__).resolve().parent


async def call_all(url: str) -> list[Any]:
    """The calls of this example, each outcome as a value or a short error text."""
    out: list[Any] = []
    client: RPCClient[Any]
    convention = loom(SERVICE, caller_id="loom-example-client")
    async with RPCClient.start(url, codec=JSON, convention=convention, timeout=5) as client:
        for payload, key in [
            ({"task": "refactor"}, "inst123.task.assign"),
            ({"task": "review"}, "any.task.assign"),
            ({}, "any.task.assign"),
            ({"task": "x"}, "inst999.task.assign"),
        ]:
            try:
                out.append(await client.request(payload, key))
            except RemoteError as exc:
                out.append(f"error: {exc.message}")
            except Unroutable:
                out.append("unroutable")
    return out


async def main(url: str | None = None) -> list[Any]:
    """Call ``url`` (default ``HARE_URL``); on the in-memory broker, serve it here too."""
    url = url or os.environ.get("HARE_URL")
    if url:
        return await call_all(url)
    # Nobody else can reach an in-memory broker: run the example server in this process.
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from loom_server import serve

    with SandboxNatsBroker() as broker:
        async with Connection(broker.url) as conn, serve(conn) as server:
            with anyio.fail_after(5):
                while not server.connected:
                    await anyio.sleep(0.01)
            return await call_all(broker.url)


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    print(anyio.run(main))
