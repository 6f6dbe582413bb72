"""The one protocol every broker backend speaks.

Rules this module keeps:

- A backend is chosen by URL scheme (see ``hare_py.transport.open_connection``).
  ``Backend.connect`` is an async context manager: the connection lives exactly
  as long as the ``async with`` block, and its background work runs in a task
  group owned by that block.
- Every operation is a coroutine that either completes or raises a
  ``hare_py.errors`` exception: ``ConnectionLost`` when the channel or connection
  is gone, ``BrokerError`` when the broker refused the operation (the channel is
  then closed, as AMQP does), ``ConnectFailed`` when a connection cannot be made.
  No backend-specific exception escapes a backend.
- Callbacks (deliveries, returns, consumer cancels) are plain functions called
  on the event loop's thread, in broker order. They must not block; they hand
  the event on (for example ``MemoryObjectSendStream.send_nowait``).
- Close events carry a ``CloseReason``; ``wait_closed`` returns it and never
  raises.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal, NamedTuple, TypeAlias
from uuid import UUID

from .._frozen import quick_init
from ..errors import ConfigError
from .url import BrokerURL

__all__ = [
    "EXCHANGE_TYPES",
    "Backend",
    "Channel",
    "CorrelationId",
    "CloseReason",
    "ConnectOptions",
    "Delivery",
    "ExchangeType",
    "LinkProperties",
    "LinkSession",
    "Message",
    "NatsSession",
    "OnCancel",
    "OnDelivery",
    "OnReturn",
    "Outcome",
    "Properties",
    "QueueInfo",
    "ReturnedMessage",
    "Session",
    "SettleMode",
    "TLSOptions",
    "TransportConnection",
]

ExchangeType: TypeAlias = Literal["direct", "topic", "fanout", "headers"]
EXCHANGE_TYPES: frozenset[str] = frozenset({"direct", "topic", "fanout", "headers"})

# AMQP reply codes used across backends.
REPLY_SUCCESS = 200
NORMAL_CLOSE_TEXT = "Normal shutdown"  # the reply text of a close we ask for, as RabbitMQ's
CONNECTION_FORCED = 320
NO_ROUTE = 312
ACCESS_REFUSED = 403
NOT_FOUND = 404
RESOURCE_LOCKED = 405
PRECONDITION_FAILED = 406
CHANNEL_ERROR = 504
NOT_ALLOWED = 530


@quick_init
@dataclass(frozen=True)  # no slots: a field left at its default costs nothing to build
class Properties:
    """AMQP 0-9-1 basic properties. ``None`` means absent on the wire."""

    content_type: str | None = None
    content_encoding: str | None = None
    headers: Mapping[str, Any] | None = None
    delivery_mode: int | None = None  # 1 transient, 2 persistent
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None  # milliseconds, as a decimal string (AMQP)
    message_id: str | None = None
    timestamp: datetime | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None


EMPTY_PROPERTIES = Properties()

#: An AMQP 1.0 message-id or correlation-id: string, ulong (int), uuid or binary.
CorrelationId: TypeAlias = str | int | UUID | bytes


@quick_init
@dataclass(frozen=True)  # no slots, as Properties: slots would shadow its class defaults
class LinkProperties(Properties):
    """AMQP 1.0 properties that AMQP 0-9-1 lacks (see ``LinkSession``).

    ``correlation`` is the correlation-id with its AMQP 1.0 type; when set it
    is what goes on the wire, and ``correlation_id`` is then only its text
    for logs (``None`` for an id that is not a string).
    """

    subject: str | None = None
    correlation: CorrelationId | None = None


class Message(NamedTuple):
    """A message to publish (see ``Channel.basic_publish_many``)."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Properties = EMPTY_PROPERTIES


@quick_init
@dataclass(frozen=True, slots=True)
class Delivery:
    """A message delivered to a consumer.

    ``undecodable`` is ``None`` for a message that decoded. Otherwise it says
    why the message cannot be decoded (a property value such as a header table
    nested too deep or a timestamp out of range, or a body over
    ``ConnectOptions.max_body_size``); ``properties`` are then empty, and so is
    ``body`` when it was over the limit. Reject such a delivery without
    requeue: a dead-letter exchange keeps it, and redelivering cannot help.
    """

    body: bytes
    properties: Properties
    exchange: str
    routing_key: str
    delivery_tag: int
    consumer_tag: str
    redelivered: bool = False
    undecodable: str | None = None


