"""What a convention decides: names, declarations and envelopes, for clients and servers.

A convention is chosen when a client or server starts (``convention=``). It
never performs I/O of its own beyond the declarations it is asked to make on
the channel it is given, and it knows nothing of actors: the RPC behaviours
call it at three points each.

Client: ``setup`` (on every channel open: declare, consume the replies),
``wrap`` (a request's body into a message), ``unwrap`` (a reply message into a
correlation id, a body or an error).

Server: ``setup`` (declare, bind, consume the requests), ``unwrap`` (a
request message into an ``Incoming``), ``wrap`` (a reply or an error into a
message for the caller, or None when the caller wants no reply). A server
convention may also count requests per endpoint (``Incoming.stats``), answer
some requests itself (``LocalAnswer``), and, on a protocol that redelivers
nothing, have the server drain before it closes (``drains``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from ..errors import ConfigError, RemoteError
from ..transport._fieldtable import FieldTableError, encode_table
from ..transport.base import (
    AMQP_0_9_1,
    Channel,
    Delivery,
    Message,
    OnCancel,
    OnDelivery,
    ReturnedMessage,
    Session,
)

SessionT = TypeVar("SessionT", bound=Session)

__all__ = [
    "ClientConvention",
    "Convention",
    "EndpointStats",
    "Incoming",
    "LocalAnswer",
    "NotForThisServer",
    "Outgoing",
    "IncomingReply",
    "ServerConvention",
    "ServerOptions",
    "ServerStopping",
    "UndecodableRequest",
]


#: A message ready to publish: exchange, routing_key, body, properties.
Outgoing = Message


class _Undecoded:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDECODED"


UNDECODED: Any = _Undecoded()


@dataclass(slots=True)  # not frozen: one per message, and a frozen init costs 3x
class IncomingReply:
    """A reply as the client sees it once unwrapped.

    ``correlation_id`` None: the reply names no request; it is dropped, unless
    the convention ``correlates_by_routing_key`` (then ``routing_key`` picks one).
    """

    correlation_id: str | None
    body: bytes
    content_type: str | None
    headers: Mapping[str, Any] = field(default_factory=dict)
    error: RemoteError | None = None
    routing_key: str = ""  # for conventions without correlation ids (goamqp)
    #: ``body`` decoded from JSON already, where the convention had to (an envelope's
    #: payload): a JSON codec takes it as it is. ``UNDECODED`` otherwise.
    value: Any = UNDECODED


class EndpointStats:
    """What a server counts for one endpoint of its convention: requests answered,
    the errors among them, the last error, and the time from delivery to reply.

    The convention owns one per endpoint and hands it out in ``Incoming.stats``;
    the server calls ``record`` once per request it answers (or drops unanswered).
    """

    __slots__ = ("errors", "last_error", "processing_ns", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.last_error: BaseException | None = None
        self.processing_ns = 0

    def record(self, elapsed_ns: int, error: BaseException | None) -> None:
        self.requests += 1
        self.processing_ns += elapsed_ns
        if error is not None:
            self.errors += 1
            self.last_error = error

    def __repr__(self) -> str:
        return f"<EndpointStats {self.requests} requests, {self.errors} errors>"


@dataclass(slots=True)  # not frozen: one per message, and a frozen init costs 3x
class Incoming:
    """A request as the server sees it once unwrapped.

    ``reply`` is whatever the convention needs to address the answer (a
    reply_to queue, a routing key, a service name); None means the caller
    wants no answer. ``request_id`` identifies a request across retries (the
    server answers a repeated one from its cache). ``stats``, where the
    convention counts per endpoint, is the endpoint's the request came through.
    """

    body: bytes
    content_type: str | None
    routing_key: str
    headers: Mapping[str, Any]
    correlation_id: str | None
    reply: Any
    request_id: str | None = None
    trace_id: str | None = None  # the envelope's trace id, where the convention has one
    stats: EndpointStats | None = None
    #: ``body`` decoded from JSON already (an envelope's payload), for a JSON codec
    #: to take as it is; ``UNDECODED`` otherwise.
    value: Any = UNDECODED


class NotForThisServer(ValueError):
    """Raised by ``ServerConvention.unwrap`` for a message this server must drop
    unanswered and unlogged (it was meant for another instance)."""


class LocalAnswer(Exception):
    """Raised by ``ServerConvention.unwrap`` for a request the convention answers
    itself (a NATS service API PING, say): the server sends ``message`` (None:
    nothing) and calls no handler."""

    def __init__(self, message: Outgoing | None) -> None:
        super().__init__("answered by the convention")
        self.message = message


class UndecodableRequest(ValueError):
    """The error a server answers with when its codec cannot decode a request."""


class ServerStopping(RuntimeError):
    """The error a draining server answers with for a request it could not finish
    before it stopped (its handler was interrupted, or the drain ran out of time)."""


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """What ``RPCServer.start`` was given; a convention may derive names instead."""

    queue: str | None
    exchange: str
    exchange_type: str
    routing_keys: tuple[str, ...] | None
    durable: bool
    auto_delete: bool
    queue_type: str = "classic"  # "quorum": a durable replicated queue (x-queue-type)
    delivery_limit: int | None = None  # a quorum queue's x-delivery-limit


class Convention(ABC):
    """A named convention: builds the client half and the server half.

    ``RPCClient.start(conn, convention=...)`` and ``RPCServer.start(conn,
    convention=...)`` take one; the default is ``hare()``.
    """

    name: str = "convention"

    @abstractmethod
    def client(self, exchange: str, exchange_type: str, durable: bool) -> ClientConvention[Any]:
        """The client half, given the client's ``start()`` options."""

    @abstractmethod
    def server(self, options: ServerOptions) -> ServerConvention[Any]:
        """The server half, given the server's ``start()`` options."""

    def __repr__(self) -> str:
        return f"<{self.name} convention>"


