"""The hare convention (the default), and RabbitMQ's direct reply-to.

Requests go to the exchange given (``""``: the default exchange, routing by
queue name) with ``reply_to`` and ``correlation_id``; replies come back
through the default exchange to the ``reply_to`` queue with the same
``correlation_id``. An error reply carries the headers ``x-error-type`` and
``x-error-message``, and says it again in its content type,
``application/vnd.hare-py.error; type=KeyError``, with the message as its
body: RabbitMQ drops AMQP 0-9-1 headers on the way to an AMQP 1.0 peer, and
the content type is what both protocols carry.

Reply queues:

- ``hare()``: an exclusive, server-named queue, new on every channel (as
  Hare.RPC.Client does). A channel loss loses the replies in flight.
- ``hare(lasting_queue="name")``: a client-named, non-exclusive queue with
  ``x-expires``, consumed exclusively (only this instance reads it) and
  redeclared after a reconnect, so replies to requests in flight across a short
  connection loss are still delivered (nameko's approach).
- ``direct_reply_to()``: RabbitMQ's ``amq.rabbitmq.reply-to`` pseudo-queue,
  consumed without acks on the channel that publishes; nothing is declared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError, RemoteError
from ..transport._amqp_common import DIRECT_REPLY_TO
from ..transport.base import Channel, Delivery, OnCancel, OnDelivery, Properties
from .base import (
    ClientConvention,
    Convention,
    Incoming,
    IncomingReply,
    Outgoing,
    ServerConvention,
    ServerOptions,
)

__all__ = [
    "DIRECT_REPLY_TO",
    "ERROR_CONTENT_TYPE",
    "ERROR_MESSAGE_HEADER",
    "ERROR_TYPE_HEADER",
    "HareClient",
    "HareServer",
    "direct_reply_to",
    "hare",
]

ERROR_TYPE_HEADER = "x-error-type"
ERROR_MESSAGE_HEADER = "x-error-message"
ERROR_CONTENT_TYPE = "application/vnd.hare-py.error"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ERROR_PARAM = re.compile(r'\s*;\s*type=(?:(?P<token>[^\s;"]+)|"(?P<quoted>(?:[^"\\]|\\.)*)")')


def error_headers(error: BaseException) -> dict[str, str]:
    """The error-reply headers for ``error`` (a RemoteError keeps its remote type)."""
    if isinstance(error, RemoteError):
        return {ERROR_TYPE_HEADER: error.type, ERROR_MESSAGE_HEADER: error.message}
    return {ERROR_TYPE_HEADER: type(error).__name__, ERROR_MESSAGE_HEADER: str(error)}


def error_content_type(error: BaseException) -> str:
    """``application/vnd.hare-py.error; type=NAME`` for an error reply (NAME quoted
    when it is not a MIME token)."""
    kind = (error.type if isinstance(error, RemoteError) else type(error).__name__)[:200]
    if not _TOKEN.fullmatch(kind):
        kind = '"' + kind.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{ERROR_CONTENT_TYPE}; type={kind}"


def error_of(
    headers: Mapping[str, Any], content_type: str | None = None, body: bytes = b""
) -> RemoteError | None:
    """The RemoteError an error reply describes, by its headers or its content type."""
    kind = headers.get(ERROR_TYPE_HEADER)
    if kind is not None:
        return RemoteError(str(kind), str(headers.get(ERROR_MESSAGE_HEADER, "")))
    if content_type is None or not content_type.startswith(ERROR_CONTENT_TYPE):
        return None
    found = _ERROR_PARAM.match(content_type[len(ERROR_CONTENT_TYPE) :])
    if found is None:
        name = "RemoteError"
    elif found["token"] is not None:
        name = found["token"]
    else:
        name = re.sub(r"\\(.)", r"\1", found["quoted"])
    return RemoteError(name, body[:4096].decode(errors="replace"))


async def declare_exchange(
    channel: Channel, exchange: str, exchange_type: str, *, durable: bool
) -> None:
    """Declare ``exchange`` unless it is the default one; ``amq.*`` only passively."""
    if exchange:
        await channel.exchange_declare(
            exchange,
            exchange_type,  # type: ignore[arg-type]  # checked when configured
            durable=durable,
            passive=exchange.startswith("amq."),
        )


class HareClient(ClientConvention[Channel]):
    """The client side of the hare convention; see the module docstring."""

    def __init__(
        self,
        exchange: str = "",
        exchange_type: str = "direct",
        *,
        durable: bool = False,
        lasting_queue: str | None = None,
        lasting_expires: float = 60.0,
        direct_reply_to: bool = False,
    ) -> None:
        if lasting_queue is not None and direct_reply_to:
            raise ConfigError("choose a lasting reply queue or direct reply-to, not both")
        if lasting_queue is not None and (not lasting_queue or lasting_queue.startswith("amq.")):
            raise ConfigError(
                f"lasting_queue must be a name not starting with 'amq.', got {lasting_queue!r}"
            )
        if not lasting_expires > 0:
            raise ConfigError(f"lasting_expires must be > 0 seconds, got {lasting_expires!r}")
        self.exchange = exchange
        self.exchange_type = exchange_type
        self.durable = durable
        self.lasting_queue = lasting_queue
        self.lasting_expires = lasting_expires
        self.direct_reply_to = direct_reply_to
        self.lasting = lasting_queue is not None

    def __repr__(self) -> str:
        kind = (
            "direct_reply_to"
            if self.direct_reply_to
            else f"lasting_queue={self.lasting_queue!r}"
            if self.lasting
            else "exclusive reply queue"
        )
        return f"<hare convention exchange={self.exchange!r} {kind}>"

    async def setup(self, channel: Channel, on_reply: OnDelivery, on_cancel: OnCancel) -> str:
        await declare_exchange(channel, self.exchange, self.exchange_type, durable=self.durable)
        if self.direct_reply_to:
            await channel.basic_consume(DIRECT_REPLY_TO, on_reply, no_ack=True, on_cancel=on_cancel)
            return DIRECT_REPLY_TO
        if self.lasting_queue is not None:
            queue = (
                await channel.queue_declare(
                    self.lasting_queue,
                    arguments={"x-expires": int(self.lasting_expires * 1000)},
                )
            ).name
            await channel.basic_consume(
                queue, on_reply, no_ack=True, exclusive=True, on_cancel=on_cancel
            )
            return queue
        queue = (await channel.queue_declare("", exclusive=True, auto_delete=True)).name
        await channel.basic_consume(queue, on_reply, no_ack=True, on_cancel=on_cancel)
        return queue

    def wrap(
        self, routing_key: str, body: bytes, content_type: str | None, headers: Mapping[str, Any],
        correlation_id: str, expiration: str | None, reply_queue: str,
    ) -> Outgoing:  # fmt: skip
        return Outgoing(
            self.exchange,
            routing_key,
            body,
            Properties(
                content_type=content_type,
                headers=headers or None,
                correlation_id=correlation_id,
                reply_to=reply_queue,
                expiration=expiration,
            ),
        )

    def unwrap(self, delivery: Delivery) -> IncomingReply:
        props = delivery.properties
        headers = props.headers or {}
        return IncomingReply(
            props.correlation_id,
            delivery.body,
            props.content_type,
            headers,
            error_of(headers, props.content_type, delivery.body),
            delivery.routing_key,
        )


class HareServer(ServerConvention[Channel]):
    """The server side of the hare convention: replies go to ``reply_to``.

    ``queue_type="quorum"`` declares the queue durable with ``x-queue-type:
    quorum`` (and ``x-delivery-limit`` with ``delivery_limit``), replicated
    over a RabbitMQ cluster's nodes."""

    queue_types = frozenset({"classic", "quorum"})

    def __init__(
        self,
        queue: str,
        exchange: str = "",
        exchange_type: str = "direct",
        *,
        routing_keys: tuple[str, ...] | None = None,
        durable: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
        queue_type: str = "classic",
        delivery_limit: int | None = None,
    ) -> None:
        if not queue or not isinstance(queue, str):
            raise ConfigError(f"a server needs a queue name, got {queue!r}")
        if exchange == "" and routing_keys not in (None, (queue,)):
            raise ConfigError(
                "the default exchange routes by queue name only; "
                f"routing_keys={routing_keys!r} needs a named exchange"
            )
        self.queue = queue
        self.exchange = exchange
        self.exchange_type = exchange_type
        self.routing_keys = routing_keys if routing_keys is not None else (queue,)
        self.durable = durable
        self.auto_delete = auto_delete
        self.arguments = dict(arguments or {})
        self.queue_durable = durable
        if queue_type == "quorum":
            self.queue_durable = True  # RabbitMQ refuses a transient quorum queue
            self.arguments["x-queue-type"] = "quorum"
            if delivery_limit is not None:
                self.arguments["x-delivery-limit"] = delivery_limit

    def __repr__(self) -> str:
        return f"<hare convention queue={self.queue!r} exchange={self.exchange!r}>"

    async def setup(self, channel: Channel, on_request: OnDelivery, on_cancel: OnCancel) -> None:
        await declare_exchange(channel, self.exchange, self.exchange_type, durable=self.durable)
        await channel.queue_declare(
            self.queue,
            durable=self.queue_durable,
            auto_delete=self.auto_delete,
            arguments=self.arguments or None,
        )
        if self.exchange:
            for key in self.routing_keys:
                await channel.queue_bind(self.queue, self.exchange, key)
        await channel.basic_consume(self.queue, on_request, on_cancel=on_cancel)

    def unwrap(self, delivery: Delivery) -> Incoming:
        props = delivery.properties
        return Incoming(
            delivery.body,
            props.content_type,
            delivery.routing_key,
            dict(props.headers or {}),
            props.correlation_id,
            props.reply_to or None,
        )

    def wrap(
        self, incoming: Incoming, body: bytes, content_type: str | None, error: BaseException | None
    ) -> Outgoing | None:
        if not incoming.reply:
            return None
        if error is not None:
            return Outgoing(
                "",
                incoming.reply,
                str(error).encode(),
                Properties(
                    correlation_id=incoming.correlation_id,
                    headers=error_headers(error),
                    content_type=error_content_type(error),
                ),
            )
        return Outgoing(
            "",
            incoming.reply,
            body,
            Properties(correlation_id=incoming.correlation_id, content_type=content_type),
        )


