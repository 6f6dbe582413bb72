"""The AMQP 1.0 chaos suite's echo server, run in its own process.

    python tests/chaos_amqp10/echo_server.py URL ADDRESS

Serves ADDRESS on URL (a broker's, or a listening one with ``listen=1``),
prints ``ready`` once it does, echoes every request, and stops in order on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import anyio
import structlog

from hare_py import Caller, Reply, Request, RPCServer
from hare_py.conventions import amqp10


class Echo(RPCServer[None]):
    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        return Reply(request.payload, state)


async def main(url: str, address: str) -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(30),  # warnings and up
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with Echo.start(
            url, queue=address, convention=amqp10(), prefetch=256, max_restarts=100
        ) as server:
            while not server.connected:
                await anyio.sleep(0.01)
            print("ready", flush=True)
            async for _ in signals:
                break


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
