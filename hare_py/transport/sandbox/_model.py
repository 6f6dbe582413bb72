"""The sans-I/O AMQP 0-9-1 broker: everything that changes broker state lives here.

Rules this module keeps:

- Nothing here awaits; all it reads of an event loop is its clock. Operations
  are plain methods taking the acting channel's id; they complete at once.
- What clients must learn about (deliveries, returns, consumer cancels,
  channel and connection closes) is handed to ``emit(connection_id, event)``
  in broker order; the I/O layer delivers it asynchronously.
- A refused operation closes its channel (or, for hard errors, its
  connection) in the model and emits the close *before* raising
  ``BrokerError`` (``ConnectionLost`` for a hard error), as a real broker
  sends ``channel.close`` (or ``connection.close``).
- An operation on a closed channel raises ``ConnectionLost`` and changes
  nothing.
- Reply texts follow RabbitMQ's, so tests read the same on both; so do the
  limits it enforces (``_limits``: argument values, message size, channel_max).
  What a client could not even send is refused before the model (``_wire``).
- Time is the running event loop's clock (``LoopClock``), so message TTLs
  follow a mock clock.
"""

from __future__ import annotations

import bisect
import itertools
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, NoReturn

from ..._clock import now
from ...errors import BrokerError, ConnectionLost
from .._amqp_common import DIRECT_REPLY_TO
from ..base import (
    ACCESS_REFUSED,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_FOUND,
    PRECONDITION_FAILED,
    RESOURCE_LOCKED,
    CloseReason,
    Delivery,
    Properties,
    QueueInfo,
    ReturnedMessage,
)
from ._faults import Fault, FaultSet
from ._limits import (
    CHANNEL_MAX,
    EXCHANGE_TYPES,
    MAX_MESSAGE_SIZE,
    amqp_type,
    check_expiration,
    check_queue,
    check_x_match,
    equivalent,
)
from ._routing import headers_match, topic_match
from ._state import (
    Binding,
    ChannelClosed,
    ChannelState,
    ConnectionClosed,
    ConnectionState,
    Consumer,
    ConsumerCancelled,
    Deliver,
    Event,
    Exchange,
    Message,
    Pending,
    Queue,
    Return,
)
from ._views import (
    BindingInfo,
    ChannelInfo,
    ConnectionInfo,
    ConsumerInfo,
    ExchangeInfo,
    Op,
    QueueDetails,
    SandboxMessage,
)

__all__ = ["SYSTEM_EXCHANGES", "BrokerModel"]

VHOST = "/"
SYSTEM_EXCHANGES = {
    "amq.direct": "direct",
    "amq.topic": "topic",
    "amq.fanout": "fanout",
    "amq.headers": "headers",
    "amq.match": "headers",
}
COMMAND_INVALID = 503
HARD_ERRORS = frozenset({NOT_ALLOWED, 501, 502, COMMAND_INVALID, 504, 505, 506, 540, 541})
# Queue arguments RabbitMQ compares on redeclare; others are accepted as they come.
CHECKED_QUEUE_ARGS = (
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
)
CHECKED_EXCHANGE_ARGS = ("alternate-exchange",)
CANCEL_TEXT = "consumer cancelled by the broker"


def _token() -> str:
    return secrets.token_urlsafe(16)  # 22 characters


def _bool(value: bool) -> str:
    return "true" if value else "false"


class LoopClock:
    """The running event loop's clock; outside any loop, time stands still.

    Expiry deadlines are set and checked on the loop's clock, so under trio's
    ``MockClock`` a TTL passes with virtual time. A backdoor call made outside
    a loop sees the last time a loop showed.
    """

    def __init__(self) -> None:
        self._last: float | None = None

    def __call__(self) -> float:
        try:
            self._last = now()
        except RuntimeError:  # no running event loop
            if self._last is None:
                self._last = time.monotonic()
        return self._last


def _parse_ttl(value: Any) -> int | None:
    """A TTL in milliseconds, or None if ``value`` is not a non-negative integer."""
    try:
        ttl = int(value)
    except (TypeError, ValueError):
        return None
    return ttl if ttl >= 0 else None