class _Hare(Convention):
    def __init__(
        self, name: str, lasting_queue: str | None, lasting_expires: float, direct: bool
    ) -> None:
        self.name = name
        self.lasting_queue = lasting_queue
        self.lasting_expires = lasting_expires
        self.direct = direct
        HareClient(
            lasting_queue=lasting_queue, lasting_expires=lasting_expires, direct_reply_to=direct
        )

    def client(self, exchange: str, exchange_type: str, durable: bool) -> HareClient:
        return HareClient(
            exchange,
            exchange_type,
            durable=durable,
            lasting_queue=self.lasting_queue,
            lasting_expires=self.lasting_expires,
            direct_reply_to=self.direct,
        )

    def server(self, options: ServerOptions) -> HareServer:
        if not options.queue:
            raise ConfigError(f"the {self.name} convention needs a queue name for a server")
        return HareServer(
            options.queue,
            options.exchange,
            options.exchange_type,
            routing_keys=options.routing_keys,
            durable=options.durable,
            auto_delete=options.auto_delete,
            queue_type=options.queue_type,
            delivery_limit=options.delivery_limit,
        )


def hare(*, lasting_queue: str | None = None, lasting_expires: float = 60.0) -> Convention:
    """The default convention: an exclusive server-named reply queue per channel.

    ``lasting_queue="name"`` (opt-in) uses that client-named queue instead,
    with ``x-expires`` of ``lasting_expires`` seconds, consumed exclusively and
    redeclared after a reconnect: requests in flight across a short
    connection loss still get their replies. The name must be unique to this
    client instance.
    """
    return _Hare("hare", lasting_queue, lasting_expires, False)


def direct_reply_to() -> Convention:
    """RabbitMQ's direct reply-to: replies come on ``amq.rabbitmq.reply-to``.

    No reply queue is declared; replies in flight are lost with the channel.
    Servers are plain hare servers (they answer ``reply_to``).
    """
    return _Hare("direct_reply_to", None, 60.0, True)
