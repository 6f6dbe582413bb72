"""RPC over AMQP 1.0 links: ``amqp10(service_address=None, *, reply_address=None)``.

Addresses: a request goes to ``service_address + routing_key`` (with no
``service_address``, the routing key is the whole address), and a server
serves ``service_address + queue``. So ``amqp10("/queue/")`` with routing
key ``"calc"`` and a server with ``queue="calc"`` meet at ``/queue/calc``
(RabbitMQ 3.x's queue address), and ``amqp10()`` with ``"calc"`` on both
sides meets at ``calc`` (a peer to peer server, proton's broker, Artemis).

Replies: each client receives on a private address, its reply-to:

- a dynamic node of the peer (a receiver with a dynamic source), where the
  peer has them: peer to peer, proton's broker, Artemis, Qpid;
- RabbitMQ 3.x has none (it refuses a dynamic source with
  ``amqp:not-implemented`` and ends the AMQP session), so there a client
  receives from ``/queue/hare-reply-<id>``, an unguessable name of its own
  kept across its reconnects. The peer is recognised by its open frame
  (``product`` RabbitMQ, ``version`` 3.x) before anything is tried, and any
  peer that refuses a dynamic source gets the same fallback on the next
  session. RabbitMQ 3.x declares that queue non-durable but not
  auto-delete: give such queues an ``expires`` policy
  (``rabbitmqctl set_policy hare-replies "^hare-reply-" '{"expires":60000}'
  --apply-to queues``), or they outlive their client;
- ``reply_address="..."`` names it instead (``{id}`` in it becomes the
  client's id); it must be private to the client.

Correlation is the correlation-id: a hare_py client sends a string, and a
server answers with the request's correlation-id unchanged, of whatever
AMQP 1.0 type it was (ulong, uuid, binary), so foreign callers match it.

Errors: an error reply has the application-properties ``x-error-type`` and
``x-error-message`` and the content type ``application/vnd.hare-py.error;
type=NAME`` with the message as its body, like the hare convention's. The
content type is what survives RabbitMQ between AMQP 1.0 and 0-9-1 in both
directions (0-9-1 headers are dropped on the way to 1.0, and 1.0
application-properties reach 0-9-1 only as an encoded blob), so a hare_py
client on either protocol recognises a hare_py server's error on the other.

Across protocols on RabbitMQ 3.x, a reply-to of ``/queue/NAME`` is answered
at ``/amq/queue/NAME``: a 0-9-1 client's ``amq.gen-X`` reply queue reaches a
1.0 server as ``/queue/amq.gen-X``, and sending there is refused
(ACCESS_REFUSED, which ends the AMQP session), while ``/amq/queue/`` reaches
the queue without declaring it.

Settling: requests are received at least once with credit = the server's
``prefetch`` (0: 10000), and accepted only after the reply is sent; replies
are sent and received at most once (pre-settled).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from ..errors import BrokerError, ConfigError
from ..transport.base import (
    AMQP_1_0,
    CorrelationId,
    Delivery,
    LinkProperties,
    LinkSession,
    Message,
    OnCancel,
    OnDelivery,
)
from .base import (
    ClientConvention,
    Convention,
    Incoming,
    IncomingReply,
    Outgoing,
    ServerConvention,
    ServerOptions,
)
from .hare import error_content_type, error_headers, error_of

__all__ = ["Amqp10Client", "Amqp10Server", "amqp10", "is_rabbitmq3"]

REPLY_CREDIT = 1000
UNBOUNDED_CREDIT = 10_000
_HEADER_TYPES = (str, bool, int, float, bytes, UUID, type(None))


def is_rabbitmq3(peer: Mapping[str, Any]) -> bool:
    """True for RabbitMQ before 4.0 (its AMQP 1.0 plugin), from its open frame."""
    product, version = peer.get("product"), peer.get("version")
    return str(product) == "RabbitMQ" and str(version).startswith(("3.", "2."))


def _check_address(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, got {value!r:.60}")
    if len(value.encode(errors="replace")) > 1024:
        raise ConfigError(f"{what} is longer than 1024 bytes")
    return value


class Amqp10Client(ClientConvention[LinkSession]):
    """Requests to ``base + routing_key``, replies on a private address."""

    wire_protocol = AMQP_1_0

    def __init__(self, base: str, reply_address: str | None) -> None:
        self.base = base
        self.exchange = ""
        self.client_id = secrets.token_urlsafe(12).replace("-", "A").replace("_", "B")
        self.reply_address = (
            reply_address.replace("{id}", self.client_id) if reply_address is not None else None
        )
        self.dynamic_refused = False

    def __repr__(self) -> str:
        return f"<amqp10 convention base={self.base!r} reply={self.reply_address or 'auto'}>"

    def fixed_reply_address(self) -> str:
        return f"/queue/hare-reply-{self.client_id}"

    async def setup(self, session: LinkSession, on_reply: OnDelivery, on_cancel: OnCancel) -> str:
        if self.reply_address is not None:
            address: str | None = self.reply_address
        elif self.dynamic_refused or is_rabbitmq3(session.peer_properties):
            address = self.fixed_reply_address()
        else:
            address = None
        try:
            return await session.open_receiver(
                address, on_reply, credit=REPLY_CREDIT, mode="at-most-once"
            )
        except BrokerError:
            if address is None:
                self.dynamic_refused = True  # the next session uses the fixed address
            raise

    def check_headers(self, headers: Mapping[str, Any]) -> None:
        for key, value in headers.items():
            if not isinstance(key, str):
                raise ConfigError(f"a header name must be a string, got {key!r:.60}")
            if not isinstance(value, _HEADER_TYPES):
                raise ConfigError(
                    f"header {key!r:.60}: AMQP 1.0 application-properties hold simple "
                    f"values (str, int, float, bool, bytes, UUID), not {type(value).__name__}"
                )

    def wrap(
        self, routing_key: str, body: bytes, content_type: str | None, headers: Mapping[str, Any],
        correlation_id: str, expiration: str | None, reply_queue: str,
    ) -> Outgoing:  # fmt: skip
        address = self.base + routing_key
        if not address:
            raise ConfigError("an AMQP 1.0 request needs an address: give a routing key")
        return Message(
            "",
            address,
            body,
            LinkProperties(
                content_type=content_type,
                headers=dict(headers) if headers else None,
                correlation_id=correlation_id,
                reply_to=reply_queue,
                expiration=expiration,
            ),
        )

    def unwrap(self, delivery: Delivery) -> IncomingReply:
        props = delivery.properties
        headers = props.headers or {}
        cid = props.correlation_id
        if cid is None and isinstance(props, LinkProperties):
            typed = props.correlation
            cid = typed if isinstance(typed, str) else None
        error = error_of(headers, props.content_type, delivery.body)
        return IncomingReply(
            cid, delivery.body, props.content_type, headers, error, delivery.routing_key
        )


class _ReplyTo:
    """Where a request's answer goes, and the correlation-id to give it back."""

    __slots__ = ("address", "correlation")

    def __init__(self, address: str, correlation: CorrelationId | None) -> None:
        self.address = address
        self.correlation = correlation


