"""A hare_py ``NatsSession`` on a ``NatsConnection``: subscriptions and publishes.

Rules this module keeps:

- A batch is all or nothing: every message is checked and queued on the
  protocol object, and the first that cannot go on the wire drops the whole
  batch from the queue and raises ``UnsendableMessage`` with its index.
- Messages are handed to the subscription's callback from the reader, in
  server order, as the ``NatsSession`` docstring maps them; a no-responders
  status goes to ``on_return`` instead. A callback that raises is logged and
  the session carries on.
- An unsubscribed subscription keeps its callback until the server has seen
  the UNSUB (the PONG to a PING sent after it), so that a message the server
  routed before it is delivered, not lost.
- The close reason is settled once: ours, the server's (a permission
  violation of one of its subscriptions) or the connection's end.
- A draining session is retired (``retire``) so that nothing in flight is
  lost: it unsubscribes, then delivers what its server routed to it before
  the server saw that (up to the PONG of a PING sent after). A session with
  queue groups first waits until its server routes to the successor's: a
  server that loses its last member of a group hands the group's messages to
  a member it knows on a route, and drops them if it knows none yet (interest
  crosses a route asynchronously). It publishes a probe subject, subscribed
  on the successor after everything else, until the successor receives it;
  a route carries interest in order, so a server that routes the probe knows
  the rest. A probe the permissions refuse, or that never arrives within the
  timeout, is given up with a log line and the session retires anyway.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ..._log import get_logger
from ...errors import BrokerError, ConfigError, ConnectionLost, UnsendableMessage
from ..base import (
    EMPTY_PROPERTIES,
    NO_ROUTE,
    CloseReason,
    Delivery,
    Message,
    NatsSession,
    OnDelivery,
    OnReturn,
    Outcome,
    Properties,
    ReturnedMessage,
    Session,
)
from . import _protocol as p

if TYPE_CHECKING:
    from ._connection import NatsConnection

__all__ = ["NatsClientSession", "Subscription"]

log = get_logger("hare_py.transport.nats")

_CLOSED_BY_CLIENT = CloseReason(0, "closed by the client", "client")
_NOT_BYTES = "a message body is bytes"
# Seconds until a move's probe is published again: doubling, up to PROBE_MAX.
PROBE_FIRST = 0.005
PROBE_MAX = 0.1


class Subscription:
    """One SUB of a session: its subject and group, for attributing an -ERR."""

    __slots__ = ("callback", "ending", "queue", "session", "sid", "subject", "tag")

    def __init__(
        self,
        session: NatsClientSession,
        sid: int,
        subject: str,
        queue: str | None,
        callback: OnDelivery,
    ) -> None:
        self.session = session
        self.sid = sid
        self.tag = str(sid)  # its deliveries' consumer tag
        self.subject = subject
        self.queue = queue
        self.callback = callback
        self.ending = False  # UNSUB sent; delivering until the server has seen it


_OTHER_PROPERTIES = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
)
_others = attrgetter(*_OTHER_PROPERTIES)
_NONE = (None,) * len(_OTHER_PROPERTIES)


_CARRIED = frozenset({"headers", "reply_to"})


def _other_property(props: Properties) -> str | None:
    """The first property NATS cannot carry, or None."""
    if type(props) is Properties and props.__dict__.keys() <= _CARRIED:
        return None  # a Properties keeps exactly its fields that are not None in its dict
    values = _others(props)
    if values == _NONE:
        return None
    return next(
        name for name, value in zip(_OTHER_PROPERTIES, values, strict=True) if value is not None
    )


def _header_items(headers: Mapping[str, Any]) -> Mapping[str, Any] | list[tuple[str, Any]]:
    """The headers as the core takes them: a list of strings repeats its key."""
    for value in headers.values():
        if not isinstance(value, str):
            break
    else:
        return headers
    pairs: list[tuple[str, Any]] = []
    for key, value in headers.items():
        if isinstance(value, list | tuple):
            pairs.extend((key, item) for item in value)
        else:
            pairs.append((key, value))  # the core refuses a value that is not a string
    return pairs


def properties_of(event: p.MsgReceived) -> Properties:
    """A message's headers (a repeated key as a list, in wire order) and reply subject."""
    if event.headers is None:
        if event.reply is None:
            return EMPTY_PROPERTIES
        return Properties(reply_to=event.reply)
    headers: dict[str, Any] = {}
    for key, value in event.headers:
        seen = headers.get(key)
        if seen is None:
            headers[key] = value
        elif isinstance(seen, list):
            seen.append(value)
        else:
            headers[key] = [seen, value]
    return Properties(headers=headers, reply_to=event.reply)


