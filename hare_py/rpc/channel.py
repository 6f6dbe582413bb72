"""The channel keeper that RPCClient and RPCServer share.

It runs beside an actor: it waits for the connection, opens a channel, lets
the behaviour declare what it needs on it (``setup``), and reports
``ChannelUp`` and then ``ChannelDown`` to the actor's mailbox. A failed setup
is retried with backoff; a consumer cancelled by the broker (its queue was
deleted) closes the channel, so that a fresh one, with fresh declarations,
replaces it. The actor never waits on any of this.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ..actor.backoff import Backoff
from ..actor.connection import Connection
from ..errors import BrokerError, ConfigError, ConnectionLost
from ..transport.base import EXCHANGE_TYPES, Channel, CloseReason, OnCancel, OnReturn
from .messages import ConnectedMeta

__all__ = ["ChannelDown", "ChannelUp", "check_exchange", "close_quietly", "keep_channel"]

#: ``setup(channel, on_cancel, connects)`` declares and consumes; returns the meta.
Setup = Callable[[Channel, OnCancel, int], Awaitable[ConnectedMeta]]


class ChannelUp:
    __slots__ = ("channel", "meta")

    def __init__(self, channel: Channel, meta: ConnectedMeta) -> None:
        self.channel = channel
        self.meta = meta


class ChannelDown:
    __slots__ = ("channel", "reason")

    def __init__(self, channel: Channel, reason: CloseReason) -> None:
        self.channel = channel
        self.reason = reason


def check_exchange(exchange: object, exchange_type: object) -> None:
    """``ConfigError`` for an exchange name or type that cannot work."""
    if not isinstance(exchange, str):
        raise ConfigError(f"exchange must be a string, got {exchange!r}")
    if exchange_type not in EXCHANGE_TYPES:
        raise ConfigError(
            f"unknown exchange type {exchange_type!r}; expected one of "
            f"{', '.join(sorted(EXCHANGE_TYPES))}"
        )
    if exchange == "" and exchange_type != "direct":
        raise ConfigError(
            f"the default exchange '' is a direct exchange, not {exchange_type!r}; "
            "name an exchange to use another type"
        )


async def keep_channel(
    *,
    connection: Connection,
    setup: Setup,
    post: Callable[[Any], None],
    backoff: Backoff,
    log: Any,
    on_return: OnReturn | None = None,
    on_error: Callable[[BaseException | None], None] = lambda exc: None,
) -> None:
    """Keep one channel open for an actor, forever; cancel it to stop."""
    failures = 0
    connects = 0
    channel: Channel | None = None
    try:
        while True:
            conn = await connection.wait_connected()
            watch = _ConsumerWatch()
            try:
                channel = await conn.open_channel(on_return=on_return)
                meta = await setup(channel, watch.on_cancel, connects + 1)
            except (ConnectionLost, BrokerError) as exc:
                on_error(exc)
                log.warning("rpc.channel_setup_failed", error=str(exc))
                if channel is not None:
                    await close_quietly(channel)
                    channel = None
                await anyio.sleep(backoff.delay(failures))
                failures += 1
                continue
            failures = 0
            connects += 1
            on_error(None)
            log.info("rpc.channel_opened", queue=meta.reply_queue, connects=connects)
            post(ChannelUp(channel, meta))
            reason = await watch.first_close(channel)
            log.warning("rpc.channel_closed", reason=str(reason))
            post(ChannelDown(channel, reason))
            channel = None
    finally:
        if channel is not None:
            await close_quietly(channel)


async def close_quietly(channel: Channel) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
        await channel.close()


class _ConsumerWatch:
    """Notices the broker cancelling the consumer (its queue was deleted)."""

    def __init__(self) -> None:
        self.gone = anyio.Event()
        self.reason: CloseReason | None = None

    def on_cancel(self, tag: str, reason: CloseReason) -> None:
        self.reason = reason
        self.gone.set()

    async def first_close(self, channel: Channel) -> CloseReason:
        """Wait until the channel closes or its consumer is cancelled (then close it)."""
        async with anyio.create_task_group() as tg:

            async def watch_consumer() -> None:
                await self.gone.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(watch_consumer)
            reason = await channel.wait_closed()
            tg.cancel_scope.cancel()
            return reason
        await channel.close()
        assert self.reason is not None
        return CloseReason(self.reason.code, f"consumer cancelled: {self.reason.text}", "broker")