class ClientConvention(ABC, Generic[SessionT]):
    """The client's half of a convention, on sessions of type ``SessionT``."""

    #: The wire protocol it runs on; a client on a connection of another is a ConfigError.
    wire_protocol: ClassVar[str] = AMQP_0_9_1

    #: The exchange requests go to (for logs and ``ConnectedMeta.exchange``).
    exchange: str = ""
    #: True when replies survive a channel loss (a lasting reply queue): requests
    #: in flight then keep waiting instead of failing with ConnectionLost.
    lasting: bool = False
    #: True when a reply may come without a correlation id (goamqp servers send
    #: none): the client then gives it to the oldest request in flight with the
    #: reply's routing key. Replies that carry a correlation id never are.
    correlates_by_routing_key: bool = False
    #: True to keep at most one request per routing key out at a time, so that a
    #: reply without a correlation id can only be that request's. A request whose
    #: caller stopped waiting keeps its key until its late reply arrives or
    #: ``late_reply_grace`` seconds after its deadline (see ``hare_py.rpc.calls``).
    serial_per_routing_key: bool = False
    #: With ``serial_per_routing_key``: how long past a request's deadline its
    #: reply may still come; None for the client's ``timeout``, ``inf`` for
    #: "until it comes".
    late_reply_grace: float | None = None

    @abstractmethod
    async def setup(self, session: SessionT, on_reply: OnDelivery, on_cancel: OnCancel) -> str:
        """Declare what requests and replies need on a new session, receive the
        replies, and return the reply address (a queue name, an inbox subject)."""

    @abstractmethod
    def wrap(
        self, routing_key: str, body: bytes, content_type: str | None, headers: Mapping[str, Any],
        correlation_id: str, expiration: str | None, reply_queue: str,
    ) -> Outgoing:  # fmt: skip
        """The message that carries a request."""

    @abstractmethod
    def unwrap(self, delivery: Delivery) -> IncomingReply:
        """A reply message, opened; raise ValueError for a malformed one."""

    def check_headers(self, headers: Mapping[str, Any]) -> None:
        """``ConfigError`` for request headers the wire cannot carry. AMQP 0-9-1: a
        field table (string keys up to 128 bytes, AMQP-typed values, bounded depth)."""
        try:
            encode_table(headers)
        except FieldTableError as exc:
            raise ConfigError(f"headers cannot be sent: {exc}") from None

    def returned_correlation(self, returned: ReturnedMessage) -> str | None:
        """The correlation id of a request that came back unroutable."""
        return returned.properties.correlation_id

    def returned_address(self, returned: ReturnedMessage, routing_key: str) -> tuple[str, str]:
        """Where the unroutable request was sent: (exchange, routing key) on the wire."""
        return returned.exchange, returned.routing_key


class ServerConvention(ABC, Generic[SessionT]):
    """The server's half of a convention, on sessions of type ``SessionT``."""

    #: The wire protocol it runs on; a server on a connection of another is a ConfigError.
    wire_protocol: ClassVar[str] = AMQP_0_9_1

    #: The queue the server consumes (for logs and ``ConnectedMeta.reply_queue``).
    queue: str = ""
    exchange: str = ""
    #: True where the protocol redelivers nothing a closed session held (NATS):
    #: stopping then drains (``quiesce``, answer what is in hand, ``flush``) before
    #: it closes. False where the broker redelivers the unsettled requests (AMQP).
    drains: bool = False
    #: The ``queue_type`` values its server declares queues of (``RPCServer(queue_type=)``).
    queue_types: frozenset[str] = frozenset({"classic"})

    @abstractmethod
    async def setup(self, session: SessionT, on_request: OnDelivery, on_cancel: OnCancel) -> None:
        """Declare and bind what the requests need, and receive them (with acks where
        the protocol has them)."""

    async def limit(self, session: SessionT, prefetch: int) -> None:
        """Bound the requests delivered and not yet settled (0: no bound), before
        ``setup``. AMQP 0-9-1: ``basic.qos``."""
        if prefetch and isinstance(session, Channel):
            await session.basic_qos(prefetch)

    async def quiesce(self, session: SessionT, timeout: float) -> None:
        """With ``drains``: stop requests arriving, and return once every request
        sent here before has been delivered (NATS: unsubscribe, then flush)."""

    async def flush(self, session: SessionT, timeout: float) -> None:
        """With ``drains``: return once the broker has what was sent on ``session``."""

    @abstractmethod
    def unwrap(self, delivery: Delivery) -> Incoming:
        """A request message, opened; raise ValueError for a malformed one,
        ``NotForThisServer`` to drop it, ``LocalAnswer`` to answer it without a handler."""

    @abstractmethod
    def wrap(
        self, incoming: Incoming, body: bytes, content_type: str | None, error: BaseException | None
    ) -> Outgoing | None:
        """The message that answers ``incoming`` (with ``error`` if the handler
        failed), or None if nobody waits for it."""
