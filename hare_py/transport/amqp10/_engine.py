"""qpid-proton's engine on an anyio byte stream: a reader, a writer and a ticker.

Rules this module keeps:

- proton's ``Connection``/``Transport``/``Collector`` are the only state
  about the wire; no reactor and no thread. Bytes read go into
  ``transport.push`` (never more than ``capacity()``: at 0 the reader waits,
  below 0 it stops), bytes to send come out of ``peek``/``pop``, and
  ``tick`` runs heartbeats and the idle-timeout.
- Events are read from the collector in the driver's tasks only (after each
  read, each tick and before each write), and handed to the owner of their
  session or link (an ``EndpointOwner``) or, for endpoints the peer opened,
  to the ``Incoming`` handler. The API side only changes endpoints and calls
  ``wake()``.
- Nothing raised while processing events tears the connection down
  silently: it ends the connection with a ``CloseReason`` (``by="network"``,
  541) and a log line, and every owner is told. Proton's own failures
  (framing, bounds, idle-timeout, SASL) end it the same way with proton's
  condition.
- Frames are bounded by ``max_frame_size`` (proton refuses a bigger one) and
  deliveries by ``max_body_size`` (the receiver side reads them in pieces
  and drops a body past it).
- The close reason is settled once: ours, the peer's close (``by="broker"``,
  with its condition), or the network's.
"""

from __future__ import annotations

import importlib
import itertools
import ssl
from typing import Any

import anyio
import anyio.abc
import proton

from ..._log import get_logger
from ..base import ACCESS_REFUSED, CONNECTION_FORCED, REPLY_SUCCESS, CloseReason
from ._config import Amqp10Config
from ._message import INTERNAL_ERROR, reply_code

__all__ = ["Engine", "EndpointOwner", "Incoming", "condition_reason", "describe"]

log = get_logger("hare_py.transport.amqp10")

READ_SIZE = 64 * 1024
HIGH_WATER = 4 * 1024 * 1024  # bytes waiting for the socket before senders wait
CLOSE_TIMEOUT = 5.0
_NETWORK_ERRORS = (
    OSError,
    ssl.SSLError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)

E = proton.Event
# Only these are handled; the rest are popped unread, before proton builds the ~10
# wrapper objects of an Event (most events of a busy connection are local ones).
_HANDLED = frozenset(
    kind.number
    for kind in (
        E.LINK_REMOTE_OPEN,
        E.LINK_REMOTE_CLOSE,
        E.LINK_REMOTE_DETACH,
        E.SESSION_REMOTE_OPEN,
        E.SESSION_REMOTE_CLOSE,
        E.CONNECTION_REMOTE_OPEN,
        E.CONNECTION_REMOTE_CLOSE,
        E.TRANSPORT_ERROR,
        E.TRANSPORT_CLOSED,
    )
)
_cproton: Any = importlib.import_module("cproton")  # proton's C binding, untyped
_peek, _pop = _cproton.pn_collector_peek, _cproton.pn_collector_pop
_event_type, _isnull = _cproton.pn_event_type, _cproton.isnull
_wrap: Any = proton.Event.wrap  # untyped in proton
# The two events of every message, handled without proton's Event wrapper, which
# wraps the delivery, link, session, connection and transport of each event.
_DELIVERY, _LINK_FLOW = E.DELIVERY.number, E.LINK_FLOW.number
_event_delivery, _event_link = _cproton.pn_event_delivery, _cproton.pn_event_link
_delivery_link, _link_attachments = _cproton.pn_delivery_link, _cproton.pn_link_attachments
_record_get_py = _cproton.pn_record_get_py  # a wrapper's attributes (its ``owner``)
_wrap_delivery: Any = proton.Delivery.wrap
_wrap_link: Any = proton.Link.wrap


def describe(exc: BaseException) -> str:
    """A short text for a network error."""
    if isinstance(exc, anyio.EndOfStream):
        return "the peer closed the socket"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def condition_reason(
    condition: proton.Condition | None, default: str, by: Any, *, code: int | None = None
) -> CloseReason:
    """A ``CloseReason`` from an AMQP 1.0 error condition (or ``default`` without one)."""
    if condition is None:
        return CloseReason(REPLY_SUCCESS if code is None else code, default, by)
    name = str(condition.name)
    text = f"{name}: {condition.description}" if condition.description else name
    return CloseReason(reply_code(name) if code is None else code, text[:500], by)


