"""The anyio layer: the transport protocol on top of the sans-I/O broker model.

Each connection owns a task group; each channel runs one dispatcher task in it
that calls the channel's callbacks in broker order. Model events are posted to
the channel's unbounded memory stream, so the broker never waits on a client
and callbacks always run after the operation that caused them has returned.

A channel plays the client's part too: every method and message is first
encoded as the AMQP backends would send it (``_wire``), and what they would
refuse before sending is refused here the same way (``ConfigError``,
``UnsendableMessage``, a reused consumer tag), with the channel left open.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from pamqp import commands as spec

from ..._log import get_logger
from ...errors import BrokerError, ConfigError, ConnectionLost, UnsendableMessage
from .._sandbox_common import serve_connection
from ..base import (
    EMPTY_PROPERTIES,
    NORMAL_CLOSE_TEXT,
    NOT_ALLOWED,
    REPLY_SUCCESS,
    Backend,
    Channel,
    CloseReason,
    ConnectOptions,
    ExchangeType,
    Message,
    OnCancel,
    OnDelivery,
    OnReturn,
    Properties,
    QueueInfo,
    TransportConnection,
)
from ..url import BrokerURL
from ._broker import SandboxBroker, lookup_broker
from ._model import BrokerModel
from ._state import (
    ChannelClosed,
    ConnectionClosed,
    ConsumerCancelled,
    Deliver,
    Event,
    Return,
)
from ._wire import Unsendable, encode_message, method_arguments

__all__ = ["SandboxBackend", "SandboxChannel", "SandboxConnection"]

log = get_logger("hare_py.transport.sandbox")

T = TypeVar("T")


@dataclass(eq=False)
class _Sync:
    """A marker a waiting operation puts in the dispatch stream (confirm, cancel-ok)."""

    event: anyio.Event = field(default_factory=anyio.Event)
    done: bool = False


@dataclass(frozen=True, slots=True)
class _ConsumerEntry:
    on_delivery: OnDelivery
    on_cancel: OnCancel | None


class SandboxBackend(Backend):
    """Connects ``sandbox://NAME`` URLs to the registered ``SandboxBroker`` NAME."""

    schemes: ClassVar[tuple[str, ...]] = ("sandbox",)

    def connect(
        self, url: BrokerURL, options: ConnectOptions
    ) -> AbstractAsyncContextManager[TransportConnection]:
        return _connect(url, options)


@asynccontextmanager
async def _connect(url: BrokerURL, options: ConnectOptions) -> AsyncIterator[TransportConnection]:
    await anyio.lowlevel.checkpoint()
    broker = lookup_broker(url.host)

    async def finish(conn: SandboxConnection) -> None:
        conn._shutdown()

    async with serve_connection(
        lambda tg: SandboxConnection(broker, tg, options.name), finish
    ) as conn:
        yield conn


class SandboxConnection(TransportConnection):
    """A connection to a ``SandboxBroker``; ``id`` is the broker's connection id."""

    def __init__(self, broker: SandboxBroker, tg: TaskGroup, name: str | None) -> None:
        self._broker = broker
        self._model: BrokerModel = broker.model
        self._tg = tg
        self._reason: CloseReason | None = None
        self._closed = anyio.Event()
        self._channels: dict[int, SandboxChannel] = {}
        self.id = broker.accept_connection(name, self._on_event)

    def __repr__(self) -> str:
        return f"<SandboxConnection {self.id} to {self._broker.url}>"

    @property
    def broker(self) -> SandboxBroker:
        return self._broker

    @property
    def close_reason(self) -> CloseReason | None:
        return self._reason

    def _on_event(self, event: Event) -> None:
        if isinstance(event, ConnectionClosed):
            self._mark_closed(event.reason)
            return
        channel = self._channels.get(event.channel)
        if channel is not None:
            channel._post(event)

    def _mark_closed(self, reason: CloseReason) -> None:
        if self._reason is None:
            self._reason = reason
            self._closed.set()

    def _shutdown(self) -> None:
        """Close in the model (if still open) when the ``async with`` block ends."""
        reason = CloseReason(REPLY_SUCCESS, NORMAL_CLOSE_TEXT, "client")
        self._mark_closed(self._model.close_connection(self.id, reason))
        for channel in self._channels.values():
            channel._mark_closed(self._model.channel_reason(channel._id) or self._reason)
        self._broker.detach(self.id)

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        self._tg.start_soon(fn, *args)

    async def open_channel(
        self, *, on_return: OnReturn | None = None, publisher_confirms: bool = False
    ) -> Channel:
        await anyio.lowlevel.checkpoint()
        if self._reason is not None:
            raise ConnectionLost(f"connection is closed: {self._reason}", code=self._reason.code)
        channel_id, number = self._broker.accept_channel(self.id, publisher_confirms)
        channel = SandboxChannel(self, channel_id, number, on_return, publisher_confirms)
        self._channels[channel_id] = channel
        self._tg.start_soon(channel._dispatch)
        return channel

    async def wait_closed(self) -> CloseReason:
        await self._closed.wait()
        assert self._reason is not None
        return self._reason

    async def close(self) -> None:
        reason = CloseReason(REPLY_SUCCESS, NORMAL_CLOSE_TEXT, "client")
        self._mark_closed(self._model.close_connection(self.id, reason))


