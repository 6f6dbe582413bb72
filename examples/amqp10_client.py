"""Call the AMQP 1.0 "shout" server: peer to peer, or through a broker.

    python examples/amqp10_client.py
        # runs examples/amqp10_server.py here too, listening on a free port, and calls it
    python examples/amqp10_client.py amqp://127.0.0.1:5673/?protocol=1.0
        # calls a listening examples/amqp10_server.py peer to peer
    HARE_URL='amqp://guest:guest@127.0.0.1:5672/?protocol=1.0' BASE=/queue/ \\
        python examples/amqp10_client.py
        # through a broker, where examples/amqp10_server.py serves /queue/shout

Replies come to a private address: a dynamic node of the peer (peer to peer,
proton's broker, Artemis), or ``/queue/hare-reply-<id>`` on RabbitMQ 3.x,
which has none. A handler's failure raises ``RemoteError``; an address a
listening server does not serve raises ``Unroutable`` at once (a broker
may take the request and leave the caller to its deadline instead).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import structlog

from hare_py import RemoteError, RequestTimeout, RPCClient, Unroutable
from hare_py.conventions import amqp10

HERE = Path(__file__).resolve().parent


async def call_all(url: str, base: str = "") -> list[Any]:
    """The calls of this example, each outcome as a value or a short error text."""
    out: list[Any] = []
    async with RPCClient.start(url, convention=amqp10(base), timeout=5) as client:
        for payload, address in [(b"hello", "shout"), (b"amqp 1.0", "shout"), (b"", "shout")]:
            try:
                out.append(await client.request(payload, address))
            except RemoteError as exc:
                out.append(f"error: {exc.message}")
        try:
            await client.request(b"anyone?", "whisper", timeout=2)
        except Unroutable:
            out.append("unroutable")  # a listening server refuses the link at once
        except RequestTimeout:
            out.append("timed out")  # a broker may queue it, or drop it as accepted
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main(url: str | None = None, base: str | None = None) -> list[Any]:
    """Call ``url`` (default: argv, ``HARE_URL``); with none, run the server here, peer to peer."""
    url = url or (sys.argv[1] if len(sys.argv) > 1 else None) or os.environ.get("HARE_URL")
    base = os.environ.get("BASE", "") if base is None else base
    if url:
        return await call_all(url, base)
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from amqp10_server import serve

    dial = f"amqp://127.0.0.1:{_free_port()}/?protocol=1.0"
    async with serve(dial + "&listen=1") as server:
        with anyio.fail_after(5):
            while not server.connected:
                await anyio.sleep(0.01)
        return await call_all(dial)


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    print(anyio.run(main))
