"""Helpers for the transport contract tests: connections, names, inboxes."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, TypeAlias

import anyio
from anyio.abc import TaskGroup
from held_connections import HeldConnections
from inbox import Inbox

from hare_py.errors import HareError
from hare_py.transport import (
    Channel,
    ConnectOptions,
    Delivery,
    TransportConnection,
    backend_for,
)
from hare_py.transport.base import CloseReason

__all__ = ["Amqp", "ForceClose", "Inbox", "assert_broker_closed", "drain"]

# force_close(connection_name, reason): the broker closes that connection.
ForceClose: TypeAlias = Callable[[str, str], Awaitable[None]]


class Amqp(HeldConnections):
    """Connections and names for one test; cleans up after it."""

    def __init__(self, url: str, tg: TaskGroup) -> None:
        super().__init__(url, tg)
        self._queues: list[str] = []
        self._exchanges: list[str] = []

    def queue_name(self, label: str = "q") -> str:
        name = f"hare-contract-{label}-{uuid.uuid4().hex[:12]}"
        self._queues.append(name)
        return name

    def exchange_name(self, label: str = "x") -> str:
        name = f"hare-contract-{label}-{uuid.uuid4().hex[:12]}"
        self._exchanges.append(name)
        return name

    async def channel(
        self,
        conn: TransportConnection | None = None,
        *,
        on_return: Any = None,
        publisher_confirms: bool = False,
    ) -> Channel:
        if conn is None:
            conn = await self.connect()
        return await conn.open_channel(on_return=on_return, publisher_confirms=publisher_confirms)

    async def cleanup(self) -> None:
        if not self._queues and not self._exchanges:
            return
        with anyio.move_on_after(10, shield=True):
            async with backend_for(self.url).connect(self.url, ConnectOptions()) as conn:
                for name in self._queues:
                    ch = await conn.open_channel()
                    # Another connection's exclusive queue goes with that connection.
                    with suppress(HareError):
                        await ch.queue_delete(name)
                    await ch.close()
                ch = await conn.open_channel()
                for name in self._exchanges:
                    await ch.exchange_delete(name)


async def drain(ch: Channel, queue: str) -> list[Delivery]:
    """Every ready message of ``queue`` (auto-acked), in queue order.

    Call it after publishing with confirms: the broker has then enqueued them.
    """
    info = await ch.queue_declare(queue, passive=True)
    inbox = Inbox()
    tag = await ch.basic_consume(queue, inbox, no_ack=True)
    messages = await inbox.take(info.message_count)
    await ch.basic_cancel(tag)
    return messages


def assert_broker_closed(reason: CloseReason | None, code: int) -> None:
    """The channel was closed by the broker with ``code``."""
    assert reason is not None
    assert (reason.code, reason.by) == (code, "broker"), reason
