"""Your first RPC with hare_py: a server and a client in one file (docs/tutorial.md).

python examples/first_rpc.py                    # on the in-memory broker
HARE_URL=amqp://guest:guest@localhost/ python examples/first_rpc.py
HARE_URL=amqp://guest:guest@localhost/ python examples/first_rpc.py trio   # on trio
"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio

from hare_py import Caller, Connection, Reply, Request, RPCClient, RPCServer
from hare_py.testing import SandboxBroker


class Greeter(RPCServer[int]):
    """Answers ``name`` with ``hello, name``; its state counts the greetings."""

    async def init(self, arg: Any) -> int:
        return 0  # the initial state

    async def handle_request(self, request: Request, caller: Caller, greeted: int) -> Any:
        name = request.payload.decode()
        return Reply(f"hello, {name}".encode(), greeted + 1)  # the reply, the new state


async def main() -> bytes:
    """Start a server and a client on one connection, make one call, return its reply."""
    sandbox = None
    url = os.environ.get("HARE_URL")
    if not url:
        sandbox = SandboxBroker()  # an in-memory broker: no RabbitMQ needed
        url = sandbox.url
    try:
        async with (
            Connection(url) as conn,
            Greeter.start(conn, queue="greeter") as server,
            RPCClient.start(conn, timeout=5.0) as client,
        ):
            with anyio.fail_after(5):  # start() does not wait for the broker: wait here
                while not server.connected:
                    await anyio.sleep(0.01)
            reply: bytes = await client.request(b"world", routing_key="greeter")
            print(reply.decode())  # hello, world
            return reply
    finally:
        if sandbox is not None:
            sandbox.close()


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
