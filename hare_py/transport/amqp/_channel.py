"""A hare_py ``Channel`` on the anyio driver.

Rules this module keeps:

- Synchronous methods are pipelined: each call queues its method and waits
  for its reply in a FIFO, because the broker answers a channel's methods in
  order. A caller cancelled while waiting leaves its entry behind, so the
  late reply is swallowed there instead of being taken for the next call's
  (no need to close the channel, unlike aiormq).
- A publish without confirms only queues its frames (and waits only when too
  much is queued for the socket); with confirms it waits for the broker's
  ack. Returns, deliveries and consumer cancels are handed on synchronously
  from the reader, in broker order, so a return always precedes its confirm.
- A message that cannot be decoded (``ContentReceived.undecodable``) is
  logged once, as ``amqp.properties_undecodable`` or ``amqp.body_too_large``,
  and handed on like any other, with its reason in ``Delivery.undecodable``:
  the consumer rejects it; the connection carries on.
- A batch publish is all or nothing: ``basic_publish_many`` encodes every
  message before it queues any, and names the one it cannot send
  (``UnsendableMessage.index``).
- The close reason is settled once, by the first cause seen: our close, the
  broker's ``channel.close`` or the connection's end. Everything still waiting
  then fails: ``BrokerError`` with the broker's code when it closed the channel,
  ``ConnectionLost`` otherwise.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from pamqp import commands as spec
from pamqp.base import Frame

from ..._log import get_logger
from ...errors import BrokerError, ConfigError, ConnectionLost, HareError, UnsendableMessage
from .._amqp_common import CLOSE_TIMEOUT
from ..base import (
    EMPTY_PROPERTIES,
    NORMAL_CLOSE_TEXT,
    NOT_ALLOWED,
    REPLY_SUCCESS,
    Channel,
    CloseReason,
    Delivery,
    ExchangeType,
    Message,
    OnCancel,
    OnDelivery,
    OnReturn,
    Properties,
    QueueInfo,
    ReturnedMessage,
)
from . import _protocol as p

if TYPE_CHECKING:
    from ._connection import AmqpConnection

__all__ = ["AmqpChannel"]

log = get_logger("hare_py.transport.amqp")
_F = TypeVar("_F", bound=Frame)


def _build(method: type[_F], *args: Any, **fields: Any) -> _F:
    """The method frame; ``ConfigError`` for a value pamqp refuses (a bad queue name, ...)."""
    try:
        return method(*args, **fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {method.name}: {exc}") from None


class _Waiter:
    """One reply (or confirm) someone waits for."""

    __slots__ = ("abandoned", "done", "error", "expects", "on_late", "result")

    def __init__(self, expects: tuple[type[Frame], ...] = ()) -> None:
        self.expects = expects
        self.done = anyio.Event()
        self.result: Frame | None = None
        self.error: HareError | None = None
        self.abandoned = False
        self.on_late: Any = None  # called with the reply when it comes after a cancel

    def settle(self, result: Frame | None = None, error: HareError | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()

    async def wait(self) -> Frame | None:
        try:
            await self.done.wait()
        except BaseException:
            self.abandoned = True
            raise
        if self.error is not None:
            raise self.error
        return self.result


class AmqpChannel(Channel):
    """One channel of an ``AmqpConnection``; see the module docstring."""

    def __init__(self, connection: AmqpConnection, number: int, on_return: OnReturn | None) -> None:
        self._connection = connection
        self._protocol = connection.protocol
        self._number = number
        self._on_return = on_return
        self._close_reason: CloseReason | None = None
        self._closed = anyio.Event()
        self._opened = _Waiter()
        self._calls: deque[_Waiter] = deque()
        self._confirms: OrderedDict[int, _Waiter] | None = None
        self._next_tag = 1
        self._deliveries: dict[str, OnDelivery] = {}
        self._cancels: dict[str, OnCancel] = {}

    def __repr__(self) -> str:
        state = "open" if self._close_reason is None else f"closed: {self._close_reason}"
        return f"<AmqpChannel #{self._number} {state}>"

    @property
    def number(self) -> int:
        return self._number

    @property
    def close_reason(self) -> CloseReason | None:
        return self._close_reason

    # -- from the reader ---------------------------------------------------------

    def on_opened(self) -> None:
        self._opened.settle()

    def on_closed(self, reason: CloseReason) -> None:
        if self._close_reason is None:
            self._close_reason = reason
            log.debug("amqp.channel_closed", channel=self._number, reason=str(reason))
        self._closed.set()
        error = self._error_for_waiters()
        self._opened.settle(error=error)
        waiters = list(self._calls)
        if self._confirms:
            waiters += self._confirms.values()
            self._confirms.clear()
        self._calls.clear()
        for waiter in waiters:
            waiter.settle(error=error)
        self._deliveries.clear()
        self._cancels.clear()

    def _error_for_waiters(self) -> HareError:
        reason = self._close_reason
        assert reason is not None
        if reason.by == "broker" and reason.code:
            return BrokerError(reason.code, reason.text)
        return ConnectionLost(f"channel {self._number} closed: {reason}", code=reason.code)

    def on_method(self, method: Frame) -> None:
        if isinstance(method, spec.Basic.Ack | spec.Basic.Nack):
            self._on_confirm(method)
        elif isinstance(method, spec.Basic.Cancel):
            self._on_broker_cancel(method)
        elif isinstance(method, spec.Channel.Flow):
            self._protocol.send_method(self._number, spec.Channel.FlowOk(method.active))
        elif self._calls:
            waiter = self._calls.popleft()
            if not isinstance(method, waiter.expects):
                self._calls.appendleft(waiter)  # on_closed fails it with the others
                self._connection._broken(
                    f"{method.name} on channel {self._number}, "
                    f"expected {' or '.join(t.name for t in waiter.expects)}"
                )
                return
            if waiter.abandoned:
                if waiter.on_late is not None:
                    waiter.on_late(method)
            else:
                waiter.settle(method)
        else:
            self._connection._broken(f"unexpected {method.name} on channel {self._number}")

    def on_content(self, event: p.ContentReceived) -> None:
        method = event.method
        if event.undecodable is not None:
            self._log_undecodable(event)
        if isinstance(method, spec.Basic.Deliver):
            callback = self._deliveries.get(method.consumer_tag or "")
            if callback is None:
                return  # a consumer we cancelled: its unacked messages wait for the channel
            try:
                callback(
                    Delivery(
                        event.body,
                        event.properties,
                        method.exchange,
                        method.routing_key or "",
                        method.delivery_tag or 0,
                        method.consumer_tag or "",
                        bool(method.redelivered),
                        event.undecodable,
                    )
                )
            except Exception:
                log.exception(
                    "amqp.callback_failed",
                    callback="on_delivery",
                    channel=self._number,
                    consumer_tag=method.consumer_tag,
                )
        elif isinstance(method, spec.Basic.Return):
            if self._on_return is None:
                return
            try:
                self._on_return(
                    ReturnedMessage(
                        event.body,
                        event.properties,
                        method.exchange,
                        method.routing_key or "",
                        method.reply_code or 0,
                        method.reply_text,
                    )
                )
            except Exception:
                log.exception("amqp.callback_failed", callback="on_return", channel=self._number)

    def _log_undecodable(self, event: p.ContentReceived) -> None:
        method = event.method
        log.warning(
            "amqp.body_too_large" if event.dropped else "amqp.properties_undecodable",
            channel=self._number,
            method=method.name,
            exchange=method.exchange,
            routing_key=method.routing_key,
            delivery_tag=getattr(method, "delivery_tag", None),
            consumer_tag=getattr(method, "consumer_tag", None),
            redelivered=getattr(method, "redelivered", None),
            body_size=event.dropped or len(event.body),
            reason=event.undecodable,
        )

    def _on_confirm(self, method: spec.Basic.Ack | spec.Basic.Nack) -> None:
        confirms = self._confirms
        if confirms is None:
            self._connection._broken(f"{method.name} on channel {self._number} without confirms")
            return
        tag = method.delivery_tag or 0
        error = (
            BrokerError(0, "basic.nack: the broker did not take the message")
            if isinstance(method, spec.Basic.Nack)
            else None
        )
        if method.multiple:
            while confirms and next(iter(confirms)) <= tag:
                confirms.popitem(last=False)[1].settle(error=error)
        else:
            waiter = confirms.pop(tag, None)
            if waiter is not None:
                waiter.settle(error=error)

    def _on_broker_cancel(self, method: spec.Basic.Cancel) -> None:
        tag = method.consumer_tag or ""
        if not method.nowait:
            self._protocol.send_method(self._number, spec.Basic.CancelOk(tag))
        self._deliveries.pop(tag, None)
        callback = self._cancels.pop(tag, None)
        if callback is None:
            return
        reason = CloseReason(0, "basic.cancel: the broker cancelled the consumer", "broker")
        try:
            callback(tag, reason)
        except Exception:
            log.exception(
                "amqp.callback_failed", callback="on_cancel", channel=self._number, consumer_tag=tag
            )

    # -- plumbing ------------------------------------------------------------------

    def _check_open(self) -> None:
        reason = self._close_reason
        if reason is not None:
            raise ConnectionLost(f"channel {self._number} is closed: {reason}", code=reason.code)
        self._connection.check_open()

    def _send(self, method: Frame) -> None:
        self._check_open()
        try:
            self._protocol.send_method(self._number, method)
        except (TypeError, ValueError) as exc:  # pamqp refused a value
            raise ConfigError(f"cannot send {method.name}: {exc}") from None
        self._connection.wake_writer()

    async def _call(self, method: Frame, *expects: type[Frame]) -> Frame:
        """Send a synchronous method and wait for its reply."""
        self._send(method)
        waiter = _Waiter(expects)
        self._calls.append(waiter)
        result = await waiter.wait()
        assert result is not None
        return result

    async def wait_opened(self) -> None:
        await self._opened.wait()

    async def select_confirms(self) -> None:
        await self._call(spec.Confirm.Select(), spec.Confirm.SelectOk)
        self._confirms = OrderedDict()

    async def wait_closed(self) -> CloseReason:
        await self._closed.wait()
        assert self._close_reason is not None
        return self._close_reason

    async def close(self) -> None:
        if self._closed.is_set():
            return
        if self._close_reason is None:
            self._close_reason = CloseReason(REPLY_SUCCESS, NORMAL_CLOSE_TEXT, "client")
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
            if self._connection.close_reason is None:
                try:
                    self._protocol.close_channel(self._number)
                except p.ProtocolError:
                    pass
                else:
                    self._connection.wake_writer()
                    await self._closed.wait()
        if not self._closed.is_set():
            self._connection.channels.pop(self._number, None)
            self.on_closed(self._close_reason)

    # -- operations ------------------------------------------------------------------

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
        await self._call(
            _build(
                spec.Exchange.Declare,
                exchange=exchange,
                exchange_type=exchange_type,
                passive=passive,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=dict(arguments) if arguments else None,
            ),
            spec.Exchange.DeclareOk,
        )

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        await self._call(
            _build(spec.Exchange.Delete, exchange=exchange, if_unused=if_unused),
            spec.Exchange.DeleteOk,
        )

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
        ok = await self._call(
            _build(
                spec.Queue.Declare,
                queue=queue,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=dict(arguments) if arguments else None,
            ),
            spec.Queue.DeclareOk,
        )
        assert isinstance(ok, spec.Queue.DeclareOk)
        return QueueInfo(ok.queue or queue, ok.message_count or 0, ok.consumer_count or 0)

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        ok = await self._call(
            _build(spec.Queue.Delete, queue=queue, if_unused=if_unused, if_empty=if_empty),
            spec.Queue.DeleteOk,
        )
        assert isinstance(ok, spec.Queue.DeleteOk)
        return ok.message_count or 0

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._call(
            _build(
                spec.Queue.Bind,
                queue=queue,
                exchange=exchange,
                routing_key=routing_key,
                arguments=dict(arguments) if arguments else None,
            ),
            spec.Queue.BindOk,
        )

    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._call(
            _build(
                spec.Queue.Unbind,
                queue=queue,
                exchange=exchange,
                routing_key=routing_key,
                arguments=dict(arguments) if arguments else None,
            ),
            spec.Queue.UnbindOk,
        )

    async def queue_purge(self, queue: str) -> int:
        ok = await self._call(_build(spec.Queue.Purge, queue=queue), spec.Queue.PurgeOk)
        assert isinstance(ok, spec.Queue.PurgeOk)
        return ok.message_count or 0

    async def basic_qos(self, prefetch_count: int, *, global_: bool = False) -> None:
        await self._call(
            _build(spec.Basic.Qos, prefetch_count=prefetch_count, global_=global_), spec.Basic.QosOk
        )

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
        tag = consumer_tag or f"hare.ctag-{self._number}.{uuid.uuid4().hex}"
        self._check_open()
        if tag in self._deliveries:
            raise BrokerError(NOT_ALLOWED, f"NOT_ALLOWED - attempt to reuse consumer tag '{tag}'")
        method = _build(
            spec.Basic.Consume,
            queue=queue,
            consumer_tag=tag,
            no_ack=no_ack,
            exclusive=exclusive,
            arguments=dict(arguments) if arguments else None,
        )
        # Registered before basic.consume goes out: deliveries can follow
        # consume-ok in the same read.
        self._deliveries[tag] = on_delivery
        if on_cancel is not None:
            self._cancels[tag] = on_cancel
        waiter = _Waiter((spec.Basic.ConsumeOk,))
        try:
            self._send(method)
            self._calls.append(waiter)
            waiter.on_late = lambda _: self._cancel_abandoned(tag)
            await waiter.wait()
        except BaseException:
            self._deliveries.pop(tag, None)
            self._cancels.pop(tag, None)
            raise
        return tag

    def _cancel_abandoned(self, tag: str) -> None:
        """A consume whose caller gave up succeeded after all: cancel it."""
        if self._close_reason is None:
            self._protocol.send_method(self._number, spec.Basic.Cancel(tag, nowait=True))
            self._connection.wake_writer()

    async def basic_cancel(self, consumer_tag: str) -> None:
        self._cancels.pop(consumer_tag, None)
        try:
            await self._call(_build(spec.Basic.Cancel, consumer_tag), spec.Basic.CancelOk)
        finally:
            # Deliveries already on the wire before cancel-ok are still handed on.
            self._deliveries.pop(consumer_tag, None)

    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: Properties = EMPTY_PROPERTIES,
        mandatory: bool = False,
    ) -> None:
        confirm = self._publish(exchange, routing_key, body, properties, mandatory)
        self._connection.wake_writer()
        if confirm is not None:
            await confirm.wait()
        else:
            await self._connection.wait_writable()

    async def basic_publish_many(
        self, messages: Sequence[Message], *, mandatory: bool = False
    ) -> None:
        """All or nothing: ``UnsendableMessage`` names a message that cannot be encoded,
        and then nothing of the batch was queued."""
        self._check_open()
        try:
            self._protocol.publish_many(self._number, messages, mandatory)
        except p.UnencodableMessage as exc:
            raise UnsendableMessage(exc.index, exc.reason) from None
        self._connection.wake_writer()
        confirms = self._confirms
        if confirms is None:
            await self._connection.wait_writable()
            return
        waiters = []
        for _ in messages:
            waiter = confirms[self._next_tag] = _Waiter()
            self._next_tag += 1
            waiters.append(waiter)
        for waiter in waiters:
            await waiter.wait()

    def _publish(
        self, exchange: str, routing_key: str, body: bytes, properties: Properties, mandatory: bool
    ) -> _Waiter | None:
        """Queue one publish; the confirm to wait for when in confirm mode."""
        self._check_open()
        try:
            self._protocol.publish(
                self._number, exchange, routing_key, bytes(body), properties, mandatory
            )
        except (TypeError, ValueError, AttributeError) as exc:  # a value AMQP cannot carry
            raise ConfigError(f"cannot publish: {exc}") from None
        confirms = self._confirms
        if confirms is None:
            return None
        waiter = _Waiter()
        confirms[self._next_tag] = waiter
        self._next_tag += 1
        return waiter

    async def basic_ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        self._send(_build(spec.Basic.Ack, delivery_tag=delivery_tag, multiple=multiple))

    async def basic_nack(
        self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True
    ) -> None:
        self._send(
            _build(spec.Basic.Nack, delivery_tag=delivery_tag, multiple=multiple, requeue=requeue)
        )

    async def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> None:
        self._send(_build(spec.Basic.Reject, delivery_tag=delivery_tag, requeue=requeue))
