"""The anyio driver of ``NatsClientProtocol``: one connection, a reader, a writer, a pinger.

Rules this module keeps:

- The protocol object is the only state about the wire. The driver keeps
  one queue of bytes for the socket and moves what the protocol queued into
  it at every operation, so that a batch that fails to encode is dropped
  whole; the writer sends everything queued since its last turn in one
  ``send()``.
- The reader parses every whole operation of each read at once and hands
  the events on synchronously, in server order: messages reach the
  sessions' callbacks from the reader, with no task or lock per message.
  A stream that breaks the protocol or a bound ends the connection (by
  ``"network"``), never the caller's code.
- The pinger sends a PING every ``heartbeat`` seconds and declares the
  server dead when its last two PINGs are without a PONG. Only a PONG
  answers: a server that trickles a message byte by byte is as dead as a
  silent one. The reader stops reading while too much waits for the socket.
- The close reason is settled once: ours, the server's closing ``-ERR`` (by
  ``"broker"``, with its text), lame duck mode, or the network. Every session
  then closes by ``"connection"``. An ``-ERR`` that does not close (a
  permission violation) is logged, and closes the session whose subscription
  it names; one that names the probe of a session's move ends the probe.
- Lame duck mode (an INFO with ``ldm``) settles the reason at once, so that
  the supervised ``Connection`` connects elsewhere, but keeps the wire up:
  the sessions are told they are draining and go on receiving, and
  ``close()`` waits (up to ``drain_timeout``) for them to close before it
  hangs up, so that answers to requests in flight still arrive.
- The URL's password or token reaches the protocol object (``_handshake``)
  and nothing else; errors and logs name the redacted URL.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import ClassVar
from urllib.parse import urlsplit

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from ..._log import get_logger
from ...errors import ConnectionLost
from ..base import NATS, CloseReason, ConnectOptions, OnReturn, Session, TransportConnection
from ..url import BrokerURL
from . import _protocol as p
from ._config import NatsConfig
from ._handshake import NETWORK_ERRORS, READ_SIZE, describe, open_wire, parse_events
from ._session import NatsClientSession, Subscription

__all__ = ["NatsConnection", "connect"]

log = get_logger("hare_py.transport.nats")

CLOSE_TIMEOUT = 5.0  # bounds writing our last bytes; the connection is gone for us anyway
# Publishers wait while more than this is queued for the socket (a slow server).
HIGH_WATER = 4 * 1024 * 1024
MAX_DISCOVERED = 64  # connect_urls kept from one server
PINGS_OUT = 2  # PINGs without a PONG before the server is dead

# -ERR 'Permissions Violation for Subscription to "SUBJECT"[ using queue "GROUP"]'
_SUB_VIOLATION = re.compile(
    r'permissions violation for subscription to "(?P<subject>[^"]*)"'
    r'(?: using queue "(?P<queue>[^"]*)")?',
    re.IGNORECASE,
)
# -ERR 'Permissions Violation for Publish to "SUBJECT"'
_PUB_VIOLATION = re.compile(r'permissions violation for publish to "(?P<subject>[^"]*)"', re.I)
_LAME_DUCK = "lame duck mode"

# On a PONG: (called when it comes, called if the connection ends first), or None.
_PongHook = tuple[Callable[[], None], Callable[[], None]] | None


class NatsConnection(TransportConnection):
    """A ``TransportConnection`` to one nats-server; see the module docstring."""

    wire_protocol: ClassVar[str] = NATS

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        protocol: p.NatsClientProtocol,
        url: BrokerURL,
        config: NatsConfig,
    ) -> None:
        self._stream = stream
        self._protocol = protocol
        self._url = url
        self._config = config
        self._where = config.where
        self._sessions: set[NatsClientSession] = set()
        self._subs: dict[int, Subscription] = {}
        self._pongs: deque[_PongHook] = deque()
        self._pings_sent = 0  # PONGs come in order: PING n is answered once n have come
        self._pongs_seen = 0
        self._out: list[bytes] = []
        self._out_size = 0
        self._close_reason: CloseReason | None = None
        self._wire_reason: CloseReason | None = None  # set when the socket is done
        self._closed = anyio.Event()
        self._wire_closed = anyio.Event()
        self._sessions_changed = anyio.Event()
        self._wake = anyio.Event()
        self._woken = False  # _wake is set: the writer has work
        self._writable = anyio.Event()
        self._writable.set()
        self._scope = anyio.CancelScope()
        self._last_words = False  # stop once the queued bytes are written
        self._lame_duck = False
        # Probe subjects of a session's move (_session.py), and what to call when the
        # server refuses one: a refused probe ends the probe, not a session.
        self._probes: dict[str, Callable[[], None]] = {}
        # The handshake's INFO names the cluster already; later INFOs update it.
        info = protocol.server_info
        self._connect_urls: tuple[str, ...] = (
            info.connect_urls[:MAX_DISCOVERED] if info is not None else ()
        )
        self.take_queued()  # PONGs to PINGs that came with the handshake
        if self._out:
            self.wake_writer()

    def __repr__(self) -> str:
        state = "open" if self._close_reason is None else f"closed: {self._close_reason}"
        return f"<NatsConnection {self._where} {state}>"

    @property
    def close_reason(self) -> CloseReason | None:
        return self._close_reason

    @property
    def protocol(self) -> p.NatsClientProtocol:
        return self._protocol

    @property
    def server_info(self) -> p.ServerInfo:
        """What the server said about itself in its latest INFO."""
        info = self._protocol.server_info
        assert info is not None
        return info

    @property
    def heartbeat(self) -> float:
        """Seconds between our PINGs (0: off)."""
        return self._config.heartbeat

    @property
    def lame_duck(self) -> bool:
        """True once the server said it is going away (its sessions are draining)."""
        return self._lame_duck

    @property
    def draining(self) -> bool:
        return self._lame_duck

    @property
    def discovered_urls(self) -> tuple[BrokerURL, ...]:
        found: list[BrokerURL] = []
        url = self._url
        for entry in self._connect_urls:
            raw = entry if "://" in entry else f"nats://{entry}"
            try:
                parts = urlsplit(raw)
                host, port = parts.hostname, parts.port or 4222
            except ValueError:
                continue
            if not host or (host, port) == (url.host, url.port):
                continue
            query = url.query
            if url.scheme == "tls" and url.param("tls_hostname") is None and host != url.host:
                # Reached by address, the server still shows the name we trusted.
                query = (*query, ("tls_hostname", self._config.tls_hostname))
            found.append(
                BrokerURL(url.scheme, host, port, url.username, url.password, "/", query, url.token)
            )
        return tuple(found)

    # -- background tasks ------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Read, write and ping until the connection closes."""
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._reader)
                    tg.start_soon(self._writer)
                    if self._config.heartbeat:
                        tg.start_soon(self._pinger, self._config.heartbeat)
                    task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
            self._lost(CloseReason(0, "connection lost", "network"))

    async def _reader(self) -> None:
        protocol = self._protocol
        receive = self._stream.receive
        try:
            while True:
                data = await receive(READ_SIZE)
                events = parse_events(protocol, data)
                if events:
                    self.dispatch(events)
                if protocol.bytes_to_send:
                    self.take_queued()
                    self.wake_writer()
                if protocol.closed:
                    return  # a closing -ERR: dispatch settled the reason
                if self._out_size > HIGH_WATER:
                    # A server that sends PINGs but reads nothing must not grow our queue.
                    await self.wait_writable()
        except NETWORK_ERRORS as exc:
            self._lost(CloseReason(0, describe(exc), "network"))
        except p.NatsProtocolError as exc:
            log.error("nats.protocol_error", url=self._where, error=str(exc))
            self._lost(CloseReason(0, f"protocol error: {exc}", "network"))

    async def _writer(self) -> None:
        send = self._stream.send
        try:
            while True:
                await self._wake.wait()
                self._wake, self._woken = anyio.Event(), False
                self.take_queued()
                if self._out:
                    data = b"".join(self._out)
                    self._out.clear()
                    self._out_size = 0
                    await send(data)
                    del data  # not kept while idle: a burst can be large
                if not self._writable.is_set() and self._out_size < HIGH_WATER:
                    self._writable.set()
                if self._last_words and not self._out and not self._protocol.bytes_to_send:
                    self._wire_closed.set()
                    self._scope.cancel()
                    return
        except NETWORK_ERRORS as exc:
            self._lost(CloseReason(0, describe(exc), "network"))

    async def _pinger(self, interval: float) -> None:
        beats: deque[int] = deque(maxlen=PINGS_OUT)  # our last heartbeat PINGs
        while True:
            await anyio.sleep(interval)
            if len(beats) == PINGS_OUT and self._pongs_seen < beats[0]:
                text = f"no PONG to {PINGS_OUT} PINGs {interval:g} s apart: the server went silent"
                self._lost(CloseReason(0, text, "network"))
                return
            if self._protocol.closed:
                return
            self._ping(None)
            beats.append(self._pings_sent)

    # -- bytes out -------------------------------------------------------------

    def take_queued(self) -> None:
        """Move what the protocol queued into the socket's queue."""
        protocol = self._protocol
        if protocol.bytes_to_send:
            data = protocol.data_to_send()
            self._out.append(data)
            self._out_size += len(data)

    def wake_writer(self) -> None:
        if not self._woken:  # once per wake-up, not per message
            self._woken = True
            self._wake.set()

    @property
    def backlogged(self) -> bool:
        """Too much is queued for the socket: senders wait (``wait_writable``)."""
        return self._out_size + self._protocol.bytes_to_send > HIGH_WATER

    async def wait_writable(self) -> None:
        """Wait while too much is queued for the socket (a slow server)."""
        while self.backlogged and self._wire_reason is None:
            if self._writable.is_set():  # the first to wait arms it; the writer sets it
                self._writable = anyio.Event()
            self.wake_writer()
            await self._writable.wait()

    def _ping(self, hook: _PongHook) -> None:
        self.take_queued()
        self._protocol.ping()
        self._pings_sent += 1
        self._pongs.append(hook)
        self.take_queued()
        self.wake_writer()

    async def round_trip(self, timeout: float) -> None:
        """A PING and its PONG: the server has seen everything sent before."""
        self.check_wire()
        done = anyio.Event()
        answered = False

        def on_pong() -> None:
            nonlocal answered
            answered = True
            done.set()

        self._ping((on_pong, done.set))
        with anyio.move_on_after(timeout):
            await done.wait()
        if not answered:
            self.check_wire()
            raise ConnectionLost(f"{self._where} did not answer a PING within {timeout:g} s")

    # -- events in -------------------------------------------------------------

    def dispatch(self, events: list[p.Event]) -> None:
        subs = self._subs
        for event in events:
            if isinstance(event, p.MsgReceived):
                sub = subs.get(event.sid)
                if sub is not None:
                    sub.session.on_message(sub, event)
            elif isinstance(event, p.BadMsgReceived):
                sub = subs.get(event.sid)
                if sub is not None:
                    sub.session.on_bad_message(sub, event)
            elif isinstance(event, p.PongReceived):
                self._pongs_seen += 1
                hook = self._pongs.popleft() if self._pongs else None
                if hook is not None:
                    hook[0]()
            elif isinstance(event, p.InfoReceived):
                self._on_info(event.info)
            elif isinstance(event, p.ErrReceived):
                self._on_err(event)
            # PING (its PONG is queued), +OK and Connected need nothing here.

    def _on_info(self, info: p.ServerInfo) -> None:
        self._connect_urls = info.connect_urls[:MAX_DISCOVERED]
        if info.lame_duck_mode and not self._lame_duck:
            self._lame_duck = True
            log.warning("nats.lame_duck", url=self._where, sessions=len(self._sessions))
            self._settle(CloseReason(0, _LAME_DUCK, "broker"))
            for session in list(self._sessions):
                session.on_draining()

    def _on_err(self, event: p.ErrReceived) -> None:
        if event.closes:
            self._lost(CloseReason(0, event.text, "broker"))
            return
        if self._probes:
            probe = _SUB_VIOLATION.match(event.text) or _PUB_VIOLATION.match(event.text)
            refused = self._probes.pop(probe["subject"], None) if probe is not None else None
            if refused is not None:
                log.info("nats.probe_refused", url=self._where, error=event.text)
                refused()
                return
        match = _SUB_VIOLATION.match(event.text)
        if match is None:
            if event.text.lower().startswith("permissions violation"):
                log.warning("nats.permission_violation", url=self._where, error=event.text)
            else:
                log.warning("nats.server_error", url=self._where, error=event.text)
            return
        subject, queue = match["subject"], match["queue"]
        hit = {
            sub.session
            for sub in self._subs.values()
            if sub.subject == subject and sub.queue == queue and not sub.ending
        }
        log.warning(
            "nats.permission_violation", url=self._where, error=event.text, sessions=len(hit)
        )
        for session in hit:
            self._drop_session(session, CloseReason(0, event.text, "broker"))

    # -- subscriptions and sessions ----------------------------------------------

    def watch_probe(self, subject: str, on_refused: Callable[[], None] | None) -> None:
        """Call ``on_refused`` if the server refuses ``subject`` (None: stop watching)."""
        if on_refused is None:
            self._probes.pop(subject, None)
        else:
            self._probes[subject] = on_refused

    def check_wire(self) -> None:
        """``ConnectionLost`` unless the socket is still up (it is while draining)."""
        reason = self._wire_reason
        if reason is None and not self._lame_duck:
            reason = self._close_reason
        if reason is not None:
            raise ConnectionLost(f"the NATS connection is closed: {reason}", code=reason.code)

    def close_wire_reason(self) -> CloseReason | None:
        return self._wire_reason

    def add_subscription(self, sub: Subscription) -> None:
        self._subs[sub.sid] = sub
        self.take_queued()
        self.wake_writer()

    def end_subscription(self, sub: Subscription) -> None:
        """UNSUB now; forget the sid once the server has seen it."""
        self.take_queued()
        self._protocol.unsubscribe(sub.sid)

        def forget() -> None:
            if self._subs.get(sub.sid) is sub:
                del self._subs[sub.sid]
            sub.session.forget(sub.sid)

        self._ping((forget, forget))

    def remove_session(self, session: NatsClientSession, live: list[Subscription]) -> None:
        """A session closed itself: UNSUB what it still had; drop its sids."""
        if self._wire_reason is None:
            self.take_queued()
            for sub in live:
                self._protocol.unsubscribe(sub.sid)
            self.take_queued()
            self.wake_writer()
        for sid in [sid for sid, sub in self._subs.items() if sub.session is session]:
            del self._subs[sid]
        self._sessions.discard(session)
        self._sessions_changed.set()

    def _drop_session(self, session: NatsClientSession, reason: CloseReason) -> None:
        live = [sub for sub in self._subs.values() if sub.session is session and not sub.ending]
        session.on_closed(reason)
        self.remove_session(session, live)

    async def open_session(self, *, on_return: OnReturn | None = None) -> Session:
        reason = self._close_reason
        if reason is not None:
            raise ConnectionLost(f"the NATS connection is closed: {reason}", code=reason.code)
        session = NatsClientSession(self, on_return)
        self._sessions.add(session)
        return session

    # -- closing ---------------------------------------------------------------

    def _settle(self, reason: CloseReason) -> None:
        if self._close_reason is None:
            self._close_reason = reason
            self._closed.set()
            if reason.is_normal:
                log.info("nats.closed", url=self._where, reason=str(reason))
            else:
                log.warning("nats.closed", url=self._where, reason=str(reason))

    def _lost(self, reason: CloseReason) -> None:
        """The socket is done: settle the connection and every session, stop the tasks."""
        self._settle(reason)
        if self._wire_reason is not None:
            return
        self._wire_reason = reason
        settled = self._close_reason
        assert settled is not None
        cause = reason if self._lame_duck else settled
        for session in list(self._sessions):
            session.on_closed(CloseReason(cause.code, cause.text, "connection"))
        self._sessions.clear()
        self._subs.clear()
        self._sessions_changed.set()
        hooks, self._pongs = self._pongs, deque()
        for hook in hooks:
            if hook is not None:
                hook[1]()
        self._writable.set()
        self._wire_closed.set()
        self._scope.cancel()

    async def wait_closed(self) -> CloseReason:
        await self._closed.wait()
        assert self._close_reason is not None
        return self._close_reason

    async def _drained(self) -> None:
        while self._sessions and self._wire_reason is None:
            self._sessions_changed = anyio.Event()
            await self._sessions_changed.wait()

    async def close(self) -> None:
        """Close; a connection in lame duck mode first waits for its sessions to close."""
        try:
            if self._lame_duck and self._wire_reason is None:
                with anyio.move_on_after(self._config.drain_timeout):
                    await self._drained()
        finally:
            reason = CloseReason(0, "closed by the client", "client")
            self._settle(reason)
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
                if self._wire_reason is None:
                    self._last_words = True  # the writer stops once our last bytes are out
                    self.wake_writer()
                    await self._wire_closed.wait()
            self._lost(reason)


@asynccontextmanager
async def connect(url: BrokerURL, options: ConnectOptions) -> AsyncIterator[NatsConnection]:
    """Connect to ``url``; the connection closes when the block exits."""
    wire = await open_wire(url, options)
    connection = NatsConnection(wire.stream, wire.protocol, url, wire.config)
    log.info(
        "nats.connected",
        url=wire.config.where,
        name=wire.config.name,
        server=connection.server_info.server_name,
        heartbeat=wire.config.heartbeat,
        tls=isinstance(wire.stream, TLSStream),
    )
    body_error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        await tg.start(connection.run)
        if wire.leftover:
            connection.dispatch(wire.leftover)
        # The block's error is re-raised outside the task group, so that it is
        # not wrapped in an ExceptionGroup.
        try:
            yield connection
        except BaseException as exc:
            body_error = exc
        finally:
            await connection.close()
    if body_error is not None:
        raise body_error
