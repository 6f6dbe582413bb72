"""Hare's caching client: repeated payloads are answered locally, not sent again.

    python examples/caching_client.py               # on the in-memory broker
    HARE_URL=amqp://guest:guest@localhost/ python examples/caching_client.py

This is the example of Elixir's ``Hare.RPC.Client`` docs (a client that does
not send a payload it has already sent), keeping the first reply to answer
the repeats with. ``handle_request`` short-circuits with ``Reply``;
``handle_response`` sees every reply first and fills the cache. The cache is
the actor's state: callbacks never run concurrently, so no lock is needed,
and it survives reconnects (only a crash, which reruns ``init``, empties it).
"""

from __future__ import annotations

import os
from typing import Any

import anyio

from hare_py import Caller, Connection, Forward, Reply, Request, Response, RPCClient, RPCServer
from hare_py.testing import SandboxBroker

QUEUE = "slow.square"


class CachingClient(RPCClient[dict[bytes, bytes]]):
    """Sends each distinct payload once; answers repeats from its cache."""

    async def init(self, arg: Any) -> dict[bytes, bytes]:
        return {}

    async def handle_request(
        self, request: Request, caller: Caller, cache: dict[bytes, bytes]
    ) -> Any:
        if request.payload in cache:
            return Reply(cache[request.payload], cache)  # answered locally
        return Forward(cache)  # sent unchanged

    async def handle_response(
        self, response: Response, caller: Caller, cache: dict[bytes, bytes]
    ) -> Any:
        if response.error is not None:
            return Reply(response.error, cache)  # errors are not cached
        assert caller.request is not None
        return Reply(response.payload, {**cache, caller.request.payload: response.payload})

    async def handle_call(self, message: Any, caller: Caller, cache: dict[bytes, bytes]) -> Any:
        return Reply(len(cache), cache)  # client.call("size")


class Square(RPCServer[int]):
    """Squares a number; its state counts the requests it really handled."""

    async def init(self, arg: Any) -> int:
        return 0

    async def handle_request(self, request: Request, caller: Caller, handled: int) -> Any:
        return Reply(str(int(request.payload) ** 2).encode(), handled + 1)

    async def handle_call(self, message: Any, caller: Caller, handled: int) -> Any:
        return Reply(handled, handled)  # server.call("handled")


async def main() -> dict[str, Any]:
    """Ask for 2, 3, 2, 2, 3; returns the replies and how many reached the server."""
    sandbox = None
    url = os.environ.get("HARE_URL")
    if not url:
        sandbox = SandboxBroker()
        url = sandbox.url
    try:
        async with (
            Connection(url, name="caching-client-example") as conn,
            Square.start(conn, queue=QUEUE) as server,
            CachingClient.start(conn, timeout=5.0) as client,
        ):
            with anyio.fail_after(5):
                while not server.connected:
                    await anyio.sleep(0.01)
            replies = []
            for number in (b"2", b"3", b"2", b"2", b"3"):
                replies.append(await client.request(number, QUEUE))
                print(f"{number.decode()} -> {replies[-1].decode()}")
            handled = await server.call("handled")
            print(f"{len(replies)} requests, {handled} reached the server")
            return {"replies": replies, "handled": handled, "cached": await client.call("size")}
    finally:
        if sandbox is not None:
            sandbox.close()


if __name__ == "__main__":
    anyio.run(main)
