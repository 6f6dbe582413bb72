"""A hare-convention RPC server: answers requests on the queue ``upper``.

    HARE_URL=amqp://guest:guest@localhost/ python examples/hare_server.py

It serves until SIGINT or SIGTERM, then stops in order (``terminate`` runs,
requests it has not answered are redelivered to another instance).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import anyio

from hare_py import Caller, Connection, Reply, Request, RPCServer

QUEUE = "upper"


class Upper(RPCServer[int]):
    """Answers with the payload in capitals; refuses empty payloads with an error."""

    async def init(self, arg: Any) -> int:
        return 0

    async def handle_request(self, request: Request, caller: Caller, served: int) -> Any:
        if not request.payload:
            raise ValueError("empty payload")  # the client raises RemoteError
        return Reply(request.payload.upper(), served + 1)


async def serve(conn: Connection, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; ``task_status.started()`` once the queue is consumed."""
    async with Upper.start(conn, queue=QUEUE) as server:
        while not server.connected:
            await anyio.sleep(0.01)
        task_status.started()
        await anyio.sleep_forever()


async def main() -> None:
    url = os.environ.get("HARE_URL", "amqp://guest:guest@localhost/")
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with (
            Connection(url, name="hare-example-server") as conn,
            anyio.create_task_group() as tg,
        ):
            await tg.start(serve, conn)
            print(f"serving {QUEUE!r} on {conn.urls[0]}; Ctrl-C to stop")
            async for _ in signals:
                tg.cancel_scope.cancel()
                break


if __name__ == "__main__":
    anyio.run(main)