class NatsClientSession(NatsSession):
    """One actor's session on a ``NatsConnection``; see the module docstring."""

    def __init__(self, connection: NatsConnection, on_return: OnReturn | None) -> None:
        self._connection = connection
        self._on_return = on_return
        self._subs: dict[int, Subscription] = {}
        self._close_reason: CloseReason | None = None
        self._closed = anyio.Event()
        self._draining = anyio.Event()

    def __repr__(self) -> str:
        state = "open" if self._close_reason is None else f"closed: {self._close_reason}"
        return f"<NatsClientSession {len(self._subs)} subscriptions {state}>"

    @property
    def close_reason(self) -> CloseReason | None:
        return self._close_reason

    @property
    def max_payload(self) -> int:
        return self._connection.protocol.max_payload

    @property
    def draining(self) -> bool:
        return self._draining.is_set() and self._close_reason is None

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The sids of the subscriptions still open."""
        return tuple(str(sid) for sid, sub in self._subs.items() if not sub.ending)

    # -- from the connection -------------------------------------------------------

    def on_draining(self) -> None:
        self._draining.set()

    def on_closed(self, reason: CloseReason) -> None:
        """The session is over (the connection's end, or an -ERR about one of its subs)."""
        if self._close_reason is None:
            self._close_reason = reason
            log.debug("nats.session_closed", reason=str(reason))
        self._closed.set()
        self._draining.set()
        self._subs.clear()

    def on_message(self, sub: Subscription, event: p.MsgReceived) -> None:
        if event.status is not None and event.no_responders:
            if self._on_return is None:
                return
            returned = ReturnedMessage(
                b"", EMPTY_PROPERTIES, "", event.subject, NO_ROUTE, "NO_RESPONDERS"
            )
            try:
                self._on_return(returned)
            except Exception:
                log.exception("nats.callback_failed", callback="on_return", sid=sub.sid)
            return
        delivery = Delivery(event.payload, properties_of(event), "", event.subject, 0, sub.tag)
        try:
            sub.callback(delivery)
        except Exception:
            log.exception("nats.callback_failed", callback="on_message", sid=sub.sid)

    def on_bad_message(self, sub: Subscription, event: p.BadMsgReceived) -> None:
        log.warning(
            "nats.message_undecodable",
            sid=event.sid,
            subject=event.subject,
            reply=event.reply,
            reason=str(event.error),
        )
        delivery = Delivery(
            b"", EMPTY_PROPERTIES, "", event.subject, 0, sub.tag, undecodable=str(event.error)
        )
        try:
            sub.callback(delivery)
        except Exception:
            log.exception("nats.callback_failed", callback="on_message", sid=sub.sid)

    def forget(self, sid: int) -> None:
        """The server has seen the UNSUB of ``sid``: nothing more will come for it."""
        self._subs.pop(sid, None)

    # -- the seam ------------------------------------------------------------------

    def _check_open(self) -> None:
        reason = self._close_reason
        if reason is not None:
            if reason.by == "broker":
                raise BrokerError(reason.code, reason.text)
            raise ConnectionLost(f"the NATS session is closed: {reason}", code=reason.code)
        self._connection.check_wire()

    async def send(self, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        # No mandatory flag on NATS: no-responders is always on (CONNECT asks for it).
        self._check_open()
        connection = self._connection
        protocol = connection.protocol
        batch = len(messages) > 1  # one message is all or nothing by itself
        if batch:
            connection.take_queued()  # keep what is queued already out of this batch
        publish = protocol.publish
        try:
            for index, message in enumerate(messages):
                exchange, subject, body, props = message
                if exchange:
                    raise UnsendableMessage(
                        index, f"NATS has no exchanges (exchange {exchange!r}): leave it ''"
                    )
                reply: str | None = None
                headers: Mapping[str, Any] | None = None
                if props is not EMPTY_PROPERTIES:
                    other = _other_property(props)
                    if other is not None:
                        raise UnsendableMessage(
                            index, f"NATS cannot carry the {other} property: put it in a header"
                        )
                    reply, headers = props.reply_to, props.headers
                try:
                    publish(
                        subject,
                        body,
                        reply=reply,
                        headers=None if headers is None else _header_items(headers),
                    )
                except ConfigError as exc:
                    raise UnsendableMessage(index, str(exc)) from None
                except TypeError:
                    raise UnsendableMessage(index, _NOT_BYTES) from None
        except p.NatsProtocolError:
            if batch:
                protocol.data_to_send()
            connection.check_wire()
            raise ConnectionLost("the NATS connection is closing") from None
        except BaseException:
            if batch:
                protocol.data_to_send()  # the batch leaves whole or not at all
            raise
        # Left in the protocol's queue: the writer takes it, and a batch first moves
        # it out of the way of its own rollback.
        connection.wake_writer()
        if connection.backlogged:
            await connection.wait_writable()

    async def settle(self, delivery: Delivery, outcome: Outcome) -> None:
        """NATS has no acknowledgements: nothing to do."""

    async def subscribe(
        self, subject: str, on_message: OnDelivery, *, queue: str | None = None
    ) -> str:
        self._check_open()
        sid = self._connection.protocol.subscribe(subject, queue)
        sub = Subscription(self, sid, subject, queue, on_message)
        self._subs[sid] = sub
        self._connection.add_subscription(sub)
        return str(sid)

    async def unsubscribe(self, sid: str) -> None:
        number = int(sid) if sid.isdigit() else -1
        sub = self._subs.get(number)
        if sub is None or sub.ending or self._close_reason is not None:
            return
        if self._connection.close_wire_reason() is not None:
            self.forget(number)
            return
        sub.ending = True
        self._connection.end_subscription(sub)

    async def flush(self, timeout: float) -> None:
        self._check_open()
        await self._connection.round_trip(timeout)
        self._check_open()  # an -ERR about one of our subscriptions came before the PONG

    async def drain(self, timeout: float) -> None:
        """Unsubscribe everything and wait until the server has seen it: every message
        it routed to us before is delivered by then. The session stays open to send
        (the answers to what is in hand); close it afterwards."""
        for sid in self.subscriptions:
            await self.unsubscribe(sid)
        await self.flush(timeout)

    async def retire(self, successor: Session, timeout: float) -> None:
        if self._close_reason is not None:
            return
        grouped = any(sub.queue is not None and not sub.ending for sub in self._subs.values())
        if grouped and isinstance(successor, NatsClientSession) and successor.is_open:
            await self._until_routed_to(successor, timeout)
        await self.drain(timeout)

    async def _until_routed_to(self, successor: NatsClientSession, timeout: float) -> None:
        """Return once our server routes to ``successor`` what it subscribed to so far,
        or ``timeout`` passes, or a permission refuses the probe."""
        subject = f"_INBOX.{secrets.token_hex(12)}"
        done = anyio.Event()
        outcome: Literal["timed out", "arrived", "refused"] = "timed out"

        def arrived(delivery: Delivery) -> None:
            nonlocal outcome
            outcome = "arrived"
            done.set()

        def refused() -> None:
            nonlocal outcome
            outcome = "refused"
            done.set()

        here, there = self._connection, successor._connection
        here.watch_probe(subject, refused)
        there.watch_probe(subject, refused)
        try:
            sid = await successor.subscribe(subject, arrived)
            try:
                with anyio.move_on_after(timeout):
                    wait = PROBE_FIRST
                    while not done.is_set():
                        await self.send([Message("", subject, b"")])
                        with anyio.move_on_after(wait):
                            await done.wait()
                        wait = min(2 * wait, PROBE_MAX)
            finally:
                await successor.unsubscribe(sid)
        finally:
            here.watch_probe(subject, None)
            there.watch_probe(subject, None)
        if outcome != "arrived":
            log.warning("nats.move_unconfirmed", outcome=outcome, seconds=timeout)

    async def wait_draining(self) -> None:
        await self._draining.wait()

    async def wait_closed(self) -> CloseReason:
        await self._closed.wait()
        assert self._close_reason is not None
        return self._close_reason

    async def close(self) -> None:
        if self._closed.is_set():
            return
        subs = [sub for sub in self._subs.values() if not sub.ending]
        self.on_closed(_CLOSED_BY_CLIENT)
        self._connection.remove_session(self, subs)
