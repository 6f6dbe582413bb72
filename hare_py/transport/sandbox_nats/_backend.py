"""The anyio layer: ``NatsSession`` on top of the sans-I/O NATS server.

Rules this module keeps:

- It plays the client's part. It checks a batch as hare_py's NATS client
  does before anything leaves (``_wire``), allocates sids per connection,
  and maps messages onto ``Delivery`` and no-responders onto
  ``ReturnedMessage`` exactly as the ``NatsSession`` docstring says.
- Each connection owns a task group and one dispatcher task, its reader:
  every server event goes through one unbounded stream, so callbacks run in
  server order across the connection's sessions, after the operation that
  caused them has returned, and a PONG is seen only after every message the
  server sent before it.
- An unsubscribed sid keeps its callback until the server has seen the
  UNSUB (the PONG to a PING sent after it), so a message routed before it is
  delivered, not lost. A closed session gets nothing more.
- A failing callback is logged and the connection goes on.
- As the NATS driver does: with a heartbeat, the connection PINGs on that
  interval and declares the server dead after two PINGs without a PONG
  (``by="network"``); the close reason is settled once, and every session
  then closes by ``"connection"``; lame duck mode settles the reason at once
  (so that a supervised ``Connection`` connects elsewhere) but keeps the
  wire up while the sessions drain, and ``close()`` waits for them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from ..._log import get_logger
from ...errors import ConnectionLost
from .._sandbox_common import serve_connection
from ..base import (
    EMPTY_PROPERTIES,
    NATS,
    NO_ROUTE,
    Backend,
    CloseReason,
    ConnectOptions,
    Delivery,
    Message,
    NatsSession,
    OnDelivery,
    OnReturn,
    Outcome,
    Properties,
    ReturnedMessage,
    Session,
    TransportConnection,
)
from ..subjects import check_queue_group, check_subscribe_subject, first_sid
from ..url import BrokerURL
from ._broker import SandboxNatsBroker, lookup_broker
from ._state import ConnectionClosed, Event, LameDuck, Msg, NoResponders, Pong
from ._wire import encode_batch, headers_mapping

__all__ = ["SandboxNatsBackend", "SandboxNatsConnection", "SandboxNatsSession"]

log = get_logger("hare_py.transport.sandbox_nats")

CLIENT_CLOSE = CloseReason(0, "closed by the client", "client")
LAME_DUCK_TEXT = "lame duck mode"
MAX_OUTSTANDING_PINGS = 2
DRAIN_TIMEOUT = 30.0  # seconds a closing connection in lame duck mode waits for its sessions


@dataclass(eq=False)
class _Ping:
    """A PING waiting for its PONG; PONGs answer PINGs in order."""

    then: Callable[[], None] | None = None
    event: anyio.Event = field(default_factory=anyio.Event)
    answered: bool = False


@dataclass(frozen=True, slots=True)
class _Sub:
    session: SandboxNatsSession
    on_message: OnDelivery


class SandboxNatsBackend(Backend):
    """Connects ``sandbox+nats://NAME`` URLs to the registered ``SandboxNatsBroker`` NAME."""

    schemes: ClassVar[tuple[str, ...]] = ("sandbox+nats",)
    wire_protocol: ClassVar[str] = NATS

    def connect(
        self, url: BrokerURL, options: ConnectOptions
    ) -> AbstractAsyncContextManager[TransportConnection]:
        return _connect(url, options)


@asynccontextmanager
async def _connect(url: BrokerURL, options: ConnectOptions) -> AsyncIterator[TransportConnection]:
    await anyio.lowlevel.checkpoint()
    broker = lookup_broker(url.host)

    async def finish(conn: SandboxNatsConnection) -> None:
        try:
            await conn.close()
        finally:
            broker.detach(conn.id)

    async with serve_connection(
        lambda tg: SandboxNatsConnection(broker, tg, options), finish
    ) as conn:
        yield conn


