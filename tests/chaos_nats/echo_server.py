"""The NATS chaos suite's echo server, run in its own process.

    python tests/chaos_nats/echo_server.py URL[,URL...] SERVICE INSTANCE

A hare_py ``RPCServer`` on the loom convention (JSON payloads), serving
every method of ``INSTANCE`` and of ``any`` instance of ``SERVICE``. It
connects to the first URL it can (and to the cluster's other servers it
learns of), reconnects quickly, prints ``ready`` once it is subscribed,
echoes every request, and shuts down in order on SIGTERM or SIGINT.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import anyio
import structlog

from hare_py import JSON, Backoff, Caller, Connection, Reply, Request, RPCServer
from hare_py.conventions import loom


class Echo(RPCServer[None]):
    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        return Reply(request.payload, state)


async def main(urls: str, service: str, instance: str) -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(30),  # warnings and up
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    fast = Backoff(initial=0.05, maximum=0.5)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with (
            Connection(urls.split(","), heartbeat=1.0, backoff=fast) as conn,
            Echo.start(
                conn,
                codec=JSON,
                convention=loom(service, instance_id=instance),
                prefetch=0,
                max_restarts=100,
                backoff=fast,
            ) as server,
        ):
            while not server.connected:
                await anyio.sleep(0.01)
            print("ready", flush=True)
            async for _ in signals:
                break


if __name__ == "__main__":
    urls, service, instance = sys.argv[1:4]
    anyio.run(main, urls, service, instance)
