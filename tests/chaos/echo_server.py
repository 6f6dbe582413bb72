"""The chaos suite's echo server, run in its own process.

    python tests/chaos/echo_server.py AMQP_URL QUEUE [amqp10]

With ``amqp10`` it serves the address QUEUE with the ``amqp10()`` convention
(on a broker's URL, or a listening one with ``listen=1``). Prints ``ready``
once it consumes its queue, echoes every request, and shuts
down in order on SIGTERM or SIGINT.
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


async def main(url: str, queue: str, convention: str = "") -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(30),  # warnings and up
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        options: dict[str, Any] = {"convention": amqp10()} if convention == "amqp10" else {}
        async with Echo.start(
            url, queue=queue, prefetch=256, max_restarts=100, **options
        ) as server:
            while not server.connected:
                await anyio.sleep(0.01)
            print("ready", flush=True)
            async for _ in signals:
                break


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