class SandboxNatsConnection(TransportConnection):
    """A connection to a ``SandboxNatsBroker``; ``id`` is the broker's connection id.

    Its close reason is settled once (ours, the server's, lame duck mode or
    the network); the wire under it may outlive it in lame duck mode, while
    its sessions drain.
    """

    wire_protocol: ClassVar[str] = NATS

    def __init__(self, broker: SandboxNatsBroker, tg: TaskGroup, options: ConnectOptions) -> None:
        self._broker = broker
        self._model = broker.model
        self._tg = tg
        self._reason: CloseReason | None = None
        self._wire_reason: CloseReason | None = None
        self._lame_duck = False
        self._closed = anyio.Event()
        self._sessions: dict[int, SandboxNatsSession] = {}
        self._sessions_changed = anyio.Event()
        self._subs: dict[int, _Sub] = {}
        self._next_sid = first_sid()
        self._pings: deque[_Ping] = deque()
        self._unanswered = 0
        self._send, self._receive = anyio.create_memory_object_stream[Event](math.inf)
        try:
            self.id = broker.accept_connection(options.name, self._on_event)
        except BaseException:  # refused (down, scripted): _dispatch will not close them
            self._send.close()
            self._receive.close()
            raise
        tg.start_soon(self._dispatch)
        if options.heartbeat > 0:
            tg.start_soon(self._heartbeat, options.heartbeat)

    def __repr__(self) -> str:
        return f"<SandboxNatsConnection {self.id} to {self._broker.url}>"

    @property
    def broker(self) -> SandboxNatsBroker:
        return self._broker

    @property
    def close_reason(self) -> CloseReason | None:
        return self._reason

    @property
    def lame_duck(self) -> bool:
        """True once the server said it is going away (its sessions are draining)."""
        return self._lame_duck

    # -- events from the server ---------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, ConnectionClosed):
            self._lost(event.reason)
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._send.send_nowait(event)

    async def _dispatch(self) -> None:
        with self._receive, self._send:
            async for event in self._receive:
                if isinstance(event, ConnectionClosed):
                    return
                self._handle(event)

    def _handle(self, event: Event) -> None:
        if isinstance(event, Pong):
            self._unanswered = 0
            if self._pings:
                ping = self._pings.popleft()
                ping.answered = True
                ping.event.set()
                if ping.then is not None:
                    ping.then()
            return
        if isinstance(event, LameDuck):
            if not self._lame_duck:
                self._lame_duck = True
                log.warning("sandbox_nats.lame_duck", connection=self.id)
                self._settle(CloseReason(0, LAME_DUCK_TEXT, "broker"))
                for session in list(self._sessions.values()):
                    session._draining.set()
            return
        assert isinstance(event, Msg | NoResponders)
        sub = self._subs.get(event.sid)
        if sub is None:
            return
        if event.delay > 0:
            self._tg.start_soon(self._deliver_later, sub, event)
        else:
            sub.session._receive(sub, event)

    async def _deliver_later(self, sub: _Sub, event: Msg | NoResponders) -> None:
        await anyio.sleep(event.delay)
        if self._subs.get(event.sid) is sub:
            sub.session._receive(sub, event)

    def _settle(self, reason: CloseReason) -> None:
        if self._reason is None:
            self._reason = reason
            self._closed.set()

    def _lost(self, reason: CloseReason) -> None:
        """The wire is done: settle, and close every session by "connection"."""
        self._settle(reason)
        if self._wire_reason is not None:
            return
        self._wire_reason = reason
        assert self._reason is not None
        cause = reason if self._lame_duck else self._reason
        for session in list(self._sessions.values()):
            session._mark_closed(CloseReason(cause.code, cause.text, "connection"))
        self._sessions.clear()
        self._sessions_changed.set()
        self._subs.clear()
        for ping in self._pings:
            ping.event.set()
        self._pings.clear()

    # -- for sessions -------------------------------------------------------------------

    def _check_wire(self) -> None:
        """``ConnectionLost`` unless the wire is up (it is while draining)."""
        reason = self._wire_reason
        if reason is None and not self._lame_duck:
            reason = self._reason
        if reason is not None:
            raise ConnectionLost(f"the NATS connection is closed: {reason}", code=reason.code)

    def _ping(self, then: Callable[[], None] | None = None, session: int | None = None) -> _Ping:
        ping = _Ping(then)
        self._pings.append(ping)
        self._model.ping(self.id, session=session, record=session is not None)
        return ping

    def _subscribe(self, session: SandboxNatsSession, on_message: OnDelivery) -> int:
        sid = self._next_sid
        self._next_sid += 1
        self._subs[sid] = _Sub(session, on_message)
        return sid

    def _forget_later(self, sid: int, session: int) -> None:
        """UNSUB now; drop the callback once the server has seen it."""
        sub = self._subs.get(sid)
        self._model.unsubscribe(self.id, sid, session=session)

        def forget() -> None:
            if self._subs.get(sid) is sub:
                del self._subs[sid]

        self._ping(forget)

    def _remove_session(self, session: SandboxNatsSession, sids: Sequence[int]) -> None:
        for sid in sids:
            self._subs.pop(sid, None)
            if self._wire_reason is None:
                self._model.unsubscribe(self.id, sid, session=session.id)
        self._sessions.pop(session.id, None)
        self._sessions_changed.set()

    async def _flush(self, timeout: float, session: int) -> None:
        ping = self._ping(session=session)
        with anyio.move_on_after(timeout):
            await ping.event.wait()
        if not ping.answered:
            self._check_wire()
            raise ConnectionLost(f"{self._broker.url} did not answer a PING within {timeout:g} s")

    async def _heartbeat(self, interval: float) -> None:
        while self._wire_reason is None:
            await anyio.sleep(interval)
            if self._wire_reason is not None:
                return
            if self._unanswered >= MAX_OUTSTANDING_PINGS:
                text = (
                    f"no PONG to {self._unanswered} PINGs {interval:g} s apart: "
                    "the server went silent"
                )
                self._model.close_connection(self.id, CloseReason(0, text, "network"))
                return
            self._unanswered += 1
            self._ping()

    async def _drained(self) -> None:
        while self._sessions and self._wire_reason is None:
            self._sessions_changed = anyio.Event()
            await self._sessions_changed.wait()

    # -- the transport protocol -------------------------------------------------------------

    async def open_session(self, *, on_return: OnReturn | None = None) -> Session:
        await anyio.lowlevel.checkpoint()
        reason = self._reason
        if reason is not None:
            raise ConnectionLost(f"the NATS connection is closed: {reason}", code=reason.code)
        session = SandboxNatsSession(self, self._model.open_session(self.id), on_return)
        self._sessions[session.id] = session
        return session

    async def wait_closed(self) -> CloseReason:
        await self._closed.wait()
        assert self._reason is not None
        return self._reason

    async def close(self) -> None:
        """Close; in lame duck mode, first wait (up to 30 s) for the sessions to close."""
        try:
            if self._lame_duck and self._wire_reason is None:
                with anyio.move_on_after(DRAIN_TIMEOUT):
                    await self._drained()
        finally:
            self._settle(CLIENT_CLOSE)
            self._lost(self._model.close_connection(self.id, CLIENT_CLOSE))