class BrokerModel:
    """One virtual host of an in-memory AMQP 0-9-1 broker."""

    def __init__(
        self,
        emit: Callable[[int, Event], None],
        clock: Callable[[], float] | None = None,
        *,
        max_message_size: int = MAX_MESSAGE_SIZE,
        channel_max: int = CHANNEL_MAX,
    ) -> None:
        self._emit = emit
        self._clock = clock if clock is not None else LoopClock()
        self.max_message_size = max_message_size
        self.channel_max = channel_max
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        self.bindings: list[Binding] = []
        self.connections: dict[int, ConnectionState] = {}
        self.channels: dict[int, ChannelState] = {}
        self.history: list[Op] = []
        self.faults: FaultSet[Fault] = FaultSet()
        self._reply_channels: dict[str, ChannelState] = {}  # reply-to address -> channel
        self._connection_ids = itertools.count(1)
        self._channel_ids = itertools.count(1)
        self._declare_system_exchanges()

    def _declare_system_exchanges(self) -> None:
        for name, type_ in SYSTEM_EXCHANGES.items():
            self.exchanges.setdefault(name, Exchange(name, type_, durable=True))

    # -- history -----------------------------------------------------------

    @contextmanager
    def _op(self, name: str, channel: int | None = None, **args: Any) -> Iterator[None]:
        state = self.channels.get(channel) if channel is not None else None
        op = Op(name, state.connection.id if state else None, channel, args)
        index = len(self.history)
        self.history.append(op)
        try:
            yield
        except Exception as exc:
            self.history[index] = replace(op, error=exc)
            raise

    def record(self, op: Op) -> None:
        """Record an operation performed outside the model (connects, scripted faults)."""
        self.history.append(op)

    # -- refusals ------------------------------------------------------------

    def _open_channel_state(self, channel: int) -> ChannelState:
        ch = self.channels.get(channel)
        if ch is None:
            raise ConnectionLost(f"channel {channel} does not exist")
        if ch.reason is not None:
            raise ConnectionLost(f"channel is closed: {ch.reason}", code=ch.reason.code)
        return ch

    def _refuse(self, ch: ChannelState | None, code: int, text: str) -> NoReturn:
        """Close the channel (or connection, for hard errors) and raise."""
        full = f"{_code_name(code)} - {text}"
        if ch is not None:
            reason = CloseReason(code, full, "broker")
            if code in HARD_ERRORS:
                self.close_connection(ch.connection.id, reason)
            else:
                self._close_channel(ch, reason)
        if code in HARD_ERRORS:
            # The broker closed the connection: the client sees it go.
            number = f"channel {ch.number} " if ch is not None else ""
            raise ConnectionLost(f"{number}closed: {code} {full} (by connection)", code=code)
        raise BrokerError(code, full)

    def _check_exclusive(self, ch: ChannelState | None, q: Queue) -> None:
        if q.exclusive_owner is not None and (ch is None or ch.connection.id != q.exclusive_owner):
            self._refuse(ch, RESOURCE_LOCKED, _locked_text(q.name))

    def _queue_or_404(self, ch: ChannelState | None, name: str) -> Queue:
        q = self.queues.get(name)
        if q is None:
            self._refuse(ch, NOT_FOUND, f"no queue '{name}' in vhost '{VHOST}'")
        return q

    def _exchange_or_404(self, ch: ChannelState | None, name: str) -> Exchange:
        x = self.exchanges.get(name)
        if x is None:
            self._refuse(ch, NOT_FOUND, f"no exchange '{name}' in vhost '{VHOST}'")
        return x

    def _not_default(self, ch: ChannelState, name: str) -> None:
        if name == "":
            self._refuse(ch, ACCESS_REFUSED, "operation not permitted on the default exchange")

    # -- connections and channels ---------------------------------------------

    def open_connection(self, name: str | None = None, user: str = "guest") -> int:
        conn = ConnectionState(next(self._connection_ids), name, user)
        self.connections[conn.id] = conn
        self.record(Op("connect", conn.id, None, {"name": name}))
        return conn.id

    def close_connection(self, connection: int, reason: CloseReason) -> CloseReason:
        """Close a connection and its channels; returns the reason it closed with."""
        conn = self.connections[connection]
        if conn.reason is not None:
            return conn.reason
        self.record(Op("close_connection", connection, None, {"reason": reason}))
        conn.reason = reason
        for ch in list(conn.channels.values()):
            self._close_channel(ch, CloseReason(reason.code, reason.text, "connection"))
        for q in [q for q in self.queues.values() if q.exclusive_owner == connection]:
            self._delete_queue(q)
        self._emit(connection, ConnectionClosed(connection, reason))
        return reason

    def connection_reason(self, connection: int) -> CloseReason | None:
        return self.connections[connection].reason

    def open_channel(self, connection: int, confirms: bool = False) -> tuple[int, int]:
        """Open a channel; returns its broker-wide id and its number on the connection."""
        conn = self.connections[connection]
        if conn.reason is not None:
            raise ConnectionLost(f"connection is closed: {conn.reason}", code=conn.reason.code)
        limit = self.channel_max
        if len(conn.channels) >= limit:
            # Both AMQP backends refuse this themselves; the connection goes on.
            raise BrokerError(NOT_ALLOWED, f"NOT_ALLOWED - all {limit} channels are in use")
        numbers = {c.number for c in conn.channels.values()}
        number = conn.next_number
        while number in numbers:  # after channel_max, wrap around to free numbers
            number = number % limit + 1
        ch = ChannelState(next(self._channel_ids), conn, number, confirms)
        conn.next_number = number % limit + 1
        conn.channels[ch.id] = ch
        self.channels[ch.id] = ch
        self.record(Op("open_channel", connection, ch.id, {"publisher_confirms": confirms}))
        return ch.id, ch.number

    def close_channel(self, channel: int, reason: CloseReason) -> CloseReason:
        """Close a channel; returns the reason it closed with (an earlier one if closed)."""
        ch = self.channels[channel]
        if ch.reason is None:
            self.record(Op("close_channel", ch.connection.id, channel, {"reason": reason}))
            self._close_channel(ch, reason)
        assert ch.reason is not None
        return ch.reason

    def channel_reason(self, channel: int) -> CloseReason | None:
        return self.channels[channel].reason

    def _close_channel(self, ch: ChannelState, reason: CloseReason) -> None:
        if ch.reason is not None:
            return
        ch.reason = reason
        del ch.connection.channels[ch.id]
        if ch.reply_address is not None:
            self._reply_channels.pop(ch.reply_address, None)
        for consumer in list(ch.consumers.values()):
            self._remove_consumer(consumer)
        pending = list(ch.unacked.values())
        ch.unacked.clear()
        touched = {q.name: q for p in pending if (q := self._requeue(p)) is not None}
        self._emit(ch.connection.id, ChannelClosed(ch.id, reason))
        for q in touched.values():
            self._pump(q)

    # -- exchanges -----------------------------------------------------------

    def exchange_declare(
        self,
        channel: int,
        exchange: str,
        exchange_type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        args = dict(arguments or {})
        with self._op(
            "exchange_declare",
            channel,
            exchange=exchange,
            type=exchange_type,
            passive=passive,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=args,
        ):
            ch = self._open_channel_state(channel)
            if not passive and exchange_type not in EXCHANGE_TYPES:
                self._refuse(ch, COMMAND_INVALID, f"unknown exchange type '{exchange_type}'")
            self._not_default(ch, exchange)
            if passive:
                self._exchange_or_404(ch, exchange)
                return
            x = self.exchanges.get(exchange)
            if x is None:
                if exchange.startswith("amq."):
                    self._refuse(
                        ch,
                        ACCESS_REFUSED,
                        f"exchange name '{exchange}' contains reserved prefix 'amq.*'",
                    )
                alternate = args.get("alternate-exchange")
                if alternate is not None and not isinstance(alternate, str):
                    self._refuse(
                        ch,
                        PRECONDITION_FAILED,
                        f"invalid type '{amqp_type(alternate)}' for arg 'alternate-exchange' "
                        f"in exchange '{exchange}' in vhost '{VHOST}'",
                    )
                self.exchanges[exchange] = Exchange(
                    exchange, exchange_type, durable, auto_delete, internal, args
                )
                return
            what = f"for exchange '{exchange}' in vhost '{VHOST}'"
            if x.type != exchange_type:
                self._refuse(
                    ch,
                    PRECONDITION_FAILED,
                    f"inequivalent arg 'type' {what}: "
                    f"received '{exchange_type}' but current is '{x.type}'",
                )
            for flag, current, wanted in (
                ("durable", x.durable, durable),
                ("auto_delete", x.auto_delete, auto_delete),
                ("internal", x.internal, internal),
            ):
                if current != wanted:
                    self._refuse(
                        ch,
                        PRECONDITION_FAILED,
                        f"inequivalent arg '{flag}' {what}: "
                        f"received '{_bool(wanted)}' but current is '{_bool(current)}'",
                    )
            self._check_args(ch, what, CHECKED_EXCHANGE_ARGS, x.arguments, args)

    def _check_args(
        self,
        ch: ChannelState,
        what: str,
        keys: tuple[str, ...],
        current: Mapping[str, Any],
        wanted: Mapping[str, Any],
    ) -> None:
        for key in keys:
            have, want = current.get(key), wanted.get(key)
            if key == "x-queue-type":  # an absent type means the default, classic
                have, want = have or "classic", want or "classic"
            refusal = equivalent(key, what, have, want)
            if refusal is not None:
                self._refuse(ch, PRECONDITION_FAILED, refusal)

    def exchange_delete(self, channel: int, exchange: str, *, if_unused: bool = False) -> None:
        with self._op("exchange_delete", channel, exchange=exchange, if_unused=if_unused):
            ch = self._open_channel_state(channel)
            self._not_default(ch, exchange)
            if exchange.startswith("amq."):
                self._refuse(
                    ch,
                    ACCESS_REFUSED,
                    f"deletion of system exchange '{exchange}' in vhost '{VHOST}' not allowed",
                )
            if exchange not in self.exchanges:
                return  # RabbitMQ deletes idempotently
            if if_unused and any(b.exchange == exchange for b in self.bindings):
                self._refuse(
                    ch, PRECONDITION_FAILED, f"exchange '{exchange}' in vhost '{VHOST}' in use"
                )
            self._delete_exchange(exchange)

    def _delete_exchange(self, name: str) -> None:
        self.exchanges.pop(name, None)
        self.bindings = [b for b in self.bindings if b.exchange != name]

    # -- queues ----------------------------------------------------------------

    def queue_declare(
        self,
        channel: int,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> QueueInfo:
        args = dict(arguments or {})
        with self._op(
            "queue_declare",
            channel,
            queue=queue,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=args,
        ):
            ch = self._open_channel_state(channel)
            owner = ch.connection.id
            if queue == DIRECT_REPLY_TO:
                return QueueInfo(DIRECT_REPLY_TO, 0, 0)
            if passive:
                q = self._queue_or_404(ch, queue)
                self._check_exclusive(ch, q)
                return self._queue_info(q)
            # Unlike exchanges, even an existing amq.* queue (amq.gen-...) cannot be
            # redeclared by name.
            if queue.startswith("amq."):
                self._refuse(
                    ch, ACCESS_REFUSED, f"queue name '{queue}' contains reserved prefix 'amq.*'"
                )
            name = queue or f"amq.gen-{_token()}"
            q_or_none = self.queues.get(name)
            if q_or_none is None:
                refusal = check_queue(
                    f"queue '{name}' in vhost '{VHOST}'",
                    server_named=not queue,
                    durable=durable,
                    exclusive=exclusive,
                    auto_delete=auto_delete,
                    args=args,
                )
                if refusal is not None:
                    self._refuse(ch, PRECONDITION_FAILED, refusal)
                q = Queue(name, durable, owner if exclusive else None, auto_delete, args)
                self.queues[name] = q
                return self._queue_info(q)
            q = q_or_none
            # Strict: the exclusive flag must match too, not just the owner.
            if q.exclusive_owner != (owner if exclusive else None):
                self._refuse(ch, RESOURCE_LOCKED, _locked_text(name))
            what = f"for queue '{name}' in vhost '{VHOST}'"
            for flag, current, wanted in (
                ("durable", q.durable, durable),
                ("auto_delete", q.auto_delete, auto_delete),
            ):
                if current != wanted:
                    self._refuse(
                        ch,
                        PRECONDITION_FAILED,
                        f"inequivalent arg '{flag}' {what}: "
                        f"received '{_bool(wanted)}' but current is '{_bool(current)}'",
                    )
            self._check_args(ch, what, CHECKED_QUEUE_ARGS, q.arguments, args)
            return self._queue_info(q)

    def _queue_info(self, q: Queue) -> QueueInfo:
        self._expire(q)
        return QueueInfo(q.name, len(q.ready), len(q.consumers))

    def queue_delete(
        self, channel: int, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        with self._op("queue_delete", channel, queue=queue, if_unused=if_unused, if_empty=if_empty):
            ch = self._open_channel_state(channel)
            q = self.queues.get(queue)
            if q is None:
                return 0  # RabbitMQ deletes idempotently
            self._check_exclusive(ch, q)
            if if_unused and q.consumers:
                self._refuse(ch, PRECONDITION_FAILED, f"queue '{queue}' in vhost '{VHOST}' in use")
            self._expire(q)
            if if_empty and q.ready:
                self._refuse(
                    ch, PRECONDITION_FAILED, f"queue '{queue}' in vhost '{VHOST}' not empty"
                )
            return self._delete_queue(q)

    def _delete_queue(self, q: Queue) -> int:
        """Delete a queue, cancelling its consumers; returns its ready message count."""
        if self.queues.get(q.name) is not q:
            return 0
        del self.queues[q.name]
        self._expire(q)
        reason = CloseReason(0, CANCEL_TEXT, "broker")
        for consumer in list(q.consumers):
            del consumer.channel.consumers[consumer.tag]
            self._emit(
                consumer.channel.connection.id,
                ConsumerCancelled(consumer.channel.id, consumer.tag, reason),
            )
        q.consumers.clear()
        self._remove_bindings(lambda b: b.queue == q.name)
        return len(q.ready)

    def _remove_bindings(self, doomed: Callable[[Binding], bool]) -> None:
        removed = [b for b in self.bindings if doomed(b)]
        self.bindings = [b for b in self.bindings if not doomed(b)]
        for name in {b.exchange for b in removed}:
            x = self.exchanges.get(name)
            if (
                x is not None
                and x.auto_delete
                and not any(b.exchange == name for b in self.bindings)
            ):
                self._delete_exchange(name)

    def queue_bind(
        self,
        channel: int,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        args = dict(arguments or {})
        with self._op(
            "queue_bind",
            channel,
            queue=queue,
            exchange=exchange,
            routing_key=routing_key,
            arguments=args,
        ):
            ch = self._open_channel_state(channel)
            self._not_default(ch, exchange)
            x = self._exchange_or_404(ch, exchange)
            q = self._queue_or_404(ch, queue)
            self._check_exclusive(ch, q)
            refusal = check_x_match(args) if x.type == "headers" else None
            if refusal is not None:
                self._refuse(ch, PRECONDITION_FAILED, refusal)
            if not any(b.same(exchange, queue, routing_key, args) for b in self.bindings):
                self.bindings.append(Binding(exchange, queue, routing_key, args))
                x.had_binding = True

    def queue_unbind(
        self,
        channel: int,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        args = dict(arguments or {})
        with self._op(
            "queue_unbind",
            channel,
            queue=queue,
            exchange=exchange,
            routing_key=routing_key,
            arguments=args,
        ):
            ch = self._open_channel_state(channel)
            self._not_default(ch, exchange)
            q = self.queues.get(queue)
            if q is not None:
                self._check_exclusive(ch, q)
            # Unbinding what is not bound succeeds, as on RabbitMQ.
            self._remove_bindings(lambda b: b.same(exchange, queue, routing_key, args))

    def queue_purge(self, channel: int, queue: str) -> int:
        with self._op("queue_purge", channel, queue=queue):
            ch = self._open_channel_state(channel)
            q = self._queue_or_404(ch, queue)
            self._check_exclusive(ch, q)
            self._expire(q)
            count = len(q.ready)
            q.ready.clear()
            return count

    # -- consumers -------------------------------------------------------------

    def basic_qos(self, channel: int, prefetch_count: int, *, global_: bool = False) -> None:
        with self._op("basic_qos", channel, prefetch_count=prefetch_count, global_=global_):
            ch = self._open_channel_state(channel)
            if global_:
                ch.global_prefetch = prefetch_count
            else:
                ch.prefetch = prefetch_count
            self._pump_channel(ch)

    def basic_consume(
        self,
        channel: int,
        queue: str,
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> str:
        """Start a consumer; deliveries follow on the next ``pump_queue``."""
        args = dict(arguments or {})
        with self._op(
            "basic_consume",
            channel,
            queue=queue,
            no_ack=no_ack,
            exclusive=exclusive,
            consumer_tag=consumer_tag,
            arguments=args,
        ):
            ch = self._open_channel_state(channel)
            tag = consumer_tag or f"amq.ctag-{_token()}"
            if queue == DIRECT_REPLY_TO:
                return self._consume_replies(ch, tag, no_ack)
            q = self._queue_or_404(ch, queue)
            self._check_exclusive(ch, q)
            if tag in ch.consumers:
                self._refuse(ch, NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'")
            if q.consumers and (exclusive or any(c.exclusive for c in q.consumers)):
                self._refuse(
                    ch, ACCESS_REFUSED, f"queue '{queue}' in vhost '{VHOST}' in exclusive use"
                )
            consumer = Consumer(tag, queue, ch, no_ack, exclusive, ch.prefetch)
            ch.consumers[tag] = consumer
            q.consumers.append(consumer)
            q.had_consumer = True
            return tag

    def _consume_replies(self, ch: ChannelState, tag: str, no_ack: bool) -> str:
        if tag in ch.consumers:
            self._refuse(ch, NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'")
        if not no_ack:
            self._refuse(ch, PRECONDITION_FAILED, "reply consumer cannot acknowledge")
        if ch.reply_consumer is not None:
            self._refuse(ch, PRECONDITION_FAILED, "reply consumer already set")
        consumer = Consumer(tag, DIRECT_REPLY_TO, ch, no_ack=True, exclusive=False, prefetch=0)
        ch.consumers[tag] = consumer
        ch.reply_consumer = consumer
        if ch.reply_address is None:
            ch.reply_address = f"{DIRECT_REPLY_TO}.{_token()}.{_token()}"
            self._reply_channels[ch.reply_address] = ch
        return tag

    def pump_queue(self, queue: str) -> None:
        """Deliver what a queue can deliver now (after a consumer was registered)."""
        q = self.queues.get(queue)
        if q is not None:
            self._pump(q)

    def basic_cancel(self, channel: int, consumer_tag: str) -> None:
        with self._op("basic_cancel", channel, consumer_tag=consumer_tag):
            ch = self._open_channel_state(channel)
            consumer = ch.consumers.get(consumer_tag)
            if consumer is not None:  # cancelling an unknown tag succeeds, as on RabbitMQ
                self._remove_consumer(consumer)

    def _remove_consumer(self, consumer: Consumer) -> None:
        del consumer.channel.consumers[consumer.tag]
        if consumer is consumer.channel.reply_consumer:
            consumer.channel.reply_consumer = None
            return
        q = self.queues.get(consumer.queue)
        if q is None or consumer not in q.consumers:
            return
        q.consumers.remove(consumer)
        if q.auto_delete and not q.consumers:
            self._delete_queue(q)

    # -- publishing and routing --------------------------------------------------

    def basic_publish(
        self,
        channel: int | None,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: Properties | None = None,
        mandatory: bool = False,
    ) -> None:
        """Route a message; ``channel=None`` publishes from outside any connection."""
        props = properties if properties is not None else Properties()
        with self._op(
            "basic_publish",
            channel,
            exchange=exchange,
            routing_key=routing_key,
            body=body,
            properties=props,
            mandatory=mandatory,
        ):
            ch = self._open_channel_state(channel) if channel is not None else None
            if len(body) > self.max_message_size:
                self._refuse(
                    ch,
                    PRECONDITION_FAILED,
                    f"message size {len(body)} is larger than configured max size "
                    f"{self.max_message_size}",
                )
            x = self._exchange_or_404(ch, exchange) if exchange else None
            if x is not None and x.internal:
                self._refuse(
                    ch,
                    ACCESS_REFUSED,
                    f"cannot publish to internal exchange '{exchange}' in vhost '{VHOST}'",
                )
            user = ch.connection.user if ch is not None else None
            if user is not None and props.user_id is not None and props.user_id != user:
                self._refuse(
                    ch,
                    PRECONDITION_FAILED,
                    f"user_id property set to '{props.user_id}' but authenticated user was "
                    f"'{user}'",
                )
            if props.reply_to == DIRECT_REPLY_TO:
                if ch is None or ch.reply_address is None or ch.reply_consumer is None:
                    self._refuse(ch, PRECONDITION_FAILED, "fast reply consumer does not exist")
                props = replace(props, reply_to=ch.reply_address)
            if x is None and routing_key.startswith(DIRECT_REPLY_TO + "."):
                self._reply(ch, body, routing_key, props, mandatory)
                return
            ttl: int | None = None
            if props.expiration is not None:
                parsed = check_expiration(props.expiration)
                if isinstance(parsed, str):
                    self._refuse(ch, PRECONDITION_FAILED, parsed)
                ttl = parsed
            queues = self._route(x, routing_key, props.headers, set())
            if not queues:
                if mandatory and ch is not None:
                    returned = ReturnedMessage(
                        body, props, exchange, routing_key, NO_ROUTE, "NO_ROUTE"
                    )
                    self._emit(ch.connection.id, Return(ch.id, returned))
                return
            for q in queues:
                self._enqueue(q, Message(body, props, exchange, routing_key), ttl)

    def _reply(
        self,
        ch: ChannelState | None,
        body: bytes,
        routing_key: str,
        props: Properties,
        mandatory: bool,
    ) -> None:
        """A publish to a direct reply-to address: straight to its channel's consumer."""
        target = self._reply_channels.get(routing_key)
        consumer = target.reply_consumer if target is not None else None
        if consumer is not None:
            message = Message(body, props, "", routing_key)
            fault = self.faults.check(_view(DIRECT_REPLY_TO, message))
            if fault is None:
                self._deliver(consumer, DIRECT_REPLY_TO, message)
            elif fault.action == "delay":
                self._deliver(consumer, DIRECT_REPLY_TO, message, delay=fault.delay)
            elif fault.action == "duplicate":
                self._deliver(consumer, DIRECT_REPLY_TO, message)
                self._deliver(consumer, DIRECT_REPLY_TO, message)
        # RabbitMQ 3.10 returns every mandatory reply, delivered or not.
        if mandatory and ch is not None:
            returned = ReturnedMessage(body, props, "", routing_key, NO_ROUTE, "NO_ROUTE")
            self._emit(ch.connection.id, Return(ch.id, returned))

    def _route(
        self,
        x: Exchange | None,
        routing_key: str,
        headers: Mapping[str, Any] | None,
        seen: set[str],
    ) -> list[Queue]:
        if x is None:  # the default exchange: by queue name
            q = self.queues.get(routing_key)
            return [q] if q is not None else []
        seen.add(x.name)
        names: dict[str, None] = {}
        for b in self.bindings:
            if b.exchange == x.name and _binding_matches(x.type, b, routing_key, headers):
                names[b.queue] = None
        found = [self.queues[n] for n in names if n in self.queues]
        alternate = x.arguments.get("alternate-exchange")
        if not found and isinstance(alternate, str) and alternate not in seen:
            ae = self.exchanges.get(alternate)
            if ae is not None:
                return self._route(ae, routing_key, headers, seen)
        return found

    def _enqueue(self, q: Queue, message: Message, ttl: int | None) -> None:
        queue_ttl = _parse_ttl(q.arguments.get("x-message-ttl"))
        if queue_ttl is not None:
            ttl = queue_ttl if ttl is None else min(ttl, queue_ttl)
        if ttl == 0:
            message.immediate = True
        elif ttl is not None:
            message.expires_at = self._clock() + ttl / 1000
        message.seq = q.next_seq
        q.next_seq += 1
        q.ready.append(message)
        self._pump(q)
        if message.immediate and message in q.ready:
            # TTL 0 and not deliverable now: at the head it expires at once; behind
            # other messages it expires on reaching the head, as on RabbitMQ.
            if q.ready[0] is message:
                q.ready.pop(0)
            else:
                message.expires_at = self._clock()
            message.immediate = False

    def _expire(self, q: Queue) -> None:
        # Like RabbitMQ, messages expire when they reach the head of the queue.
        now = self._clock()
        while q.ready and (head := q.ready[0]).expires_at is not None and head.expires_at <= now:
            q.ready.pop(0)

    def _pump(self, q: Queue) -> None:
        """Hand ready messages to consumers with capacity, round-robin."""
        while q.consumers and self.queues.get(q.name) is q:
            self._expire(q)
            if not q.ready:
                return
            index = next((i for i, c in enumerate(q.consumers) if c.has_capacity()), None)
            if index is None:
                return
            consumer = q.consumers.pop(index)
            q.consumers.append(consumer)
            message = q.ready.pop(0)
            fault = self.faults.check(_view(q.name, message))
            if fault is None:
                self._deliver(consumer, q.name, message)
            elif fault.action == "delay":
                self._deliver(consumer, q.name, message, delay=fault.delay)
            elif fault.action == "duplicate":
                self._deliver(consumer, q.name, message)
                self._deliver(consumer, q.name, message)
            # "drop": the message is gone, as if lost in transit

    def _deliver(
        self, consumer: Consumer, queue: str, message: Message, delay: float = 0.0
    ) -> None:
        ch = consumer.channel
        tag = ch.next_tag
        ch.next_tag += 1
        if not consumer.no_ack:
            ch.unacked[tag] = Pending(tag, message, queue, consumer)
            consumer.unacked += 1
        delivery = Delivery(
            body=message.body,
            properties=message.properties,
            exchange=message.exchange,
            routing_key=message.routing_key,
            delivery_tag=tag,
            consumer_tag=consumer.tag,
            redelivered=message.redelivered,
        )
        self._emit(ch.connection.id, Deliver(ch.id, delivery, delay))

    def _pump_channel(self, ch: ChannelState) -> None:
        for name in {c.queue for c in ch.consumers.values()}:
            self.pump_queue(name)

    # -- acknowledgements ----------------------------------------------------------

    def _settle(self, ch: ChannelState, delivery_tag: int, multiple: bool) -> list[Pending]:
        if multiple and delivery_tag == 0:
            tags = list(ch.unacked)
        elif delivery_tag not in ch.unacked:
            self._refuse(ch, PRECONDITION_FAILED, f"unknown delivery tag {delivery_tag}")
        elif multiple:
            tags = [t for t in ch.unacked if t <= delivery_tag]
        else:
            tags = [delivery_tag]
        settled = [ch.unacked.pop(t) for t in tags]
        for p in settled:
            p.consumer.unacked -= 1
        return settled

    def basic_ack(self, channel: int, delivery_tag: int, *, multiple: bool = False) -> None:
        with self._op("basic_ack", channel, delivery_tag=delivery_tag, multiple=multiple):
            ch = self._open_channel_state(channel)
            self._settle(ch, delivery_tag, multiple)
            self._pump_channel(ch)

    def basic_nack(
        self, channel: int, delivery_tag: int, *, multiple: bool = False, requeue: bool = True
    ) -> None:
        with self._op(
            "basic_nack", channel, delivery_tag=delivery_tag, multiple=multiple, requeue=requeue
        ):
            self._reject(channel, delivery_tag, multiple, requeue)

    def basic_reject(self, channel: int, delivery_tag: int, *, requeue: bool = True) -> None:
        with self._op("basic_reject", channel, delivery_tag=delivery_tag, requeue=requeue):
            self._reject(channel, delivery_tag, False, requeue)

    def _reject(self, channel: int, delivery_tag: int, multiple: bool, requeue: bool) -> None:
        ch = self._open_channel_state(channel)
        settled = self._settle(ch, delivery_tag, multiple)
        touched: dict[str, Queue] = {}
        if requeue:
            for p in settled:
                q = self._requeue(p)
                if q is not None:
                    touched[q.name] = q
        for q in touched.values():
            self._pump(q)
        self._pump_channel(ch)

    def _requeue(self, pending: Pending) -> Queue | None:
        q = self.queues.get(pending.queue)
        if q is None:
            return None
        pending.message.redelivered = True
        pending.message.immediate = False
        bisect.insort(q.ready, pending.message, key=lambda m: m.seq)
        return q

    # -- backdoor ----------------------------------------------------------------------

    def cancel_consumer(self, consumer_tag: str, reason: CloseReason) -> bool:
        """Cancel every consumer with this tag, notifying its channel; False if none."""
        found = False
        for ch in list(self.channels.values()):
            consumer = ch.consumers.get(consumer_tag)
            if consumer is None or ch.reason is not None:
                continue
            found = True
            self._emit(ch.connection.id, ConsumerCancelled(ch.id, consumer_tag, reason))
            self._remove_consumer(consumer)
        return found

    def delete_queue(self, queue: str) -> int:
        """Delete a queue whatever its owner, cancelling its consumers."""
        q = self.queues.get(queue)
        return 0 if q is None else self._delete_queue(q)

    def restart(self) -> None:
        """What survives a broker restart: durable entities and persistent messages."""
        for name, x in list(self.exchanges.items()):
            if not x.durable:
                self._delete_exchange(name)
        for q in list(self.queues.values()):
            if not q.durable or q.exclusive_owner is not None:
                self._delete_queue(q)
            else:
                q.ready = [m for m in q.ready if m.properties.delivery_mode == 2]
        self.bindings = [
            b for b in self.bindings if b.queue in self.queues and b.exchange in self.exchanges
        ]
        self._declare_system_exchanges()

    # -- views -----------------------------------------------------------------------

    def connection_infos(self) -> dict[int, ConnectionInfo]:
        return {
            c.id: ConnectionInfo(c.id, c.name, tuple(c.channels))
            for c in self.connections.values()
            if c.reason is None
        }

    def channel_infos(self) -> dict[int, ChannelInfo]:
        return {
            ch.id: ChannelInfo(
                id=ch.id,
                connection=ch.connection.id,
                number=ch.number,
                publisher_confirms=ch.confirms,
                prefetch_count=ch.prefetch,
                global_prefetch_count=ch.global_prefetch,
                consumers=tuple(ch.consumers),
                unacked=len(ch.unacked),
            )
            for ch in self.channels.values()
            if ch.reason is None
        }

    def consumer_infos(self, queue: str) -> list[ConsumerInfo]:
        q = self.queues.get(queue)
        return [] if q is None else [_consumer_info(c) for c in q.consumers]

    def queue_details(self) -> dict[str, QueueDetails]:
        result = {}
        for q in self.queues.values():
            self._expire(q)
            unacked = sum(
                1 for ch in self.channels.values() for p in ch.unacked.values() if p.queue == q.name
            )
            result[q.name] = QueueDetails(
                name=q.name,
                durable=q.durable,
                exclusive_owner=q.exclusive_owner,
                auto_delete=q.auto_delete,
                arguments=dict(q.arguments),
                messages=len(q.ready),
                unacked=unacked,
                consumers=tuple(_consumer_info(c) for c in q.consumers),
            )
        return result

    def exchange_infos(self) -> dict[str, ExchangeInfo]:
        infos = {"": ExchangeInfo("", "direct", True, False, False, {})}
        for x in self.exchanges.values():
            infos[x.name] = ExchangeInfo(
                x.name, x.type, x.durable, x.auto_delete, x.internal, dict(x.arguments)
            )
        return infos

    def binding_infos(self) -> list[BindingInfo]:
        return [
            BindingInfo(b.exchange, b.queue, b.routing_key, dict(b.arguments))
            for b in self.bindings
        ]

    def messages(self, queue: str) -> list[SandboxMessage]:
        q = self.queues.get(queue)
        if q is None:
            return []
        self._expire(q)
        return [_view(q.name, m) for m in q.ready]


def _binding_matches(
    exchange_type: str, b: Binding, routing_key: str, headers: Mapping[str, Any] | None
) -> bool:
    if exchange_type == "fanout":
        return True
    if exchange_type == "topic":
        return topic_match(b.routing_key, routing_key)
    if exchange_type == "headers":
        return headers_match(b.arguments, headers)
    return b.routing_key == routing_key


def _view(queue: str, m: Message) -> SandboxMessage:
    return SandboxMessage(queue, m.exchange, m.routing_key, m.body, m.properties, m.redelivered)


def _consumer_info(c: Consumer) -> ConsumerInfo:
    return ConsumerInfo(
        tag=c.tag,
        queue=c.queue,
        channel=c.channel.id,
        connection=c.channel.connection.id,
        no_ack=c.no_ack,
        exclusive=c.exclusive,
        prefetch=c.prefetch,
        unacked=c.unacked,
    )


def _locked_text(queue: str) -> str:
    return (
        f"cannot obtain exclusive access to locked queue '{queue}' in vhost '{VHOST}'. "
        "It could be originally declared on another connection or the exclusive "
        "property value does not match that of the original declaration."
    )


_CODE_NAMES = {
    ACCESS_REFUSED: "ACCESS_REFUSED",
    COMMAND_INVALID: "COMMAND_INVALID",
    NOT_FOUND: "NOT_FOUND",
    RESOURCE_LOCKED: "RESOURCE_LOCKED",
    PRECONDITION_FAILED: "PRECONDITION_FAILED",
    NOT_ALLOWED: "NOT_ALLOWED",
    320: "CONNECTION_FORCED",
}


def _code_name(code: int) -> str:
    return _CODE_NAMES.get(code, str(code))
