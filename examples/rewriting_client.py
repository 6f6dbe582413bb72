"""A rewriting client: every request goes to version 2 of the API (``v2.`` + key).

    python examples/rewriting_client.py             # on the in-memory broker
    HARE_URL=amqp://guest:guest@localhost/ python examples/rewriting_client.py

Callers keep asking for ``upper``; the client's ``handle_request`` returns
``Forward(state, request.replace(routing_key="v2." + key))``, so the request
is published with the routing key ``v2.upper`` and the v2 server answers. The
v1 server, still bound to ``upper``, gets nothing. Rewriting is the place for
versioning, tenant prefixes, or headers every request must carry.
"""

from __future__ import annotations

import os
from typing import Any

import anyio

from hare_py import Caller, Connection, Forward, Reply, Request, RPCClient, RPCServer
from hare_py.testing import SandboxBroker

EXCHANGE = "api"


class V2Client(RPCClient[None]):
    """Routes every request to ``v2.<key>`` and tags it with the API version."""

    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        rewritten = request.replace(
            routing_key="v2." + request.routing_key,
            headers={**request.headers, "api-version": "2"},
        )
        return Forward(state, rewritten)


class Upper(RPCServer[str]):
    """Answers with the payload in capitals, prefixed by the version it serves."""

    async def init(self, version: str) -> str:
        return version

    async def handle_request(self, request: Request, caller: Caller, version: str) -> Any:
        seen = request.headers.get("api-version", "-")
        text = f"{version}:{request.payload.decode().upper()} (api-version {seen})"
        return Reply(text.encode(), version)


async def main() -> list[str]:
    """Ask for ``upper`` twice through the rewriting client; returns the replies."""
    sandbox = None
    url = os.environ.get("HARE_URL")
    if not url:
        sandbox = SandboxBroker()
        url = sandbox.url
    try:
        async with (
            Connection(url, name="rewriting-client-example") as conn,
            Upper.start(
                conn, queue="upper.v1", exchange=EXCHANGE, routing_keys=["upper"], arg="v1"
            ) as v1,
            Upper.start(
                conn, queue="upper.v2", exchange=EXCHANGE, routing_keys=["v2.upper"], arg="v2"
            ) as v2,
            V2Client.start(conn, exchange=EXCHANGE, timeout=5.0) as client,
        ):
            with anyio.fail_after(5):
                while not (v1.connected and v2.connected):
                    await anyio.sleep(0.01)
            replies = []
            for word in (b"hello", b"versions"):
                replies.append((await client.request(word, routing_key="upper")).decode())
                print(f"upper {word.decode()!r} -> {replies[-1]}")
            return replies
    finally:
        if sandbox is not None:
            sandbox.close()


if __name__ == "__main__":
    anyio.run(main)