class SandboxNatsSession(NatsSession):
    """A session on a ``SandboxNatsConnection``; ``id`` is the broker-wide session id."""

    def __init__(
        self, connection: SandboxNatsConnection, session_id: int, on_return: OnReturn | None
    ) -> None:
        self._conn = connection
        self._model = connection.broker.model
        self._id = session_id
        self._on_return = on_return
        self._sids: set[int] = set()
        self._reason: CloseReason | None = None
        self._closed = anyio.Event()
        self._draining = anyio.Event()

    def __repr__(self) -> str:
        return f"<SandboxNatsSession {self._id} on connection {self._conn.id}>"

    @property
    def id(self) -> int:
        return self._id

    @property
    def close_reason(self) -> CloseReason | None:
        return self._reason

    @property
    def max_payload(self) -> int:
        return self._conn.broker.max_payload

    @property
    def draining(self) -> bool:
        return self._draining.is_set() and self._reason is None

    def _mark_closed(self, reason: CloseReason) -> None:
        if self._reason is None:
            self._reason = reason
            self._closed.set()
            self._draining.set()
            self._model.close_session(self._id)

    def _check_open(self) -> None:
        reason = self._reason
        if reason is not None:
            raise ConnectionLost(f"the NATS session is closed: {reason}", code=reason.code)
        self._conn._check_wire()

    def _receive(self, sub: _Sub, event: Msg | NoResponders) -> None:
        if self._reason is not None:
            return
        if isinstance(event, NoResponders):
            if self._on_return is not None:
                returned = ReturnedMessage(
                    b"", EMPTY_PROPERTIES, "", event.subject, NO_ROUTE, "NO_RESPONDERS"
                )
                self._callback("on_return", self._on_return, returned)
            return
        headers = headers_mapping(event.headers)
        if headers is None and event.reply is None:
            props = EMPTY_PROPERTIES
        else:
            props = Properties(headers=headers, reply_to=event.reply)
        delivery = Delivery(event.body, props, "", event.subject, 0, str(event.sid))
        self._callback("on_message", sub.on_message, delivery)

    def _callback(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception(
                "sandbox_nats.callback_failed",
                callback=what,
                session=self._id,
                connection=self._conn.id,
            )

    # -- the seam ----------------------------------------------------------------------

    async def wait_closed(self) -> CloseReason:
        await self._closed.wait()
        assert self._reason is not None
        return self._reason

    async def wait_draining(self) -> None:
        await self._draining.wait()

    async def close(self) -> None:
        if self._reason is not None:
            return
        sids, self._sids = sorted(self._sids), set()
        self._mark_closed(CLIENT_CLOSE)
        self._conn._remove_session(self, sids)

    async def send(self, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        # No mandatory flag on NATS: no-responders is always on.
        await anyio.lowlevel.checkpoint()
        self._check_open()
        for out in encode_batch(messages, self.max_payload):
            self._model.publish(
                self._conn.id,
                out.subject,
                out.body,
                reply=out.reply,
                headers=out.headers,
                session=self._id,
            )

    async def settle(self, delivery: Delivery, outcome: Outcome) -> None:
        """NATS has no acknowledgements: nothing to do."""
        await anyio.lowlevel.checkpoint()

    async def subscribe(
        self, subject: str, on_message: OnDelivery, *, queue: str | None = None
    ) -> str:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        check_subscribe_subject(subject)
        if queue is not None:
            check_queue_group(queue)
        sid = self._conn._subscribe(self, on_message)
        self._sids.add(sid)
        self._model.subscribe(self._conn.id, sid, subject, queue, session=self._id)
        return str(sid)

    async def unsubscribe(self, sid: str) -> None:
        await anyio.lowlevel.checkpoint()
        number = int(sid) if sid.isdigit() else -1
        if number not in self._sids or self._reason is not None:
            return
        self._sids.discard(number)
        self._conn._forget_later(number, self._id)

    async def flush(self, timeout: float) -> None:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        await self._conn._flush(timeout, self._id)
        self._check_open()

    async def drain(self, timeout: float) -> None:
        """Unsubscribe everything and wait until the server has seen it: what it
        routed here before is delivered by then. The session stays open to send."""
        for sid in sorted(self._sids):
            await self.unsubscribe(str(sid))
        await self.flush(timeout)

    async def retire(self, successor: Session, timeout: float) -> None:
        """As the NATS transport's: end every subscription, once what was routed here is
        delivered. The sandbox routes a message the moment it is published, so the
        successor receives from then on and no probe is needed."""
        if self._reason is None:
            await self.drain(timeout)
