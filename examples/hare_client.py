"""A hare-convention RPC client, with each of its reply-queue choices.

    python examples/hare_client.py [hare|lasting|direct_reply_to]

Without ``HARE_URL`` it runs on the in-memory broker and starts the server of
``examples/hare_server.py`` itself; with ``HARE_URL=amqp://...`` it calls a
server you run with ``python examples/hare_server.py``.

- ``hare`` (default): an exclusive, server-named reply queue per channel.
- ``lasting``: one named reply queue with ``x-expires``, kept across
  reconnects, so requests in flight survive a short connection loss.
- ``direct_reply_to``: RabbitMQ's ``amq.rabbitmq.reply-to`` pseudo-queue.
"""

from __future__ import annotations

import os
import sys
import uuid

import anyio

from hare_py import Connection, RemoteError, RPCClient
from hare_py.conventions import Convention, direct_reply_to, hare
from hare_py.testing import SandboxBroker

sys.path.insert(0, os.path.dirname(__file__))
from hare_server import QUEUE, serve

CONVENTIONS = {
    "hare": lambda: hare(),
    "lasting": lambda: hare(lasting_queue=f"hare-example.replies.{uuid.uuid4().hex[:8]}"),
    "direct_reply_to": lambda: direct_reply_to(),
}


async def main(choice: str = "hare") -> list[bytes]:
    """Make a few calls with the chosen convention; returns the replies."""
    convention: Convention = CONVENTIONS[choice]()
    url = os.environ.get("HARE_URL")
    sandbox = None if url else SandboxBroker()
    replies: list[bytes] = []
    try:
        async with (
            Connection(url or sandbox.url, name="hare-example-client") as conn,  # type: ignore[union-attr]
            anyio.create_task_group() as tg,
        ):
            if sandbox is not None:
                await tg.start(serve, conn)
            async with RPCClient.start(conn, convention=convention, timeout=5) as client:
                for word in (b"hello", b"hare"):
                    replies.append(await client.request(word, QUEUE))
                    print(f"{word!r} -> {replies[-1]!r} (reply queue {client.reply_queue})")
                try:
                    await client.request(b"", QUEUE)
                except RemoteError as exc:
                    print(f"b'' -> RemoteError {exc.type}: {exc.message}")
            tg.cancel_scope.cancel()
    finally:
        if sandbox is not None:
            sandbox.close()
    return replies


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "hare")
