"""An RPC server on AMQP 1.0: "shout" answers its payload in capitals.

    python examples/amqp10_server.py
        # peer to peer: listens on 127.0.0.1:5673, no broker; serves until ^C
    HARE_URL='amqp://guest:guest@127.0.0.1:5672/?protocol=1.0' BASE=/queue/ \\
        python examples/amqp10_server.py
        # through a broker (RabbitMQ 3.x with rabbitmq_amqp1_0: BASE=/queue/)

A listening URL has ``listen=1``; clients dial the same host and port
without it. The address served is ``BASE + "shout"`` (``shout`` by default).
An empty payload raises, and the caller gets ``RemoteError``.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import structlog

from hare_py import Caller, Reply, Request, RPCServer
from hare_py.conventions import amqp10

LISTEN = "amqp://127.0.0.1:5673/?protocol=1.0&listen=1"
ADDRESS = "shout"


class Shouter(RPCServer[int]):
    """Upper-cases payloads; counts them."""

    async def init(self, arg: Any) -> int:
        return 0

    async def handle_request(self, request: Request, caller: Caller, shouted: int) -> Any:
        if not request.payload:
            raise ValueError("nothing to shout")
        return Reply(bytes(request.payload).upper(), shouted + 1)

    async def handle_call(self, message: Any, caller: Caller, shouted: int) -> Any:
        return Reply(shouted, shouted)


def serve(url: str, base: str = "") -> AbstractAsyncContextManager[Shouter]:
    """The shouter on ``url`` (a listening one, or a broker's), serving ``base + "shout"``."""
    return Shouter.start(url, queue=ADDRESS, convention=amqp10(base), prefetch=16)


async def main(
    url: str | None = None, base: str | None = None, *, seconds: float = math.inf
) -> int:
    """Serve ``url`` (default ``HARE_URL``, else listen on 127.0.0.1:5673) for ``seconds``;
    returns how many requests it answered."""
    url = url or os.environ.get("HARE_URL") or LISTEN
    base = os.environ.get("BASE", "") if base is None else base
    async with serve(url, base) as server:
        await anyio.sleep(seconds)
        return int(await server.call("count"))


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    anyio.run(main)