class Amqp10Server(ServerConvention[LinkSession]):
    """Serves ``base + queue`` at least once; answers each request's reply-to."""

    wire_protocol = AMQP_1_0

    def __init__(self, address: str) -> None:
        self.queue = address
        self.exchange = ""
        self._credit = 32
        self._rabbitmq3 = False

    def __repr__(self) -> str:
        return f"<amqp10 convention serving {self.queue!r}>"

    async def limit(self, session: LinkSession, prefetch: int) -> None:
        """The receiver's credit is the prefetch (0: up to 10000 at once)."""
        self._credit = prefetch or UNBOUNDED_CREDIT

    async def setup(
        self, session: LinkSession, on_request: OnDelivery, on_cancel: OnCancel
    ) -> None:
        self._rabbitmq3 = is_rabbitmq3(session.peer_properties)
        await session.open_receiver(
            self.queue, on_request, credit=self._credit, mode="at-least-once"
        )

    def unwrap(self, delivery: Delivery) -> Incoming:
        props = delivery.properties
        typed = props.correlation if isinstance(props, LinkProperties) else None
        correlation = typed if typed is not None else props.correlation_id
        text = correlation if isinstance(correlation, str) else None
        if text is None and correlation is not None:
            text = repr(correlation)[:100]  # for logs; the typed one goes back
        reply = _ReplyTo(props.reply_to, correlation) if props.reply_to else None
        return Incoming(
            delivery.body,
            props.content_type,
            delivery.routing_key,
            dict(props.headers or {}),
            text,
            reply,
        )

    def reply_address(self, reply_to: str) -> str:
        """A reply-to as it can be sent to (``/queue/X`` as ``/amq/queue/X`` on RabbitMQ 3.x)."""
        if self._rabbitmq3 and reply_to.startswith("/queue/"):
            return "/amq/queue/" + reply_to[len("/queue/") :]
        return reply_to

    def wrap(
        self, incoming: Incoming, body: bytes, content_type: str | None, error: BaseException | None
    ) -> Outgoing | None:
        reply = incoming.reply
        if not isinstance(reply, _ReplyTo):
            return None
        correlation = reply.correlation
        text = correlation if isinstance(correlation, str) else None
        address = self.reply_address(reply.address)
        if error is not None:
            return Message(
                "",
                address,
                str(error).encode(),
                LinkProperties(
                    content_type=error_content_type(error),
                    headers=error_headers(error),
                    correlation_id=text,
                    correlation=correlation,
                ),
            )
        return Message(
            "",
            address,
            body,
            LinkProperties(content_type=content_type, correlation_id=text, correlation=correlation),
        )


class _Amqp10(Convention):
    def __init__(self, service_address: str | None, reply_address: str | None) -> None:
        base = _check_address(service_address, "service_address") if service_address else ""
        if reply_address is not None:
            _check_address(reply_address, "reply_address")
            if not reply_address:
                raise ConfigError("reply_address must not be empty (None: automatic)")
        self.base = base
        self.reply_address = reply_address
        self.name = f"amqp10({base!r})" if base else "amqp10()"

    def client(self, exchange: str, exchange_type: str, durable: bool) -> Amqp10Client:
        if exchange:
            raise ConfigError(
                f"the {self.name} convention has no exchanges: drop exchange= "
                "(the address is service_address + routing key)"
            )
        return Amqp10Client(self.base, self.reply_address)

    def server(self, options: ServerOptions) -> Amqp10Server:
        if options.exchange or options.routing_keys is not None:
            raise ConfigError(
                f"the {self.name} convention has no exchanges or bindings: "
                "drop exchange= and routing_keys= (the address is service_address + queue)"
            )
        address = self.base + (options.queue or "")
        if not address:
            raise ConfigError(f"a {self.name} server needs queue= (its address)")
        return Amqp10Server(address)


def amqp10(service_address: str | None = None, *, reply_address: str | None = None) -> Convention:
    """RPC over AMQP 1.0 links (see the module docstring).

    ``service_address`` is the base of the addresses: a client sends to it
    plus the routing key, a server serves it plus ``queue``. ``reply_address``
    fixes the client's reply address (``{id}`` becomes its id); by default a
    dynamic node, or ``/queue/hare-reply-<id>`` on RabbitMQ 3.x.
    """
    return _Amqp10(service_address, reply_address)
