"""A hare_py ``Channel`` over an aiormq channel.

Rules this module keeps:

- Deliveries, returns and consumer cancels reach the user's callbacks from the
  channel's frame reader, synchronously and in broker order (``_RawChannel``
  overrides the aiormq hooks that would otherwise spawn a task per delivery or
  drop returns that have no publisher confirm to attach to).
- Publishing adds nothing to the message (aiormq's ``basic_publish`` would set
  a random ``message_id``) and, without confirms, waits only for the write.
  Frames are encoded by hare_py's codec (``transport._amqp_codec``), not pamqp: it
  refuses what pamqp would silently change (header keys over 128 bytes) and a
  content header over ``frame_max``, which a broker answers by closing the
  whole connection. A batch is all or nothing: every message is encoded
  before any is queued, and ``UnsendableMessage`` names the one that cannot be.
- Properties come from the ``HeaderStore`` (decoded by hare_py's bounded
  codec, see ``_frames``), never from pamqp. A message whose properties do not
  decode, or whose body is over ``max_body_size``, is logged once and handed
  on with its reason in ``Delivery.undecodable``, for the consumer to reject.
- Every failure is translated by ``_errors`` here, with the channel's close
  reason when it is known; the close reason is settled once, by the first
  cause seen: our own close, the broker's ``channel.close``, the connection.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from aiormq import Channel as AiormqChannelBase
from aiormq.abc import ChannelFrame, DeliveredMessage
from aiormq.exceptions import ChannelClosed, ChannelInvalidStateError
from pamqp import commands as spec
from pamqp.header import ContentHeader

from ..._log import get_logger
from ...errors import BrokerError, ConfigError, ConnectionLost, UnsendableMessage
from .._amqp_codec import encode_publish
from .._amqp_common import CLOSE_TIMEOUT
from ..base import (
    CHANNEL_ERROR,
    EMPTY_PROPERTIES,
    NORMAL_CLOSE_TEXT,
    NOT_ALLOWED,
    REPLY_SUCCESS,
    Channel,
    CloseReason,
    ExchangeType,
    Message,
    OnCancel,
    OnDelivery,
    OnReturn,
    Properties,
    QueueInfo,
)
from ._convert import to_delivery, to_returned
from ._errors import operation_error
from ._frames import HeaderStore, Incoming

if TYPE_CHECKING:
    from ._connection import AiormqConnection

__all__ = ["AiormqChannel"]

log = get_logger("hare_py.transport.aiormq")


OnMessage = Callable[[DeliveredMessage, Incoming], None]


class _RawChannel(AiormqChannelBase):
    """aiormq's channel with hare_py's callbacks wired into its frame reader."""

    def __init__(self, *args: Any, headers: HeaderStore, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hare_headers = headers
        self.hare_deliveries: dict[str, OnMessage] = {}
        self.hare_on_return: OnMessage | None = None
        self.hare_on_broker_close: Callable[[int, str], None] | None = None
        self.hare_publish_lock = asyncio.Lock()

    async def _read_message(
        self, frame: spec.Basic.Deliver | spec.Basic.Return
    ) -> tuple[DeliveredMessage, Incoming]:
        header = await self._get_frame()
        if not isinstance(header, ContentHeader):
            raise ValueError(f"expected a content header after {frame.name}, got {header!r}")
        incoming = self.hare_headers.take(self.number, header.weight)
        return await self._read_content(frame, header), incoming

    async def _on_deliver_frame(self, frame: spec.Basic.Deliver) -> None:
        message, incoming = await self._read_message(frame)
        callback = self.hare_deliveries.get(frame.consumer_tag or "")
        if callback is not None:
            callback(message, incoming)

    async def _on_return_frame(self, frame: spec.Basic.Return) -> None:
        message, incoming = await self._read_message(frame)
        if self.hare_on_return is not None:
            self.hare_on_return(message, incoming)

    async def _on_close_frame(self, frame: spec.Channel.Close) -> None:
        if self.hare_on_broker_close is not None:
            self.hare_on_broker_close(frame.reply_code or 0, frame.reply_text or "")
        await super()._on_close_frame(frame)

    async def hare_publish(self, payload: bytes, count: int) -> list[asyncio.Future[Any]]:
        """Queue ``count`` encoded publishes as one write; the futures to wait for:
        one confirm per message with publisher confirms, else the write's.

        The publish lock keeps delivery tags in write order without waiting
        behind the RPC lock, which aiormq holds for a whole round trip. One
        ``send()`` for a batch: aiormq writes each queued frame set separately.
        """
        async with self.hare_publish_lock:
            if self.is_closed:
                raise ChannelInvalidStateError(f"channel {self.number} is closed")
            first = self.delivery_tag + 1
            self.delivery_tag += count
            tags = range(first, first + count)
            confirmations: list[asyncio.Future[Any]] = []
            if self.publisher_confirms:
                for tag in tags:
                    confirmations.append(self.create_future())
                    self.confirmations[tag] = confirmations[-1]
            written = self.create_future()
            try:
                await self.write_queue.put(
                    ChannelFrame(payload=payload, should_close=False, drain_future=written)
                )
            except BaseException:
                # The broker never saw them: give their sequence numbers back.
                self.delivery_tag -= count
                for tag in tags:
                    self.confirmations.pop(tag, None)
                for future in (*confirmations, written):
                    future.cancel()
                raise
        return confirmations or [written]


class AiormqChannel(Channel):
    """A ``Channel`` backed by one aiormq channel; see the module docstring."""

    def __init__(
        self,
        raw: _RawChannel,
        connection: AiormqConnection,
        on_return: OnReturn | None,
    ) -> None:
        self._raw = raw
        self._connection = connection
        self._on_return = on_return
        self._close_reason: CloseReason | None = None
        self._closed = anyio.Event()
        self._cancel_callbacks: dict[str, OnCancel] = {}
        raw.hare_on_return = self._returned if on_return is not None else None
        raw.hare_on_broker_close = self._broker_closed
        raw.on_consumer_cancel_callbacks.add(self._consumer_cancelled)
        raw.closing.add_done_callback(self._raw_closed)

    def __repr__(self) -> str:
        state = "open" if self._close_reason is None else f"closed: {self._close_reason}"
        return f"<AiormqChannel #{self.number} {state}>"

    @property
    def number(self) -> int:
        return self._raw.number

    @property
    def close_reason(self) -> CloseReason | None:
        return self._close_reason

    # -- close events ------------------------------------------------------

    def _settle(self, reason: CloseReason) -> None:
        if self._close_reason is None:
            self._close_reason = reason
            self._closed.set()
            log.debug("amqp.channel_closed", channel=self.number, reason=str(reason))

    def _broker_closed(self, code: int, text: str) -> None:
        self._settle(CloseReason(code, text, "broker"))

    def _raw_closed(self, _: asyncio.Future[Any]) -> None:
        if self._close_reason is not None:
            return
        connection_reason = self._connection.settle_if_closed()
        if connection_reason is not None:
            self._settle(CloseReason(connection_reason.code, connection_reason.text, "connection"))
        else:
            # aiormq closes a channel itself after an operation was cancelled
            # mid-call, so that a late reply cannot be taken for another's.
            self._settle(CloseReason(CHANNEL_ERROR, "closed after a cancelled operation", "client"))

    async def wait_closed(self) -> CloseReason:
        await self._closed.wait()
        assert self._close_reason is not None
        return self._close_reason

    async def close(self) -> None:
        if self._close_reason is not None:
            return
        self._settle(CloseReason(REPLY_SUCCESS, NORMAL_CLOSE_TEXT, "client"))
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self._raw.close(ChannelClosed(REPLY_SUCCESS, NORMAL_CLOSE_TEXT))
            except Exception as exc:  # never raises: the channel is gone for us
                log.debug("amqp.channel_close_failed", channel=self.number, error=repr(exc))

    # -- callbacks from the frame reader -------------------------------------

    def _returned(self, message: DeliveredMessage, incoming: Incoming) -> None:
        frame = message.delivery
        if self._on_return is None or not isinstance(frame, spec.Basic.Return):
            return
        if incoming.undecodable is not None:
            self._log_undecodable(frame, incoming)
        returned = to_returned(frame, incoming.properties, message.body)
        try:
            self._on_return(returned)
        except Exception:
            log.exception("amqp.callback_failed", callback="on_return", channel=self.number)

    def _log_undecodable(
        self, method: spec.Basic.Deliver | spec.Basic.Return, incoming: Incoming
    ) -> None:
        log.warning(
            "amqp.body_too_large" if incoming.dropped else "amqp.properties_undecodable",
            channel=self.number,
            method=method.name,
            exchange=method.exchange,
            routing_key=method.routing_key,
            delivery_tag=getattr(method, "delivery_tag", None),
            consumer_tag=getattr(method, "consumer_tag", None),
            redelivered=getattr(method, "redelivered", None),
            body_size=incoming.dropped,
            reason=incoming.undecodable,
        )

    def _consumer_cancelled(self, frame: spec.Basic.Cancel) -> None:
        tag = frame.consumer_tag or ""
        self._raw.hare_deliveries.pop(tag, None)
        callback = self._cancel_callbacks.pop(tag, None)
        if callback is None:
            return
        reason = CloseReason(0, "basic.cancel: the broker cancelled the consumer", "broker")
        try:
            callback(tag, reason)
        except Exception:
            log.exception(
                "amqp.callback_failed", callback="on_cancel", channel=self.number, consumer_tag=tag
            )

    # -- operations ----------------------------------------------------------

    @asynccontextmanager
    async def _translate(self) -> AsyncIterator[None]:
        """Raise the hare_py error for anything aiormq raises; see ``_errors``."""
        if self._close_reason is not None:
            reason = self._close_reason
            raise ConnectionLost(f"channel {self.number} is closed: {reason}", code=reason.code)
        try:
            yield
        except BaseException as exc:
            error = operation_error(exc, self._close_reason)
            if error is None or error is exc:
                raise
            raise error from exc

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
        async with self._translate():
            await self._raw.exchange_declare(
                exchange,
                exchange_type=exchange_type,
                passive=passive,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=dict(arguments) if arguments else None,
            )

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        async with self._translate():
            await self._raw.exchange_delete(exchange, if_unused=if_unused)

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
        async with self._translate():
            ok = await self._raw.queue_declare(
                queue,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=dict(arguments) if arguments else None,
            )
        return QueueInfo(ok.queue or queue, ok.message_count or 0, ok.consumer_count or 0)

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        async with self._translate():
            ok = await self._raw.queue_delete(queue, if_unused=if_unused, if_empty=if_empty)
        return ok.message_count or 0

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        async with self._translate():
            await self._raw.queue_bind(
                queue, exchange, routing_key, arguments=dict(arguments) if arguments else None
            )

    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        async with self._translate():
            await self._raw.queue_unbind(
                queue, exchange, routing_key, arguments=dict(arguments) if arguments else None
            )

    async def queue_purge(self, queue: str) -> int:
        async with self._translate():
            ok = await self._raw.queue_purge(queue)
        return ok.message_count or 0

    async def basic_qos(self, prefetch_count: int, *, global_: bool = False) -> None:
        async with self._translate():
            await self._raw.basic_qos(prefetch_count=prefetch_count, global_=global_)

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
        tag = consumer_tag or f"hare.ctag-{self.number}.{uuid.uuid4().hex}"

        def deliver(message: DeliveredMessage, incoming: Incoming) -> None:
            frame = message.delivery
            if not isinstance(frame, spec.Basic.Deliver):
                return
            if incoming.undecodable is not None:
                self._log_undecodable(frame, incoming)
            try:
                on_delivery(to_delivery(frame, incoming, message.body))
            except Exception:
                log.exception(
                    "amqp.callback_failed",
                    callback="on_delivery",
                    channel=self.number,
                    consumer_tag=tag,
                )

        async def unused(_: DeliveredMessage) -> None:
            """aiormq wants a consumer callback; ``deliver`` is called instead."""

        async with self._translate():
            if tag in self._raw.hare_deliveries:
                raise BrokerError(
                    NOT_ALLOWED, f"NOT_ALLOWED - attempt to reuse consumer tag '{tag}'"
                )
            # Registered before basic.consume goes out: deliveries can follow
            # consume-ok in the same read.
            self._raw.hare_deliveries[tag] = deliver
            if on_cancel is not None:
                self._cancel_callbacks[tag] = on_cancel
            try:
                await self._raw.basic_consume(
                    queue,
                    unused,
                    no_ack=no_ack,
                    exclusive=exclusive,
                    consumer_tag=tag,
                    arguments=dict(arguments) if arguments else None,
                )
            except BaseException:
                self._raw.hare_deliveries.pop(tag, None)
                self._cancel_callbacks.pop(tag, None)
                raise
        return tag

    async def basic_cancel(self, consumer_tag: str) -> None:
        self._cancel_callbacks.pop(consumer_tag, None)
        async with self._translate():
            await self._raw.basic_cancel(consumer_tag)
        # Deliveries already on the wire before cancel-ok are still handed on.
        self._raw.hare_deliveries.pop(consumer_tag, None)

    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: Properties = EMPTY_PROPERTIES,
        mandatory: bool = False,
    ) -> None:
        try:
            payload = self._encode(Message(exchange, routing_key, body, properties), mandatory)
        except (TypeError, ValueError, AttributeError) as exc:  # a value AMQP cannot carry
            raise ConfigError(f"cannot publish: {exc}") from None
        async with self._translate():
            for pending in await self._raw.hare_publish(payload, 1):
                await self._settle_publish(pending)

    async def basic_publish_many(
        self, messages: Sequence[Message], *, mandatory: bool = False
    ) -> None:
        """All or nothing: ``UnsendableMessage`` names a message that cannot be encoded,
        and then nothing of the batch was queued."""
        payloads: list[bytes] = []
        for index, message in enumerate(messages):
            try:
                payloads.append(self._encode(message, mandatory))
            except (TypeError, ValueError, AttributeError) as exc:
                raise UnsendableMessage(index, str(exc)) from None
        if not payloads:
            return
        async with self._translate():
            for pending in await self._raw.hare_publish(b"".join(payloads), len(payloads)):
                await self._settle_publish(pending)

    def _encode(self, message: Message, mandatory: bool) -> bytes:
        """One publish's frames; ``ValueError`` (or ``TypeError``) for what AMQP cannot carry."""
        frames = encode_publish(
            self.number,
            message.exchange,
            message.routing_key,
            mandatory,
            bytes(message.body),
            message.properties,
            self._raw.connection.connection_tune.frame_max,
        )
        return b"".join(frames)

    async def _settle_publish(self, pending: asyncio.Future[Any]) -> None:
        """Wait for a publish's write (or confirm) and report how it ended."""
        try:
            await pending
        except BaseException as exc:
            reason = self._close_reason
            if reason is None or isinstance(exc, asyncio.CancelledError):
                raise
            # The confirm was cut short by the channel's close: when the
            # broker closed it, it refused the publish (404 for a missing
            # exchange, 403 for an internal one); otherwise it is lost.
            if reason.by == "broker" and reason.code:
                raise BrokerError(reason.code, reason.text) from exc
            raise ConnectionLost(
                f"channel {self.number} closed before the broker confirmed the message: {reason}",
                code=reason.code,
            ) from exc

    # Acks wait for the write (aiormq's default): a connection closed right
    # after would otherwise drop frames still queued for its writer.
    async def basic_ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        async with self._translate():
            await self._raw.basic_ack(delivery_tag, multiple=multiple)

    async def basic_nack(
        self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True
    ) -> None:
        async with self._translate():
            await self._raw.basic_nack(delivery_tag, multiple=multiple, requeue=requeue, wait=False)

    async def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> None:
        async with self._translate():
            await self._raw.basic_reject(delivery_tag, requeue=requeue)