class EndpointOwner:
    """Who handles the events of a session or link (set as its ``owner`` attribute)."""

    def on_session_closed(self, session: proton.Session) -> None: ...
    def on_link_opened(self, link: proton.Link) -> None: ...
    def on_link_closed(self, link: proton.Link) -> None: ...
    def on_flow(self, link: proton.Link) -> None: ...
    def on_delivery(self, delivery: proton.Delivery) -> None: ...
    def on_connection_closed(self, reason: CloseReason) -> None: ...

    def on_raw_delivery(self, delivery: Any) -> None:
        """A delivery event, given the C delivery (a ``cproton`` handle)."""
        self.on_delivery(_wrap_delivery(delivery))


class Incoming:
    """What a listener does with sessions and links a peer opens (electron's Incoming)."""

    def on_incoming_link(self, engine: Engine, link: proton.Link) -> None:
        link.condition = proton.Condition("amqp:not-allowed", "this peer opens no links here")
        link.open()
        link.close()


class Engine:
    """One AMQP 1.0 connection over one anyio stream; see the module docstring."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        config: Amqp10Config,
        *,
        server: bool,
        incoming: Incoming | None = None,
        where: str | None = None,
    ) -> None:
        self.stream = stream
        self.config = config
        self.where = where or config.where
        self.server = server
        self.incoming = incoming or Incoming()
        self.connection = proton.Connection()
        self.transport = proton.Transport(proton.Transport.SERVER if server else None)
        self.collector = proton.Collector()
        self.connection.collect(self.collector)
        self.connection.container = config.container_id
        transport = self.transport
        transport.max_frame_size = config.max_frame_size
        if config.heartbeat:
            transport.idle_timeout = config.heartbeat
        sasl = transport.sasl()
        if server:
            sasl.allowed_mechs("ANONYMOUS")
        else:
            self.connection.hostname = config.host
            sasl.allowed_mechs(config.mechanism)
            if config.user:
                # PLAIN over plain TCP too: the URL chose it; amqps:// encrypts it.
                sasl.allow_insecure_mechs = True
                self.connection.user = config.user
                self.connection.password = config.password or ""
        transport.bind(self.connection)
        self.owners: set[EndpointOwner] = set()
        self.close_reason: CloseReason | None = None
        self.opened = anyio.Event()
        self.closed = anyio.Event()
        self._wake = anyio.Event()
        self._room = anyio.Event()
        self._writable = anyio.Event()
        self._writable.set()
        # Shielded: cancelling the owner must not cut the wire before our close frame;
        # ``lost()`` (which ``close()`` always reaches) ends the tasks.
        self._scope = anyio.CancelScope(shield=True)
        self._out_done = anyio.Event()
        self._closing = False
        self._names = itertools.count(1)
        if not server:
            self.connection.open()

    def __repr__(self) -> str:
        state = "open" if self.close_reason is None else f"closed: {self.close_reason}"
        return f"<amqp10.Engine {self.where} {state}>"

    def link_name(self, kind: str) -> str:
        """A link name unique on this connection."""
        return f"{self.config.container_id}-{kind}-{next(self._names)}"

    @property
    def remote_properties(self) -> dict[str, Any]:
        props = self.connection.remote_properties
        if not isinstance(props, dict):
            return {}
        return {str(k): v for k, v in props.items()}

    # -- the tasks ---------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Read, write and tick until the connection ends."""
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._reader)
                    tg.start_soon(self._writer)
                    tg.start_soon(self._ticker)
                    task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                await self.stream.aclose()
            self.lost(CloseReason(0, "connection lost", "network"))

    async def _reader(self) -> None:
        transport = self.transport
        receive = self.stream.receive
        try:
            while True:
                capacity = transport.capacity()
                if capacity < 0:
                    return  # proton takes no more input: it is closing
                if capacity == 0:
                    self._room = anyio.Event()
                    await self._room.wait()
                    continue
                data = await receive(min(capacity, READ_SIZE))
                transport.push(data)
                self.process()
                self.wake()
        except _NETWORK_ERRORS as exc:
            self._input_ended(describe(exc))
        except proton.ProtonException as exc:
            self.fail(exc)

    def _input_ended(self, text: str) -> None:
        if self.close_reason is not None:
            self.lost(self.close_reason)
            return
        try:
            self.transport.close_tail()
            self.process()
        except proton.ProtonException:
            pass
        self.lost(self._end_reason(text))

    def _end_reason(self, text: str) -> CloseReason:
        """Why the wire ended: proton's condition, a refused login, or ``text``."""
        if self.close_reason is not None:
            return self.close_reason
        condition = self.transport.condition
        if condition is not None:
            return condition_reason(condition, text, "network", code=0)
        sasl = self.transport.sasl()
        if not self.server and sasl.outcome not in (None, proton.SASL.OK):
            return CloseReason(ACCESS_REFUSED, "amqp:unauthorized-access: login refused", "broker")
        return CloseReason(0, text, "network")

    async def _writer(self) -> None:
        transport = self.transport
        send = self.stream.send
        try:
            while True:
                self.process()
                pending = transport.pending()
                if pending > 0:
                    data = transport.peek(min(pending, 1024 * 1024))
                    if data:
                        await send(data)
                        transport.pop(len(data))
                        del data  # not kept while idle: a burst can be large
                    self._room.set()
                    continue
                if not self._writable.is_set():
                    self._writable.set()
                self._room.set()
                if pending < 0:  # proton has nothing more to say
                    self._out_done.set()
                    if self._closing or transport.closed:
                        self.lost(self._end_reason("the connection closed"))
                    return
                await self._wake.wait()
                self._wake = anyio.Event()
        except _NETWORK_ERRORS as exc:
            self.lost(CloseReason(0, describe(exc), "network"))
        except proton.ProtonException as exc:
            self.fail(exc)

    async def _ticker(self) -> None:
        transport = self.transport
        try:
            while True:
                now = anyio.current_time()
                deadline = transport.tick(now)
                self.process()
                self.wake()
                if deadline:
                    await anyio.sleep(max(0.0, deadline - now))
                else:
                    await anyio.sleep(1.0)  # idle-timeouts are only known after the open
        except proton.ProtonException as exc:
            self.fail(exc)

    # -- events ------------------------------------------------------------------

    def wake(self) -> None:
        """The API changed endpoints: let the writer process and send."""
        self._wake.set()

    def process(self) -> None:
        """Hand every queued event to its owner; a failure ends the connection."""
        impl = self.collector._impl
        try:
            while not _isnull(event := _peek(impl)):
                try:
                    kind = _event_type(event)
                    if kind == _DELIVERY:
                        delivery = _event_delivery(event)
                        attrs = _record_get_py(_link_attachments(_delivery_link(delivery)))
                        owner = attrs.get("owner") if attrs else None
                        if isinstance(owner, EndpointOwner):
                            owner.on_raw_delivery(delivery)
                    elif kind == _LINK_FLOW:
                        link = _wrap_link(_event_link(event))
                        owner = _owner(link)
                        if owner is not None:
                            owner.on_flow(link)
                    elif kind in _HANDLED:
                        self._dispatch(_wrap(event))
                finally:
                    _pop(impl)
        except Exception as exc:
            if self.close_reason is None:
                self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        """Something broke inside event processing: end the connection, loudly."""
        log.error(
            "amqp10.engine_failed", url=self.where, error=f"{type(exc).__name__}: {exc}"[:300]
        )
        self.lost(CloseReason(INTERNAL_ERROR, f"internal error: {type(exc).__name__}", "network"))

    def _dispatch(self, event: Any) -> None:  # proton types its parts as optional
        kind = event.type  # DELIVERY and LINK_FLOW never come here: see process()
        if kind == E.LINK_REMOTE_OPEN:
            link = event.link
            owner = _owner(link)
            if owner is not None:
                owner.on_link_opened(link)
            elif self.close_reason is None:
                self.incoming.on_incoming_link(self, link)
        elif kind in (E.LINK_REMOTE_CLOSE, E.LINK_REMOTE_DETACH):
            link = event.link
            owner = _owner(link)
            if owner is not None:
                owner.on_link_closed(link)
            if link.state & proton.Endpoint.LOCAL_ACTIVE:
                link.close()
        elif kind == E.SESSION_REMOTE_OPEN:
            session = event.session
            if session.state & proton.Endpoint.LOCAL_UNINIT:
                session.incoming_capacity = _session_capacity(self.config)
                session.open()  # a peer's session: accepted, its links decide
        elif kind == E.SESSION_REMOTE_CLOSE:
            session = event.session
            owner = _owner(session)
            if owner is not None:
                owner.on_session_closed(session)
            if session.state & proton.Endpoint.LOCAL_ACTIVE:
                session.close()
        elif kind == E.CONNECTION_REMOTE_OPEN:
            if self.server and self.connection.state & proton.Endpoint.LOCAL_UNINIT:
                self.connection.open()
            self.opened.set()
        elif kind == E.CONNECTION_REMOTE_CLOSE:
            reason = condition_reason(
                self.connection.remote_condition, "closed by the peer", "broker"
            )
            if self.connection.remote_condition is None and not self._closing:
                reason = CloseReason(CONNECTION_FORCED, "closed by the peer", "broker")
            self._settle(reason)
            if self.connection.state & proton.Endpoint.LOCAL_ACTIVE:
                self.connection.close()
        elif kind == E.TRANSPORT_ERROR:
            condition = self.transport.condition
            self._settle(condition_reason(condition, "transport error", "network", code=0))
        elif kind == E.TRANSPORT_CLOSED:
            self.lost(self.close_reason or CloseReason(0, "connection closed", "network"))

    # -- closing -----------------------------------------------------------------

    def _settle(self, reason: CloseReason) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            level = log.info if reason.is_normal or self.server else log.warning
            level("amqp10.closed", url=self.where, reason=str(reason))
            for owner in list(self.owners):
                owner.on_connection_closed(CloseReason(reason.code, reason.text, "connection"))
            self.owners.clear()
            self.opened.set()  # a waiter for the open learns it failed
            self.closed.set()

    def lost(self, reason: CloseReason) -> None:
        """The wire is done: settle the reason and stop the tasks."""
        self._settle(reason)
        self._writable.set()
        self._room.set()
        self._out_done.set()
        self._scope.cancel()

    async def wait_writable(self) -> None:
        """Wait while too much is waiting for the socket (a slow peer)."""
        while self.transport.pending() > HIGH_WATER and self.close_reason is None:
            if self._writable.is_set():
                self._writable = anyio.Event()
            self.wake()
            await self._writable.wait()

    async def close(self) -> None:
        """Close the AMQP connection, send our last frames (bounded), then the socket."""
        never_opened = not self.opened.is_set()
        self._settle(CloseReason(REPLY_SUCCESS, "closed by the client", "client"))
        if self._out_done.is_set() or never_opened:  # nothing to say goodbye to
            self.lost(self.close_reason or CloseReason(0, "closed", "client"))
            return
        self._closing = True
        try:
            if self.connection.state & proton.Endpoint.LOCAL_ACTIVE:
                self.connection.close()
        except proton.ProtonException:
            pass
        self.wake()
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
            await self._out_done.wait()
        self.lost(self.close_reason or CloseReason(0, "closed", "client"))


def _owner(endpoint: Any) -> EndpointOwner | None:
    try:
        owner = endpoint.owner
    except AttributeError:
        return None
    return owner if isinstance(owner, EndpointOwner) else None


def _session_capacity(config: Amqp10Config) -> int:
    return max(16 * config.max_frame_size, 1024 * 1024)


def new_session(engine: Engine, owner: EndpointOwner) -> proton.Session:
    """A session of ours, its events handled by ``owner``."""
    session = engine.connection.session()
    session.owner = owner
    session.incoming_capacity = _session_capacity(engine.config)
    session.open()
    return session