class SandboxChannel(Channel):
    """A channel on a ``SandboxConnection``; ``id`` is the broker-wide channel id."""

    def __init__(
        self,
        connection: SandboxConnection,
        channel_id: int,
        number: int,
        on_return: OnReturn | None,
        confirms: bool,
    ) -> None:
        self._conn = connection
        self._model = connection.broker.model
        self._id = channel_id
        self._number = number
        self._on_return = on_return
        self._confirms = confirms
        self._reason: CloseReason | None = None
        self._closed = anyio.Event()
        self._consumers: dict[str, _ConsumerEntry] = {}
        self._waiting: set[_Sync] = set()
        self._send, self._receive = anyio.create_memory_object_stream[Event | _Sync](math.inf)

    def __repr__(self) -> str:
        return f"<SandboxChannel {self._id} (number {self._number}) on connection {self._conn.id}>"

    @property
    def id(self) -> int:
        return self._id

    @property
    def number(self) -> int:
        return self._number

    @property
    def close_reason(self) -> CloseReason | None:
        return self._reason

    # -- dispatch ----------------------------------------------------------------

    def _post(self, item: Event | _Sync) -> None:
        # After the dispatcher has finished the channel is closed: nothing to tell.
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._send.send_nowait(item)

    async def _dispatch(self) -> None:
        with self._receive, self._send:
            async for item in self._receive:
                if isinstance(item, ChannelClosed):
                    self._mark_closed(item.reason)
                    return
                self._handle(item)

    def _handle(self, item: Event | _Sync) -> None:
        if isinstance(item, _Sync):
            item.done = True
            item.event.set()
            self._waiting.discard(item)
        elif isinstance(item, Deliver):
            entry = self._consumers.get(item.delivery.consumer_tag)
            # Messages in flight when the channel closed were requeued by the broker.
            if entry is None or self._reason is not None:
                return
            if item.delay > 0:
                self._conn.spawn(self._deliver_later, item)
            else:
                self._callback("on_delivery", entry.on_delivery, item.delivery)
        elif isinstance(item, Return):
            if self._on_return is not None:
                self._callback("on_return", self._on_return, item.message)
        elif isinstance(item, ConsumerCancelled):
            cancelled = self._consumers.pop(item.consumer_tag, None)
            if cancelled is not None and cancelled.on_cancel is not None:
                self._callback("on_cancel", cancelled.on_cancel, item.consumer_tag, item.reason)

    def _callback(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        # Like the aiormq backend: a failing callback is logged and the
        # channel goes on, so tests behave the same on both.
        try:
            fn(*args)
        except Exception:
            log.exception(
                "sandbox.callback_failed",
                callback=what,
                channel=self._number,
                connection=self._conn.id,
            )

    async def _deliver_later(self, item: Deliver) -> None:
        await anyio.sleep(item.delay)
        entry = self._consumers.get(item.delivery.consumer_tag)
        if entry is not None and self._reason is None:
            self._callback("on_delivery", entry.on_delivery, item.delivery)

    def _mark_closed(self, reason: CloseReason | None) -> None:
        if self._reason is not None or reason is None:
            return
        self._reason = reason
        self._closed.set()
        for sync in self._waiting:
            sync.event.set()
        self._waiting.clear()

    async def _sync(self) -> bool:
        """Wait until everything the broker sent before now was dispatched."""
        sync = _Sync()
        self._waiting.add(sync)
        self._post(sync)
        await sync.event.wait()
        return sync.done

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(self._id, *args, **kwargs)
        except (BrokerError, ConnectionLost):
            # The broker closed the channel (or connection): reflect it at once.
            self._mark_closed(self._model.channel_reason(self._id))
            raise

    def _check_open(self) -> None:
        """``ConnectionLost`` on a closed channel, before anything is encoded (as the backends)."""
        if self._reason is not None or self._model.channel_reason(self._id) is not None:
            raise self._lost("is closed")

    def _lost(self, what: str) -> ConnectionLost:
        reason = self._reason or self._model.channel_reason(self._id)
        assert reason is not None
        return ConnectionLost(f"channel {self._number} {what}: {reason}", code=reason.code)

    # -- the protocol ------------------------------------------------------------

    async def wait_closed(self) -> CloseReason:
        await self._closed.wait()
        assert self._reason is not None
        return self._reason

    async def close(self) -> None:
        if self._reason is not None:
            return
        reason = CloseReason(REPLY_SUCCESS, NORMAL_CLOSE_TEXT, "client")
        self._mark_closed(self._model.close_channel(self._id, reason))

    async def exchange_declare(
        self,
        exchange: str,
        exchange_type: ExchangeType = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        args = method_arguments(
            spec.Exchange.Declare,
            exchange=exchange,
            exchange_type=exchange_type,
            passive=passive,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=dict(arguments) if arguments else None,
        )
        self._call(
            self._model.exchange_declare,
            exchange,
            exchange_type,
            passive=passive,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=args,
        )

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        method_arguments(spec.Exchange.Delete, exchange=exchange, if_unused=if_unused)
        self._call(self._model.exchange_delete, exchange, if_unused=if_unused)

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> QueueInfo:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        args = method_arguments(
            spec.Queue.Declare,
            queue=queue,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=dict(arguments) if arguments else None,
        )
        return self._call(
            self._model.queue_declare,
            queue,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=args,
        )

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        method_arguments(spec.Queue.Delete, queue=queue, if_unused=if_unused, if_empty=if_empty)
        return self._call(self._model.queue_delete, queue, if_unused=if_unused, if_empty=if_empty)

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        args = method_arguments(
            spec.Queue.Bind,
            queue=queue,
            exchange=exchange,
            routing_key=routing_key,
            arguments=dict(arguments) if arguments else None,
        )
        self._call(self._model.queue_bind, queue, exchange, routing_key, args)

    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        args = method_arguments(
            spec.Queue.Unbind,
            queue=queue,
            exchange=exchange,
            routing_key=routing_key,
            arguments=dict(arguments) if arguments else None,
        )
        self._call(self._model.queue_unbind, queue, exchange, routing_key, args)

    async def queue_purge(self, queue: str) -> int:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        method_arguments(spec.Queue.Purge, queue=queue)
        return self._call(self._model.queue_purge, queue)

    async def basic_qos(self, prefetch_count: int, *, global_: bool = False) -> None:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        method_arguments(spec.Basic.Qos, prefetch_count=prefetch_count, global_=global_)
        self._call(self._model.basic_qos, prefetch_count, global_=global_)

    async def basic_consume(
        self,
        queue: str,
        on_delivery: OnDelivery,
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str = "",
        arguments: Mapping[str, Any] | None = None,
        on_cancel: OnCancel | None = None,
    ) -> str:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        if consumer_tag and consumer_tag in self._consumers:
            # Both backends refuse this themselves, so the channel stays open.
            raise BrokerError(
                NOT_ALLOWED, f"NOT_ALLOWED - attempt to reuse consumer tag '{consumer_tag}'"
            )
        args = method_arguments(
            spec.Basic.Consume,
            queue=queue,
            consumer_tag=consumer_tag,
            no_ack=no_ack,
            exclusive=exclusive,
            arguments=dict(arguments) if arguments else None,
        )
        tag = self._call(
            self._model.basic_consume,
            queue,
            no_ack=no_ack,
            exclusive=exclusive,
            consumer_tag=consumer_tag,
            arguments=args,
        )
        # Register before the first delivery can be dispatched.
        self._consumers[tag] = _ConsumerEntry(on_delivery, on_cancel)
        self._model.pump_queue(queue)
        return tag

    async def basic_cancel(self, consumer_tag: str) -> None:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        method_arguments(spec.Basic.Cancel, consumer_tag=consumer_tag)
        self._call(self._model.basic_cancel, consumer_tag)
        # Deliveries sent before cancel-ok still reach the consumer.
        await self._sync()
        self._consumers.pop(consumer_tag, None)

    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: Properties = EMPTY_PROPERTIES,
        mandatory: bool = False,
    ) -> None:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        try:
            data, props = encode_message(
                exchange, routing_key, body, properties, mandatory, self._frame_max
            )
        except Unsendable as exc:
            raise ConfigError(f"cannot publish: {exc.reason}") from None
        if self._route(data, exchange, routing_key, props, mandatory):
            await self._confirmed()

    async def basic_publish_many(
        self, messages: Sequence[Message], *, mandatory: bool = False
    ) -> None:
        """All or nothing for encoding: every message is encoded before any is routed,
        and ``UnsendableMessage`` names the first that cannot be."""
        await anyio.lowlevel.checkpoint()
        self._check_open()
        encoded = []
        for index, m in enumerate(messages):
            try:
                data, props = encode_message(
                    m.exchange, m.routing_key, m.body, m.properties, mandatory, self._frame_max
                )
            except Unsendable as exc:
                raise UnsendableMessage(index, exc.reason) from None
            encoded.append((data, m.exchange, m.routing_key, props))
        for data, exchange, routing_key, props in encoded:
            if not self._route(data, exchange, routing_key, props, mandatory):
                return  # the broker closed the channel: the rest are ignored, as on the wire
        if encoded:
            await self._confirmed()

    @property
    def _frame_max(self) -> int:
        return self._conn.broker.frame_max

    def _route(
        self, body: bytes, exchange: str, routing_key: str, props: Properties, mandatory: bool
    ) -> bool:
        """Hand one message to the broker; False if it refused it without confirms."""
        try:
            self._model.basic_publish(
                self._id,
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=props,
                mandatory=mandatory,
            )
        except BrokerError:
            if not self._confirms:
                return False  # the client learns from the channel close, later
            self._mark_closed(self._model.channel_reason(self._id))
            raise
        return True

    async def _confirmed(self) -> None:
        """Wait for the confirms of what was published, in confirm mode."""
        if self._confirms and not await self._sync():
            # The channel closed before the confirm. A broker close refuses the
            # publish; any other close loses it (as the aiormq backend reports it).
            reason = self._reason
            assert reason is not None
            if reason.by == "broker" and reason.code:
                raise BrokerError(reason.code, reason.text)
            raise self._lost("closed before the broker confirmed the message")

    async def basic_ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        await anyio.lowlevel.checkpoint()
        method_arguments(spec.Basic.Ack, delivery_tag=delivery_tag, multiple=multiple)
        self._ack_call(self._model.basic_ack, delivery_tag, multiple=multiple)

    async def basic_nack(
        self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True
    ) -> None:
        await anyio.lowlevel.checkpoint()
        method_arguments(
            spec.Basic.Nack, delivery_tag=delivery_tag, multiple=multiple, requeue=requeue
        )
        self._ack_call(self._model.basic_nack, delivery_tag, multiple=multiple, requeue=requeue)

    async def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> None:
        await anyio.lowlevel.checkpoint()
        method_arguments(spec.Basic.Reject, delivery_tag=delivery_tag, requeue=requeue)
        self._ack_call(self._model.basic_reject, delivery_tag, requeue=requeue)

    def _ack_call(self, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        # Acks get no reply in AMQP: a bad tag closes the channel asynchronously.
        with suppress(BrokerError):
            fn(self._id, *args, **kwargs)
