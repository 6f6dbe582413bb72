"""The session keeper that RPCClient and RPCServer share.

It runs beside an actor: it waits for the connection, opens a session (an
AMQP 0-9-1 channel, a NATS session, ...), lets the behaviour declare what it
needs on it (``setup``), and reports ``ChannelUp`` and then ``ChannelDown`` to
the actor's mailbox. A failed setup is retried with backoff; a consumer
cancelled by the broker (its queue was deleted) closes the session, so that a
fresh one, with fresh declarations, replaces it. The actor never waits on any
of this. Cancelled, it closes its session, or hands it to ``hand_over`` (an
actor that drains it before closing it itself).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ..actor.backoff import Backoff
from ..actor.connection import Connection
from ..errors import BrokerError, ConfigError, ConnectionLost
from ..transport.base import EXCHANGE_TYPES, CloseReason, OnCancel, OnReturn, Session
from .messages import ConnectedMeta

__all__ = [
    "ChannelDown",
    "ChannelUp",
    "check_exchange",
    "check_protocol",
    "close_quietly",
    "keep_channel",
]

#: ``setup(channel, on_cancel, connects)`` declares and consumes; returns the meta.
Setup = Callable[[Session, OnCancel, int], Awaitable[ConnectedMeta]]


class ChannelUp:
    __slots__ = ("channel", "meta")

    def __init__(self, channel: Session, meta: ConnectedMeta) -> None:
        self.channel = channel
        self.meta = meta


class ChannelDown:
    __slots__ = ("channel", "reason")

    def __init__(self, channel: Session, reason: CloseReason) -> None:
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


def check_protocol(convention: Any, connection: Connection) -> None:
    """``ConfigError`` when ``convention`` runs on another protocol than ``connection``."""
    wanted = convention.wire_protocol
    if wanted != connection.wire_protocol:
        raise ConfigError(
            f"{convention!r} runs on {wanted}, but {connection.urls[0]} speaks "
            f"{connection.wire_protocol}: choose a convention for that protocol"
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
    hand_over: Callable[[Session], None] | None = None,
) -> None:
    """Keep one session open for an actor, forever; cancel it to stop.

    With ``hand_over``, a session still open when this is cancelled after its
    ``ChannelUp`` is passed to it instead of closed: the callee must close it.
    """
    failures = 0
    connects = 0
    channel: Session | None = None
    up = False
    retiring: Session | None = None  # a draining session, closed once its successor is up
    try:
        while True:
            conn = await connection.wait_connected()
            watch = _ConsumerWatch()
            up = False
            try:
                channel = await conn.open_session(on_return=on_return)
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
            up = True
            if retiring is not None:  # its successor is up: now it may go
                await _retire(retiring, post, log)
                retiring = None
            reason = await watch.first_close(channel)
            if reason is None:
                # Its server is going away (NATS lame duck): open the next session
                # first, and close this one once that is up, so nothing falls between.
                log.info("rpc.session_draining", connects=connects)
                retiring, channel = channel, None
                continue
            log.warning("rpc.channel_closed", reason=str(reason))
            post(ChannelDown(channel, reason))
            channel = None
    finally:
        if retiring is not None:
            await close_quietly(retiring)
        if channel is not None:
            if up and hand_over is not None and channel.is_open:
                hand_over(channel)
            else:
                await close_quietly(channel)


async def _retire(session: Session, post: Callable[[Any], None], log: Any) -> None:
    """Close a drained session whose successor is up, and say so to the actor."""
    await close_quietly(session)
    reason = CloseReason(0, "moved off a server in lame duck mode", "client")
    log.info("rpc.session_retired")
    post(ChannelDown(session, reason))


async def close_quietly(channel: Session) -> None:
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

    async def first_close(self, channel: Session) -> CloseReason | None:
        """Wait until the session closes or its consumer is cancelled (then close
        it); None when the session is draining instead (it stays open)."""
        draining = False
        async with anyio.create_task_group() as tg:

            async def watch_consumer() -> None:
                await self.gone.wait()
                tg.cancel_scope.cancel()

            async def watch_draining() -> None:
                nonlocal draining
                await channel.wait_draining()
                if channel.is_open and channel.draining:
                    draining = True
                    tg.cancel_scope.cancel()

            tg.start_soon(watch_consumer)
            tg.start_soon(watch_draining)
            reason = await channel.wait_closed()
            tg.cancel_scope.cancel()
            return reason
        if draining:
            return None
        await channel.close()
        assert self.reason is not None
        return CloseReason(self.reason.code, f"consumer cancelled: {self.reason.text}", "broker")
