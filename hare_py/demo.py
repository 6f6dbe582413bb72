"""The hare_py demo: a supervised RPC client and server, a channel killed midway.

    make demo                                    # or: hare-py demo, python examples/demo.py
    HARE_URL=amqp://guest:guest@localhost/ make demo   # on RabbitMQ

Watch the logs: after the client's channel is killed, the client opens a new
channel with a fresh reply queue (``rpc.channel_opened connects=2``), calls
``handle_connected`` again, and requests go on. A request caught in flight by
the kill fails at once with ``ConnectionLost``; an idempotent one is resent.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import anyio
import structlog

from . import (
    Caller,
    ConnectedMeta,
    Connection,
    ConnectionLost,
    HareError,
    NoReply,
    Reply,
    Request,
    RPCClient,
    RPCServer,
)
from ._log import console_handler
from .testing import SandboxBroker, break_channel

log = structlog.get_logger("demo")


class Upper(RPCServer[int]):
    """Answers every request with its payload in capitals; counts what it served."""

    async def init(self, arg: Any) -> int:
        return 0

    async def handle_request(self, request: Request, caller: Caller, served: int) -> Any:
        return Reply(request.payload.upper(), served + 1)

    async def handle_call(self, message: Any, caller: Caller, served: int) -> Any:
        return Reply(served, served)


class Client(RPCClient[list[str]]):
    """Remembers every reply queue it was given, to show the reconnects."""

    async def init(self, arg: Any) -> list[str]:
        return []

    async def handle_connected(self, meta: ConnectedMeta, queues: list[str]) -> Any:
        log.info("demo.connected", reply_queue=meta.reply_queue, channel=meta.connects)
        return NoReply([*queues, meta.reply_queue])

    async def handle_call(self, message: Any, caller: Caller, queues: list[str]) -> Any:
        return Reply(queues, queues)


def configure_logging(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Print ``level`` and up readably on ``stream`` (stdout): the demo's events and hare_py's.

    The demo is an application, so it configures logging; hare_py itself never
    does. Calling it again replaces the previous set-up.
    """
    global _handler
    stream = sys.stdout if stream is None else stream
    colors = stream.isatty()
    timestamps = "%H:%M:%S.%f"
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt=timestamps),
            structlog.dev.ConsoleRenderer(colors=colors),
        ],
    )
    hare = logging.getLogger("hare_py")  # hare_py logs through the stdlib
    if _handler is not None:
        hare.removeHandler(_handler)
    _handler = console_handler(stream, colors=colors, timestamps=timestamps)
    hare.addHandler(_handler)
    hare.setLevel(level)


_handler: logging.Handler | None = None


async def main(requests: int = 20, url: str | None = None) -> dict[str, int]:
    """Run the demo; returns counts of what happened (the tests check them)."""
    url = url or os.environ.get("HARE_URL")
    sandbox: SandboxBroker | None = None
    if not url:
        sandbox = SandboxBroker("demo")
        url = sandbox.url
    counts = {"ok": 0, "connection_lost": 0, "other_errors": 0, "reply_queues": 0}
    try:
        async with (
            Connection(url, name="hare-demo") as conn,
            Upper.start(conn, queue="demo.upper") as server,
            Client.start(conn, timeout=2.0) as client,
        ):
            for i in range(requests):
                if i == requests // 2:
                    log.warning("demo.killing_channel", reply_queue=client.reply_queue)
                    await break_channel(client)
                payload = f"request {i}".encode()
                try:
                    reply = await client.request(payload, "demo.upper", idempotent=i % 2 == 0)
                except ConnectionLost as exc:
                    counts["connection_lost"] += 1
                    log.warning("demo.request_lost", request=i, error=str(exc))
                except HareError as exc:
                    counts["other_errors"] += 1
                    log.error("demo.request_failed", request=i, error=str(exc))
                else:
                    counts["ok"] += 1
                    log.info("demo.reply", request=i, reply=reply.decode())
                await anyio.sleep(0.05)
            counts["reply_queues"] = len(await client.call("reply queues"))
            log.info("demo.done", served=await server.call("served"), **counts)
    finally:
        if sandbox is not None:
            sandbox.close()
    return counts


def run() -> int:
    """Configure console logging, run the demo, and return an exit status."""
    configure_logging()
    result = anyio.run(main)
    return 0 if result["ok"] and result["reply_queues"] >= 2 else 1


if __name__ == "__main__":
    sys.exit(run())