@dataclass(frozen=True, slots=True)
class ReturnedMessage:
    """A mandatory message that the broker could not route (``basic.return``)."""

    body: bytes
    properties: Properties
    exchange: str
    routing_key: str
    reply_code: int
    reply_text: str


@dataclass(frozen=True, slots=True)
class CloseReason:
    """Why a channel, consumer or connection closed.

    ``by`` says who closed it: ``"client"`` (we asked), ``"broker"`` (a
    ``channel.close``/``connection.close``/``basic.cancel`` from the broker, with
    its reply code and text), ``"connection"`` (a channel closed because its
    connection did) or ``"network"`` (the socket failed or heartbeats stopped).
    """

    code: int
    text: str
    by: Literal["client", "broker", "connection", "network"]

    @property
    def is_normal(self) -> bool:
        """True for a close we asked for with 200 REPLY_SUCCESS."""
        return self.by == "client" and self.code in (0, REPLY_SUCCESS)

    def __str__(self) -> str:
        code = f"{self.code} " if self.code else ""
        return f"{code}{self.text} (by {self.by})"


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """The result of ``queue.declare``: the (possibly server-chosen) name and counts."""

    name: str
    message_count: int = 0
    consumer_count: int = 0


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """TLS for ``amqps://``: verification is on unless ``verify=False``."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    server_hostname: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """Connection settings shared by all backends."""

    heartbeat: float = 30.0  # seconds; 0 disables
    name: str | None = None  # client-provided connection name, shown by the broker
    connect_timeout: float = 10.0
    tls: TLSOptions | None = None
    client_properties: Mapping[str, Any] = field(default_factory=dict)
    # Bytes; a delivered body announced over it is dropped unread and its
    # Delivery marked undecodable. The URL's max_body_size= wins.
    max_body_size: int = 128 * 1024 * 1024


OnDelivery: TypeAlias = Callable[[Delivery], None]
OnReturn: TypeAlias = Callable[[ReturnedMessage], None]
OnCancel: TypeAlias = Callable[[str, CloseReason], None]


#: How a received request is settled: ``"accept"`` it, ``"reject"`` it for good
#: (dead-lettered where the protocol can), or ``"release"`` it to another consumer.
Outcome: TypeAlias = Literal["accept", "reject", "release"]

#: The wire protocols hare_py speaks; a session and a convention each name one.
AMQP_0_9_1 = "amqp-0-9-1"
NATS = "nats"
AMQP_1_0 = "amqp-1.0"

#: How a link settles: ``"at-most-once"`` (pre-settled: nothing to acknowledge, a
#: message may be lost) or ``"at-least-once"`` (settled after its outcome).
SettleMode: TypeAlias = Literal["at-most-once", "at-least-once"]


class Session(ABC):
    """What RPC needs of one (re)connect, in every protocol (see docs/design.md).

    A session is the unit of failure: what an actor set up on it (a reply
    address, a subscription, a consumer) goes when it closes, and the requests
    sent through it are then in doubt. Use it from the event loop that opened it.
    """

    #: The wire protocol, for matching conventions (``AMQP_0_9_1``, ...).
    wire_protocol: ClassVar[str]
    #: False where the protocol has no acknowledgements: ``settle`` does nothing
    #: then, and a server need not call it.
    acks: ClassVar[bool] = True

    @property
    @abstractmethod
    def close_reason(self) -> CloseReason | None:
        """``None`` while open; why it closed afterwards."""

    @property
    def is_open(self) -> bool:
        return self.close_reason is None

    @abstractmethod
    async def wait_closed(self) -> CloseReason:
        """Wait until the session closes, for any reason; never raises."""

    @abstractmethod
    async def close(self) -> None:
        """Close the session. Idempotent; never raises."""

    @abstractmethod
    async def send(self, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        """Send ``messages`` in order.

        Raises ``UnsendableMessage`` before writing anything when one of them
        cannot be put on the wire; ``ConnectionLost`` when the session went away
        (some of them may have left). With ``mandatory`` a message nobody can
        receive comes back through the session's ``on_return``.
        """

    @abstractmethod
    async def settle(self, delivery: Delivery, outcome: Outcome) -> None:
        """Settle a received message; a no-op where the protocol has no acks."""

    @property
    def draining(self) -> bool:
        """True once the server under this open session is going away (NATS lame
        duck mode): its connection takes no new sessions, and the supervised
        ``Connection`` is connecting elsewhere. The session still sends and
        receives: send new work through a session on the new connection, let
        the answers to what went out here arrive, then close this one."""
        return False

    async def wait_draining(self) -> None:
        """Return once the session is draining or closed; never raises."""
        await self.wait_closed()

    async def retire(self, successor: Session, timeout: float) -> None:  # noqa: B027
        """Stop receiving on this draining session, now that ``successor`` (on the
        new connection, set up alike) has taken its work over: return once nothing
        more can reach this session, every message routed to it before having been
        delivered. It still sends; close it afterwards. ``ConnectionLost`` if the
        server does not answer within ``timeout`` seconds. Default: nothing to do."""


class Channel(Session):
    """An open AMQP 0-9-1 channel. Use from the event loop that opened it."""

    wire_protocol: ClassVar[str] = AMQP_0_9_1

    @property
    @abstractmethod
    def number(self) -> int:
        """The channel number on its connection."""

    @abstractmethod
    async def close(self) -> None:
        """Close the channel (200 REPLY_SUCCESS). Idempotent; never raises."""

    @abstractmethod
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
    ) -> None: ...

    @abstractmethod
    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None: ...

    @abstractmethod
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
        """Declare a queue; ``queue=""`` asks the broker for a name (``amq.gen-...``)."""

    @abstractmethod
    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete a queue; returns the number of messages it held."""

    @abstractmethod
    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None: ...

    @abstractmethod
    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None: ...

    @abstractmethod
    async def queue_purge(self, queue: str) -> int:
        """Remove every ready message; returns how many."""

    @abstractmethod
    async def basic_qos(self, prefetch_count: int, *, global_: bool = False) -> None: ...

    @abstractmethod
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
        """Start a consumer; returns its tag.

        ``on_cancel(tag, reason)`` is called if the broker cancels the consumer
        (for example because its queue was deleted), not after ``basic_cancel``.
        """

    @abstractmethod
    async def basic_cancel(self, consumer_tag: str) -> None: ...

    @abstractmethod
    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: Properties = EMPTY_PROPERTIES,
        mandatory: bool = False,
    ) -> None:
        """Publish a message.

        Without publisher confirms this returns once the message is handed to
        the connection; a publish the broker refuses (missing exchange) closes
        the channel afterwards. With confirms it returns once the broker acked
        and raises ``BrokerError`` on a nack or when the broker closed the
        channel with a reply code before confirming (``ConnectionLost`` when
        the channel or connection went away otherwise). An unroutable mandatory
        message is reported through the channel's ``on_return`` before its
        confirm.
        """

    async def basic_publish_many(
        self, messages: Sequence[Message], *, mandatory: bool = False
    ) -> None:
        """Publish ``messages`` in order, as ``basic_publish`` would one by one.

        A backend may hand them to the connection in one write (the aiormq one
        does, without confirms). Raises like ``basic_publish``; on an error it
        is unknown which of the messages left.
        """
        for message in messages:
            await self.basic_publish(
                message.body,
                exchange=message.exchange,
                routing_key=message.routing_key,
                properties=message.properties,
                mandatory=mandatory,
            )

    async def send(self, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        await self.basic_publish_many(messages, mandatory=mandatory)

    async def settle(self, delivery: Delivery, outcome: Outcome) -> None:
        if outcome == "accept":
            await self.basic_ack(delivery.delivery_tag)
        else:
            await self.basic_reject(delivery.delivery_tag, requeue=outcome == "release")

    @abstractmethod
    async def basic_ack(self, delivery_tag: int, *, multiple: bool = False) -> None: ...

    @abstractmethod
    async def basic_nack(
        self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True
    ) -> None: ...

    @abstractmethod
    async def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> None: ...


class NatsSession(Session):
    """The NATS face of the seam: subscriptions and publishes on a shared connection.

    NATS has no exchanges, queues or acknowledgements, and this offers none.
    A ``Message`` goes to the subject ``routing_key`` (its ``exchange`` must be
    ``""``), with ``properties.reply_to`` as the reply subject and
    ``properties.headers`` as NATS headers (string values; a list of strings
    repeats a key). A message with any other property set is unsendable: a
    convention carries what it needs in headers. Messages arrive as
    ``Delivery(body, Properties(headers=..., reply_to=...), exchange="",
    routing_key=subject, delivery_tag=0, consumer_tag=sid)``; a header that
    repeats arrives as a list. ``settle`` does nothing.

    A no-responders status (503) received on any of the session's
    subscriptions goes to the session's ``on_return`` as
    ``ReturnedMessage(b"", Properties(), "", subject, 312, "NO_RESPONDERS")``,
    where ``subject`` is the reply subject it arrived on. Closing the session
    unsubscribes all its subscriptions.
    """

    wire_protocol: ClassVar[str] = NATS
    acks: ClassVar[bool] = False

    @property
    @abstractmethod
    def max_payload(self) -> int:
        """The largest message (headers and body) the server takes, from its INFO."""

    @abstractmethod
    async def subscribe(
        self, subject: str, on_message: OnDelivery, *, queue: str | None = None
    ) -> str:
        """Subscribe to ``subject`` (wildcards allowed), in queue group ``queue`` if
        given (each message then goes to one member of the group); returns the sid."""

    @abstractmethod
    async def unsubscribe(self, sid: str) -> None:
        """End a subscription; messages already received are still delivered."""

    @abstractmethod
    async def flush(self, timeout: float) -> None:
        """Return once the server has seen everything sent so far (a PING's PONG);
        ``ConnectionLost`` if it does not answer within ``timeout`` seconds."""


class LinkSession(Session):
    """The AMQP 1.0 face of the seam: links to and from addresses, outcomes, credit.

    AMQP 1.0 has no exchanges or queues, and this offers none. A ``Message``
    goes to the address ``routing_key`` (its ``exchange`` must be ``""``)
    through a sender link of this session opened on first use; it is sent
    as one data section holding ``body``. Properties map onto the message's:
    ``reply_to`` to reply-to, ``correlation_id`` (or, with its type,
    ``LinkProperties.correlation``) to correlation-id, ``message_id``,
    ``content_type``, ``content_encoding``, ``user_id``, ``headers`` to the
    application-properties (string keys, simple values), ``expiration`` to
    the header's ttl, ``delivery_mode`` 2 to durable, ``priority``,
    ``timestamp`` to creation-time and ``LinkProperties.subject`` to subject.
    A message with ``type`` or ``app_id`` set, or over the peer's
    max-message-size, is unsendable.

    ``send(..., mandatory=True)`` sends the transfers unsettled and waits for
    nothing: an outcome other than accepted (rejected with its error
    condition, released, modified, or the sender's link refused before the
    message left) comes back through the session's ``on_return`` as
    ``ReturnedMessage(body, properties, "", address, code, text)``, the code
    mapped from the condition as AMQP 0-9-1 names it (not-found 404,
    unauthorized-access 403, resource-locked 405, precondition-failed 406,
    not-allowed 530, connection:forced 320, released or modified 312
    NO_ROUTE, anything else 541). Without ``mandatory`` the transfers are
    pre-settled (at most once).

    Messages arrive as ``Delivery(body, LinkProperties(...), exchange="",
    routing_key=the receiver's address, delivery_tag=a number of this
    session, consumer_tag=the link's name, redelivered=delivery-count > 0)``;
    a body that is not one data section or an amqp-value of binary or string
    arrives ``undecodable``, and so does one over the connection's
    ``max_body_size``. ``settle`` maps accept, reject and release onto the
    dispositions accepted, rejected and released, and gives the receiver's
    credit back.

    A link the peer detaches, or the peer ending the AMQP session, closes
    this session (``CloseReason(by="broker")`` with the condition's code and
    description).
    """

    wire_protocol: ClassVar[str] = AMQP_1_0

    @property
    @abstractmethod
    def peer_properties(self) -> Mapping[str, Any]:
        """The properties of the peer's open frame (``product``, ``version``, ...);
        empty for a peer that sent none, or for the sessions of a listener."""

    @property
    def listening(self) -> bool:
        """True for a session of a listening server: its peers dial in and open
        the links, and its receivers serve the links they open to an address."""
        return False

    @abstractmethod
    async def open_receiver(
        self,
        address: str | None,
        on_message: OnDelivery,
        *,
        credit: int,
        mode: SettleMode = "at-least-once",
    ) -> str:
        """Receive from ``address``, or from a new dynamic node of the peer when
        ``address`` is None; returns the address. ``credit`` bounds the messages
        delivered and not yet settled (``at-least-once``) or not yet handed on
        (``at-most-once``). ``BrokerError`` when the peer refuses the link
        (``amqp:not-implemented`` for a peer without dynamic nodes); the peer
        may then end the AMQP session, which closes this one."""


class TransportConnection(ABC):
    """An open connection to one broker."""

    #: The wire protocol its sessions speak.
    wire_protocol: ClassVar[str] = AMQP_0_9_1

    @property
    @abstractmethod
    def close_reason(self) -> CloseReason | None:
        """``None`` while open; why it closed afterwards."""

    @property
    def is_open(self) -> bool:
        return self.close_reason is None

    @property
    def draining(self) -> bool:
        """True once the server said it is going away (NATS lame duck mode): the
        connection is closed for new sessions (``close_reason`` is settled) but
        stays up while its sessions drain, and the server takes no new clients."""
        return False

    @property
    def discovered_urls(self) -> tuple[BrokerURL, ...]:
        """Other servers of the broker's cluster, as this connection learned them
        (NATS INFO ``connect_urls``), with this URL's credentials and parameters;
        the supervised ``Connection`` adds the ones it does not know to its list."""
        return ()

    async def open_session(self, *, on_return: OnReturn | None = None) -> Session:
        """Open a session of this connection's protocol; ``on_return`` receives the
        messages that come back as unroutable. For AMQP 0-9-1, a channel."""
        return await self.open_channel(on_return=on_return)

    async def open_channel(
        self, *, on_return: OnReturn | None = None, publisher_confirms: bool = False
    ) -> Channel:
        """Open an AMQP 0-9-1 channel. ``on_return`` receives this channel's returned
        messages. ``ConfigError`` on a connection of another protocol."""
        raise ConfigError(f"a {self.wire_protocol} connection has no AMQP 0-9-1 channels")

    @abstractmethod
    async def wait_closed(self) -> CloseReason:
        """Wait until the connection closes, for any reason; never raises."""

    @abstractmethod
    async def close(self) -> None:
        """Close the connection and every channel on it. Idempotent; never raises."""


class Backend(ABC):
    """A way to reach a broker, chosen by URL scheme."""

    schemes: ClassVar[tuple[str, ...]]
    #: The wire protocol of the connections it makes.
    wire_protocol: ClassVar[str] = AMQP_0_9_1

    @abstractmethod
    def connect(
        self, url: BrokerURL, options: ConnectOptions
    ) -> AbstractAsyncContextManager[TransportConnection]:
        """Connect; the connection is closed when the ``async with`` block exits.

        Raises ``ConnectFailed`` when the broker cannot be reached or refuses the
        login.
        """

    def check(self, url: BrokerURL, options: ConnectOptions) -> None:  # noqa: B027
        """Raise ``ConfigError`` for anything in ``url`` or ``options`` that ``connect``
        would refuse, without connecting.

        ``Connection`` calls it for every URL when its block is entered, so that
        a configuration error fails there instead of being retried; a
        ``ConfigError`` that ``connect`` raises later stops the connection.
        """
