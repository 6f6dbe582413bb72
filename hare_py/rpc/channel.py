"""The session keeper that RPCClient and RPCServer share.

It runs beside an actor: it waits for the connection, opens a session (an
AMQP 0-9-1 channel, a NATS session, ...), lets the behaviour declare what it
needs on it (``setup``), and reports ``ChannelUp`` and then ``ChannelDown`` to
the actor's mailbox. A failed setup is retried with backoff; a consumer
cancelled by the broker (its queue was deleted) closes the session, so that a
fresh one, with fresh declarations, replaces it. The actor never waits on any
of this. Cancelled, it closes its session, or hands it to ``hand_over`` (an
actor that drains it before closing it itself).

A session whose server is going away (``Session.draining``: NATS lame duck
mode) is moved off, make before break: the next session is opened on the
connection that replaces the old one and posted (``ChannelUp``) first, so
that new work goes there; the old one is kept until the actor needs nothing
more from it (``settled``: a client's replies to what it sent there), then
retired (``Session.retire``: nothing routed to it is dropped) and closed,
and its ``ChannelDown`` posted. One that closes first is posted at once.
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
#: ``settled(session)`` returns once the actor needs nothing more from a session it
#: moved off (its successor's ``ChannelUp`` is in the mailbox before).
Settled = Callable[[Session], Awaitable[None]]

#: Bounds retiring a drained session (NATS: the move's probe, then a flush).
MOVE_TIMEOUT = 5.0


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
    settled: Settled | None = None,
) -> None:
    """Keep one session open for an actor, forever; cancel it to stop.

    With ``hand_over``, a session still open when this is cancelled after its
    ``ChannelUp`` is passed to it instead of closed: the callee must close it. So
    are the sessions of moves not finished yet, before it (drain them too: what the
    server they leave routed to them is not routed again).
    With ``settled``, a session moved off a draining server is retired once it
    returns (see the module docstring).
    """
    failures = 0
    connects = 0
    channel: Session | None = None
    up = False
    waiting: list[_Move] = []  # draining sessions whose successor is not up yet
    moving: list[_Move] = []  # every move not finished
    async with anyio.create_task_group() as moves:
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
                for move in waiting:
                    move.successor_is(channel)
                waiting.clear()
                reason = await watch.first_close(channel)
                if reason is None:
                    log.info("rpc.session_draining", connects=connects)
                    move = _Move(channel, settled, post, log)
                    waiting.append(move)
                    moving[:] = [m for m in moving if not m.finished]
                    moving.append(move)
                    moves.start_soon(move.run)
                    channel = None
                    continue
                log.warning("rpc.channel_closed", reason=str(reason))
                post(ChannelDown(channel, reason))
                channel = None
        finally:
            for move in moving:  # shielded from our cancellation: they end here, in order
                if hand_over is not None:
                    move.hand_over(hand_over)
                move.cancel()  # it closes its session, unless handed over
            moves.cancel_scope.cancel()
            if channel is not None:
                if up and hand_over is not None and channel.is_open:
                    hand_over(channel)
                else:
                    await close_quietly(channel)


class _Move:
    """A session moved off a draining server, kept until its successor is up and the
    actor has settled it, then retired and closed (or until it closes by itself)."""

    def __init__(
        self, session: Session, settled: Settled | None, post: Callable[[Any], None], log: Any
    ) -> None:
        self.session = session
        self._settled = settled
        self._post = post
        self._log = log
        self._successor: Session | None = None
        self._up = anyio.Event()
        self.finished = False
        self._handed = False
        # Only keep_channel ends a move, after deciding whether to hand its session over.
        self._scope = anyio.CancelScope(shield=True)

    def cancel(self) -> None:
        self._scope.cancel()

    def hand_over(self, hand_over: Callable[[Session], None]) -> None:
        """Stopped mid-move: the session goes to ``hand_over`` to drain, not closed here."""
        if not self.finished and self.session.is_open:
            self._handed = True
            hand_over(self.session)

    def successor_is(self, successor: Session) -> None:
        self._successor = successor
        self._up.set()

    async def run(self) -> None:
        with self._scope:
            await self._run()

    async def _run(self) -> None:
        old = self.session
        reason: CloseReason | None = None
        try:
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    nonlocal reason
                    reason = await old.wait_closed()
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                await self._up.wait()
                assert self._successor is not None
                if self._settled is not None:
                    await self._settled(old)
                try:
                    await old.retire(self._successor, MOVE_TIMEOUT)
                except (ConnectionLost, BrokerError) as exc:
                    self._log.warning("rpc.session_retire_failed", error=str(exc))
                tg.cancel_scope.cancel()
        finally:
            self.finished = True
            if not self._handed:
                await close_quietly(old)
        if reason is None:
            reason = CloseReason(0, "moved off a server in lame duck mode", "client")
            self._log.info("rpc.session_retired")
        else:
            self._log.warning("rpc.channel_closed", reason=str(reason))
        self._post(ChannelDown(old, reason))


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
