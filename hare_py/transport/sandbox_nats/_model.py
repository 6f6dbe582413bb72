"""The sans-I/O NATS server: everything that changes server state lives here.

Rules this module keeps:

- Nothing here awaits or touches an event loop; every operation completes
  at once. Operations are what a client sends (SUB, UNSUB, PUB/HPUB, PING),
  each with the acting connection's id; what a client must learn (MSG/HMSG,
  the no-responders status, PONG, the end of its connection) is handed to
  ``emit(connection_id, event)`` in server order.
- Routing is nats-server 2.9's: every plain subscription whose subject
  matches gets the message, and one member of each queue group does (by
  group name, whatever subject each member subscribed to); the publisher's
  own subscriptions count (echo). A request that reached nobody gets one
  ``NATS/1.0 503`` status, on the first of its *publisher's* plain
  subscriptions that match the reply subject, in the server's match order;
  nobody else hears of it, and a publisher without such a subscription gets
  nothing. Queue groups take turns, so that tests are repeatable.
- The server trusts no client. A publish over ``max_payload`` closes the
  connection with 'Maximum Payload Violation'. A publish to a subject with
  an empty token is dropped without a word (a request then gets its 503),
  and a ``*`` or ``>`` in a published subject is a token only wildcards
  match, as nats-server does without pedantic mode. An invalid SUB is
  refused (recorded with its ``InvalidSubject``: the server's -ERR) and the
  connection stays open. A server's refusal never raises here: a client
  learns of it later, as over a socket.
- A stalled connection neither sends nor receives: its operations and the
  events for it wait, in order, until it resumes. Nobody notices a stall
  but the client's own PINGs.
- A closed connection's subscriptions are gone at once; anything held for
  it is dropped; an operation on it raises ``ConnectionLost``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from ...errors import ConfigError, ConnectionLost
from ..base import CloseReason
from ..subjects import (
    InvalidSubject,
    check_queue_group,
    check_subscribe_subject,
    subject_matches,
)
from ._faults import Fault, FaultSet
from ._state import (
    ConnectionClosed,
    ConnectionState,
    Event,
    Headers,
    LameDuck,
    Msg,
    NoResponders,
    Pong,
    SessionState,
    Subscription,
)
from ._views import ConnectionInfo, Op, SandboxNatsMessage, SessionInfo, SubscriptionInfo
from ._wire import header_block_size, headers_mapping

__all__ = ["DEFAULT_MAX_PAYLOAD", "MAX_PAYLOAD_TEXT", "NatsModel"]

DEFAULT_MAX_PAYLOAD = 1024 * 1024  # nats-server's default
MAX_PAYLOAD_TEXT = "Maximum Payload Violation"

T = TypeVar("T")


def match_rank(pattern: str) -> tuple[int, ...]:
    """nats-server's order of match results, as its sublist walks them: at each
    token ``>`` first, then ``*``, then a literal, except that at the last token a
    literal comes before ``*``. Equal patterns tie (the server's order is random)."""
    tokens = pattern.split(".")
    last = len(tokens) - 1
    return tuple(
        0 if t == ">" else 2 if t != "*" else 3 if i == last else 1 for i, t in enumerate(tokens)
    )


def _routable(subject: str) -> bool:
    # Without pedantic mode the server routes what it can parse; an empty token never.
    return all(subject.split("."))


class NatsModel:
    """One in-memory NATS server (one account)."""

    def __init__(
        self, emit: Callable[[int, Event], None], max_payload: int = DEFAULT_MAX_PAYLOAD
    ) -> None:
        self._emit = emit
        self.max_payload = max_payload
        self.connections: dict[int, ConnectionState] = {}
        self.sessions: dict[int, SessionState] = {}
        self.history: list[Op] = []
        self.faults: FaultSet[Fault] = FaultSet()
        self._turns: dict[str, int] = {}  # queue group -> deliveries so far
        self._connection_ids = itertools.count(1)
        self._session_ids = itertools.count(1)

    # -- history -----------------------------------------------------------------

    def record(self, op: Op) -> None:
        """Record an operation performed outside the model (failed connects, backdoor)."""
        self.history.append(op)

    # -- connections and sessions --------------------------------------------------

    def _open(self, connection: int) -> ConnectionState:
        conn = self.connections.get(connection)
        if conn is None:
            raise ConnectionLost(f"connection {connection} does not exist")
        if conn.reason is not None:
            raise ConnectionLost(f"connection is closed: {conn.reason}", code=conn.reason.code)
        return conn

    def open_connection(self, name: str | None = None) -> int:
        conn = ConnectionState(next(self._connection_ids), name)
        self.connections[conn.id] = conn
        self.record(Op("connect", conn.id, None, {"name": name}))
        return conn.id

    def close_connection(self, connection: int, reason: CloseReason) -> CloseReason:
        """Close a connection; returns the reason it closed with (an earlier one if closed)."""
        conn = self.connections[connection]
        if conn.reason is not None:
            return conn.reason
        self.record(Op("close_connection", connection, None, {"reason": reason}))
        conn.reason = reason
        conn.subs.clear()
        conn.held_in.clear()
        conn.held_out.clear()
        for session in conn.sessions.values():
            session.open = False
        conn.sessions.clear()
        self._emit(connection, ConnectionClosed(reason))
        return reason

    def connection_reason(self, connection: int) -> CloseReason | None:
        return self.connections[connection].reason

    def open_session(self, connection: int) -> int:
        """A client-side session, known here only for views and history."""
        conn = self._open(connection)
        session = SessionState(next(self._session_ids), conn)
        conn.sessions[session.id] = session
        self.sessions[session.id] = session
        self.record(Op("open_session", connection, session.id))
        return session.id

    def close_session(self, session: int) -> None:
        state = self.sessions[session]
        if not state.open:
            return
        state.open = False
        state.connection.sessions.pop(session, None)
        self.record(Op("close_session", state.connection.id, session))

    # -- what clients send -----------------------------------------------------------

    def _client(self, connection: int, run: Callable[[ConnectionState], T]) -> T | None:
        """Run a client's operation now, or when its stalled connection resumes."""
        conn = self._open(connection)
        if conn.stalled:
            conn.held_in.append(lambda: run(conn))
            return None
        return run(conn)

    def subscribe(
        self,
        connection: int,
        sid: int,
        subject: str,
        queue: str | None = None,
        *,
        session: int | None = None,
    ) -> None:
        """SUB: from now on ``sid`` receives what matches ``subject``."""

        def run(conn: ConnectionState) -> None:
            args = {"sid": sid, "subject": subject, "queue": queue}
            try:
                check_subscribe_subject(subject)
                if queue is not None:
                    check_queue_group(queue)
            except InvalidSubject as exc:  # the server's -ERR 'Invalid Subject'
                self.record(Op("subscribe", conn.id, session, args, exc))
                return
            self.record(Op("subscribe", conn.id, session, args))
            conn.subs[sid] = Subscription(conn, sid, subject, queue, session)

        self._client(connection, run)

    def unsubscribe(self, connection: int, sid: int, *, session: int | None = None) -> None:
        """UNSUB: nothing more is routed to ``sid`` (unknown sids are ignored)."""

        def run(conn: ConnectionState) -> None:
            self.record(Op("unsubscribe", conn.id, session, {"sid": sid}))
            conn.subs.pop(sid, None)

        self._client(connection, run)

    def publish(
        self,
        connection: int | None,
        subject: str,
        body: bytes,
        *,
        reply: str | None = None,
        headers: Headers | None = None,
        session: int | None = None,
    ) -> int | None:
        """PUB or HPUB; ``connection=None`` publishes from outside any connection.

        Returns the number of subscriptions it was routed to, or None while
        the publishing connection is stalled.
        """
        size = len(body) + (0 if headers is None else header_block_size(headers))
        if connection is None:
            if size > self.max_payload:
                raise ConfigError(
                    f"a message of {size} bytes exceeds the max_payload of {self.max_payload}"
                )
            return self._publish(None, subject, body, reply, headers, session)

        def run(conn: ConnectionState) -> int:
            if size > self.max_payload:
                args = {"subject": subject, "size": size}
                self.record(Op("publish", conn.id, session, args, ConfigError(MAX_PAYLOAD_TEXT)))
                self.close_connection(conn.id, CloseReason(0, MAX_PAYLOAD_TEXT, "broker"))
                return 0
            return self._publish(conn, subject, body, reply, headers, session)

        return self._client(connection, run)

    def ping(self, connection: int, *, session: int | None = None, record: bool = True) -> None:
        """PING: its PONG comes after everything the server sent before it."""

        def run(conn: ConnectionState) -> None:
            if record:
                self.record(Op("flush", conn.id, session))
            self._send(conn, Pong())

        self._client(connection, run)

    # -- routing -----------------------------------------------------------------------

    def _publish(
        self,
        origin: ConnectionState | None,
        subject: str,
        body: bytes,
        reply: str | None,
        headers: Headers | None,
        session: int | None,
    ) -> int:
        delivered = self._route(subject, reply, body, headers) if _routable(subject) else 0
        args = {
            "subject": subject,
            "reply": reply,
            "body": body,
            "headers": headers_mapping(headers),
            "delivered": delivered,
        }
        self.record(Op("publish", origin.id if origin is not None else None, session, args))
        if not delivered and reply is not None and origin is not None:
            self._no_responders(origin, reply)
        return delivered

    def _route(self, subject: str, reply: str | None, body: bytes, headers: Headers | None) -> int:
        delivered = 0
        groups: dict[str, list[Subscription]] = {}
        for conn in list(self.connections.values()):
            if conn.reason is not None:
                continue
            for sub in list(conn.subs.values()):
                if not subject_matches(sub.subject, subject):
                    continue
                if sub.queue is None:
                    self._deliver(sub, Msg(sub.sid, subject, reply, body, headers))
                    delivered += 1
                else:
                    groups.setdefault(sub.queue, []).append(sub)
        for name, members in groups.items():
            turn = self._turns.get(name, 0)
            self._turns[name] = turn + 1
            member = members[turn % len(members)]
            self._deliver(member, Msg(member.sid, subject, reply, body, headers))
            delivered += 1
        return delivered

    def _no_responders(self, origin: ConnectionState, reply: str) -> None:
        mine = [
            s for s in origin.subs.values() if s.queue is None and subject_matches(s.subject, reply)
        ]
        if mine:
            sub = min(mine, key=lambda s: (match_rank(s.subject), s.sid))
            self._deliver(sub, NoResponders(sub.sid, reply))

    def _deliver(self, sub: Subscription, event: Msg | NoResponders) -> None:
        if self.faults:
            fault = self.faults.check(_view(sub, event))
            if fault is not None:
                if fault.action == "drop":
                    return  # lost after the server routed it
                event = replace(event, delay=fault.delay)
        self._send(sub.connection, event)

    def _send(self, conn: ConnectionState, event: Event) -> None:
        if conn.reason is not None:
            return
        if conn.stalled:
            conn.held_out.append(event)
        else:
            self._emit(conn.id, event)

    # -- stalls ---------------------------------------------------------------------------

    def stall(self, connection: int) -> None:
        """Hold everything to and from ``connection`` until ``resume``."""
        conn = self._open(connection)
        self.record(Op("stall", connection))
        conn.stalled = True

    def resume(self, connection: int) -> None:
        """Deliver what was held for ``connection``, then run what it sent meanwhile."""
        conn = self._open(connection)
        self.record(Op("resume", connection))
        conn.stalled = False
        while conn.held_out and not conn.stalled and conn.reason is None:
            self._emit(conn.id, conn.held_out.popleft())
        while conn.held_in and not conn.stalled and conn.reason is None:
            conn.held_in.popleft()()

    def lame_duck(self) -> None:
        """Tell every connection the server is going away (an INFO with ``ldm``)."""
        self.record(Op("lame_duck"))
        for conn in self._open_connections():
            self._send(conn, LameDuck())

    # -- views -------------------------------------------------------------------------------

    def _open_connections(self) -> list[ConnectionState]:
        return [c for c in self.connections.values() if c.reason is None]

    def connection_infos(self) -> dict[int, ConnectionInfo]:
        return {
            c.id: ConnectionInfo(c.id, c.name, tuple(c.sessions), tuple(c.subs), c.stalled)
            for c in self._open_connections()
        }

    def session_infos(self) -> dict[int, SessionInfo]:
        return {
            s.id: SessionInfo(
                s.id,
                c.id,
                tuple(sid for sid, sub in c.subs.items() if sub.session == s.id),
            )
            for c in self._open_connections()
            for s in c.sessions.values()
        }

    def subscription_infos(self, subject: str | None = None) -> list[SubscriptionInfo]:
        """Every subscription, or those a publish to ``subject`` could reach."""
        return [
            SubscriptionInfo(c.id, s.session, s.sid, s.subject, s.queue)
            for c in self._open_connections()
            for s in c.subs.values()
            if subject is None or subject_matches(s.subject, subject)
        ]

    def restart(self) -> None:
        """Forget what a server restart forgets (connections are closed already)."""
        self._turns.clear()


def _view(sub: Subscription, event: Msg | NoResponders) -> SandboxNatsMessage:
    if isinstance(event, NoResponders):
        return SandboxNatsMessage(
            event.subject, None, b"", None, sub.connection.id, sub.sid, sub.queue, status=503
        )
    return SandboxNatsMessage(
        event.subject,
        event.reply,
        event.body,
        headers_mapping(event.headers),
        sub.connection.id,
        sub.sid,
        sub.queue,
    )
