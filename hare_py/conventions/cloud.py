"""The "Cloud.Service.RPC1" convention: request and response exchanges, DTO envelopes.

Wire names::

    Cloud.Service.RPC1.Requests            topic exchange, durable (documented as direct: see below)
    Cloud.Service.RPC1.Responses           direct exchange, durable
    RPC.Cloud.<ServiceType>.<Resource>.<Action>   a request's routing key
    Cloud.Service.RPC1.Requests.<ServiceType>     a server's queue (durable), bound with
                                                  RPC.Cloud.<ServiceType>.*.* by default
    amq.gen-...                             a client's reply queue (exclusive, server-named),
                                            bound to the Responses exchange with its own name

Bodies are JSON envelopes: ``RPCRequestDTO`` and ``RPCResponseDTO``. Their
``Payload`` is the request or response itself, serialised as JSON into a
string (the DTO's class name fields say what to deserialise it into).

Deviation from the Cloud.Service.RPC1 conventions: they call the Requests
exchange ``direct`` but have servers bind with wildcards
(``RPC.Cloud.<ServiceType>.*``, ``RPC.Cloud.*.<Resource>.*``); only a topic
exchange matches wildcards (a direct one compares them literally), so the
Requests exchange is declared as topic. A topic exchange routes exact keys as
a direct one does, so callers see no difference. Their first pattern,
``RPC.Cloud.<ServiceType>.*``, has four words and matches no five-word key;
the default binding is ``RPC.Cloud.<ServiceType>.*.*``, the shape of their
resource pattern.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Self

from ..errors import ConfigError, RemoteError
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
    "CONTENT_TYPE",
    "REQUESTS_EXCHANGE",
    "RESPONSES_EXCHANGE",
    "CloudClient",
    "CloudServer",
    "RPCRequestDTO",
    "RPCResponseDTO",
    "cloud",
    "routing_key",
    "server_queue",
]

REQUESTS_EXCHANGE = "Cloud.Service.RPC1.Requests"
RESPONSES_EXCHANGE = "Cloud.Service.RPC1.Responses"
CONTENT_TYPE = "application/json"
#: Status of a successful response, and of a failed one when the error names none.
OK, FAILED = 200, 500
# ResponseId of an answer is derived from its RequestId, so that an answer repeated
# from the server's cache carries the same ResponseId (the client can dedupe on it).
_RESPONSE_ID_NAMESPACE = uuid.UUID("5b0f1c53-6c0e-4b8e-9a4c-3f1d2a7e8c90")


def routing_key(service_type: str, resource: str, action: str) -> str:
    """``RPC.Cloud.<ServiceType>.<Resource>.<Action>``."""
    return f"RPC.Cloud.{service_type}.{resource}.{action}"


def server_queue(service_type: str) -> str:
    """``Cloud.Service.RPC1.Requests.<ServiceType>``: the queue a service type's servers share."""
    return f"{REQUESTS_EXCHANGE}.{service_type}"


def _word(what: str, value: object) -> str:
    """A routing-key word: non-empty, no dots and no wildcards."""
    if not isinstance(value, str) or not value or any(c in value for c in ".*#"):
        raise ConfigError(f"{what} must be one routing-key word (no . * #), got {value!r}")
    return value


# -- envelopes ----------------------------------------------------------------------------
#
# The JSON field names live here and nowhere else: each DTO field's ``wire`` metadata.
# PascalCase, because that is what the conventions' DTOs (C#-style "RPCRequestDTO") serialise
# to by default in .NET (Newtonsoft, System.Text.Json) and in Go (encoding/json without
# tags); "Id", not "ID", per .NET naming. Fields are read case-insensitively, as
# Newtonsoft does, so camelCase peers are understood too.


def _wire(name: str) -> Any:
    return field(default=None, metadata={"wire": name})


def _lookup(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    return {str(k).lower(): v for k, v in data.items()}


def _text(value: Any, wire: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{wire} must be a string, got {value!r:.60}")


def _payload_text(value: Any) -> str | None:
    # The conventions' Payload is JSON serialised into a string; a peer that embeds the
    # JSON value itself is understood too.
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


class _DTO:
    """Encoding shared by the two envelopes."""

    __slots__ = ()

    def encode(self) -> bytes:
        """The envelope as JSON, with its wire field names."""
        return json.dumps(
            {f.metadata["wire"]: getattr(self, f.name) for f in fields(self)},  # type: ignore[arg-type]
            separators=(",", ":"),
        ).encode()

    @classmethod
    def _fields_of(cls, body: bytes) -> dict[str, Any]:
        data = _lookup(body, cls.__name__)
        out: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            wire: str = f.metadata["wire"]
            value = data.get(wire.lower())
            out[f.name] = _payload_text(value) if f.name == "payload" else value
        return out

    @property
    def payload_bytes(self) -> bytes:
        """``Payload`` as a body for the codec (JSON ``null`` when absent)."""
        payload: str | None = getattr(self, "payload", None)
        return b"null" if payload is None else payload.encode()


@dataclass(frozen=True, slots=True)
class RPCRequestDTO(_DTO):
    """A request envelope. ``payload`` is the request serialised as JSON text."""

    reply_routing_key: str | None = _wire("ReplyRoutingKey")
    request_id: str | None = _wire("RequestId")
    correlation_id: str | None = _wire("CorrelationId")
    request_class: str | None = _wire("RequestClass")
    request_type: str | None = _wire("RequestType")
    payload: str | None = _wire("Payload")

    @classmethod
    def decode(cls, body: bytes) -> Self:
        """Parse a request envelope; ``ValueError`` if it is not one."""
        data = cls._fields_of(body)
        for f in fields(cls):
            if f.name != "payload":
                data[f.name] = _text(data[f.name], f.metadata["wire"])
        return cls(**data)


@dataclass(frozen=True, slots=True)
class RPCResponseDTO(_DTO):
    """A response envelope. ``status`` is HTTP-like (200 success); ``error`` says why
    it failed."""

    response_id: str | None = _wire("ResponseId")
    correlation_id: str | None = _wire("CorrelationId")
    response_class: str | None = _wire("ResponseClass")
    response_type: str | None = _wire("ResponseType")
    payload: str | None = _wire("Payload")
    status: int | None = _wire("Status")
    error: str | None = _wire("Error")

    @classmethod
    def decode(cls, body: bytes) -> Self:
        """Parse a response envelope; ``ValueError`` if it is not one."""
        data = cls._fields_of(body)
        for f in fields(cls):
            if f.name not in ("payload", "status"):
                data[f.name] = _text(data[f.name], f.metadata["wire"])
        status = data["status"]
        if isinstance(status, str) and status.strip().isdigit():
            status = int(status)
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
            raise ValueError(f"Status must be an integer, got {status!r:.60}")
        data["status"] = status
        return cls(**data)

    @property
    def failed(self) -> bool:
        """True for an error string or a status outside 2xx (no status: success)."""
        return bool(self.error) or (self.status is not None and not 200 <= self.status < 300)

    def remote_error(self) -> RemoteError:
        """The ``RemoteError`` a failed response means to the caller."""
        status = self.status if self.status is not None else FAILED
        return RemoteError(
            self.response_class or f"Status{status}", self.error or f"status {status}", self
        )


def _status_of(error: BaseException) -> int:
    """An error's own ``status`` (4xx/5xx) if it has one, else 500."""
    status = getattr(error, "status", None)
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
        return status
    return FAILED


# -- the convention -----------------------------------------------------------------------

#: Request headers whose names are RPCRequestDTO fields go into the envelope.
_ENVELOPE_HEADERS = ("RequestId", "RequestClass", "RequestType")


class CloudClient(ClientConvention[Channel]):
    """Calls services of ``service_type``: ``request(payload, "<Resource>.<Action>")``."""

    def __init__(self, service_type: str, request_exchange_type: str = "topic") -> None:
        self.service_type = _word("service_type", service_type)
        self.request_exchange_type = request_exchange_type
        self.exchange = REQUESTS_EXCHANGE

    def __repr__(self) -> str:
        return f"<cloud convention service_type={self.service_type!r}>"

    async def setup(self, channel: Channel, on_reply: OnDelivery, on_cancel: OnCancel) -> str:
        await channel.exchange_declare(
            REQUESTS_EXCHANGE,
            self.request_exchange_type,  # type: ignore[arg-type]  # checked by cloud()
            durable=True,
        )
        await channel.exchange_declare(RESPONSES_EXCHANGE, "direct", durable=True)
        queue = (await channel.queue_declare("", exclusive=True, auto_delete=True)).name
        # The queue's server-chosen name is unique: it doubles as the reply routing key.
        await channel.queue_bind(queue, RESPONSES_EXCHANGE, queue)
        await channel.basic_consume(queue, on_reply, no_ack=True, on_cancel=on_cancel)
        return queue

    def key(self, resource_action: str) -> str:
        """``"<Resource>.<Action>"`` -> ``RPC.Cloud.<ServiceType>.<Resource>.<Action>``."""
        parts = resource_action.split(".")
        if len(parts) != 2:
            raise ConfigError(
                f"a cloud request names '<Resource>.<Action>', got {resource_action!r}"
            )
        return routing_key(
            self.service_type, _word("resource", parts[0]), _word("action", parts[1])
        )

    def wrap(
        self, routing_key: str, body: bytes, content_type: str | None, headers: Mapping[str, Any],
        correlation_id: str, expiration: str | None, reply_queue: str,
    ) -> Outgoing:  # fmt: skip
        key = self.key(routing_key)
        try:
            payload = body.decode()
        except UnicodeDecodeError:
            raise ConfigError(
                "a cloud payload is JSON text; this one is not UTF-8 (use codec=JSON)"
            ) from None
        envelope = {k: headers[k] for k in _ENVELOPE_HEADERS if headers.get(k) is not None}
        for name, value in envelope.items():
            if not isinstance(value, str):
                raise ConfigError(f"the {name} header must be a string, got {value!r}")
        rest = {k: v for k, v in headers.items() if k not in _ENVELOPE_HEADERS}
        dto = RPCRequestDTO(
            reply_routing_key=reply_queue,
            # Default: the correlation id, which an idempotent republish keeps.
            request_id=envelope.get("RequestId", correlation_id),
            correlation_id=correlation_id,
            request_class=envelope.get("RequestClass"),
            request_type=envelope.get("RequestType"),
            payload=payload,
        )
        return Outgoing(
            REQUESTS_EXCHANGE,
            key,
            dto.encode(),
            # correlation_id also as a property: a broker return carries properties only.
            Properties(
                content_type=CONTENT_TYPE,
                correlation_id=correlation_id,
                expiration=expiration,
                headers=rest or None,
            ),
        )

    def unwrap(self, delivery: Delivery) -> IncomingReply:
        dto = RPCResponseDTO.decode(delivery.body)
        props = delivery.properties
        meta = {
            "ResponseId": dto.response_id,
            "ResponseClass": dto.response_class,
            "ResponseType": dto.response_type,
            "Status": dto.status,
        }
        return IncomingReply(
            dto.correlation_id or props.correlation_id or None,
            dto.payload_bytes,
            CONTENT_TYPE,
            {**(props.headers or {}), **meta},
            dto.remote_error() if dto.failed else None,
            delivery.routing_key,
        )


class CloudServer(ServerConvention[Channel]):
    """Serves ``service_type``: consumes its queue, answers with RPCResponseDTOs."""

    def __init__(
        self,
        service_type: str,
        *,
        queue: str | None = None,
        routing_keys: tuple[str, ...] | None = None,
        request_exchange_type: str = "topic",
        response_class: Callable[[str], str | None] | None = None,
    ) -> None:
        self.service_type = _word("service_type", service_type)
        self.queue = queue or server_queue(service_type)
        self.routing_keys = (
            routing_keys if routing_keys is not None else (routing_key(service_type, "*", "*"),)
        )
        self.request_exchange_type = request_exchange_type
        self.response_class = response_class
        self.exchange = REQUESTS_EXCHANGE

    def __repr__(self) -> str:
        return f"<cloud convention queue={self.queue!r} routing_keys={self.routing_keys!r}>"

    async def setup(self, channel: Channel, on_request: OnDelivery, on_cancel: OnCancel) -> None:
        await channel.exchange_declare(
            REQUESTS_EXCHANGE,
            self.request_exchange_type,  # type: ignore[arg-type]  # checked by cloud()
            durable=True,
        )
        await channel.exchange_declare(RESPONSES_EXCHANGE, "direct", durable=True)
        await channel.queue_declare(self.queue, durable=True)
        for key in self.routing_keys:
            await channel.queue_bind(self.queue, REQUESTS_EXCHANGE, key)
        await channel.basic_consume(self.queue, on_request, on_cancel=on_cancel)

    def unwrap(self, delivery: Delivery) -> Incoming:
        dto = RPCRequestDTO.decode(delivery.body)
        meta = {
            "RequestId": dto.request_id,
            "RequestClass": dto.request_class,
            "RequestType": dto.request_type,
        }
        headers = {**(delivery.properties.headers or {})}
        headers.update({k: v for k, v in meta.items() if v is not None})
        return Incoming(
            dto.payload_bytes,
            CONTENT_TYPE,
            delivery.routing_key,
            headers,
            dto.correlation_id or delivery.properties.correlation_id or None,
            dto.reply_routing_key or None,
            dto.request_id or None,
        )

    def wrap(
        self, incoming: Incoming, body: bytes, content_type: str | None, error: BaseException | None
    ) -> Outgoing | None:
        if not incoming.reply:
            return None
        request_id = incoming.request_id
        response_id = str(
            uuid.uuid5(_RESPONSE_ID_NAMESPACE, request_id) if request_id else uuid.uuid4()
        )
        payload: str | None = None
        if error is None:
            try:
                payload = body.decode()
            except UnicodeDecodeError:
                error = ConfigError("the reply is not JSON text (use codec=JSON)")
        if error is not None:
            kind, message = (
                (error.type, error.message)
                if isinstance(error, RemoteError)
                else (type(error).__name__, str(error))
            )
            dto = RPCResponseDTO(
                response_id, incoming.correlation_id, kind, None, None, _status_of(error), message
            )
        else:
            request_class = incoming.headers.get("RequestClass")
            response_class = (
                self.response_class(request_class)
                if self.response_class is not None and isinstance(request_class, str)
                else None
            )
            dto = RPCResponseDTO(
                response_id, incoming.correlation_id, response_class, None, payload, OK, None
            )
        return Outgoing(
            RESPONSES_EXCHANGE,
            incoming.reply,
            dto.encode(),
            Properties(content_type=CONTENT_TYPE, correlation_id=incoming.correlation_id),
        )


class _Cloud(Convention):
    name = "cloud"

    def __init__(
        self,
        service_type: str,
        request_exchange_type: str,
        response_class: Callable[[str], str | None] | None,
    ) -> None:
        self.service_type = _word("service_type", service_type)
        if request_exchange_type not in ("topic", "direct"):
            raise ConfigError(
                f"request_exchange_type must be 'topic' or 'direct', got {request_exchange_type!r}"
            )
        if response_class is not None and not callable(response_class):
            raise ConfigError(f"response_class must be callable, got {response_class!r}")
        self.request_exchange_type = request_exchange_type
        self.response_class = response_class

    def __repr__(self) -> str:
        return f"<cloud convention service_type={self.service_type!r}>"

    def client(self, exchange: str, exchange_type: str, durable: bool) -> CloudClient:
        if exchange:
            raise ConfigError(
                f"the cloud convention names the exchange ({REQUESTS_EXCHANGE!r}); "
                f"do not pass exchange={exchange!r}"
            )
        return CloudClient(self.service_type, self.request_exchange_type)

    def server(self, options: ServerOptions) -> CloudServer:
        if options.exchange:
            raise ConfigError(
                f"the cloud convention names the exchange ({REQUESTS_EXCHANGE!r}); "
                f"do not pass exchange={options.exchange!r}"
            )
        return CloudServer(
            self.service_type,
            queue=options.queue,
            routing_keys=options.routing_keys,
            request_exchange_type=self.request_exchange_type,
            response_class=self.response_class,
        )


def cloud(
    service_type: str,
    *,
    request_exchange_type: Literal["topic", "direct"] = "topic",
    response_class: Callable[[str], str | None] | None = None,
) -> Convention:
    """The Cloud.Service.RPC1 conventions, for services of type ``service_type``.

    A client calls that service type: ``client.request(payload,
    "<Resource>.<Action>")`` is published with the routing key
    ``RPC.Cloud.<ServiceType>.<Resource>.<Action>``. The request headers
    ``RequestId``, ``RequestClass`` and ``RequestType`` fill those envelope
    fields (``RequestId`` defaults to the correlation id); other headers stay
    AMQP headers. A failed response raises ``RemoteError(ResponseClass,
    Error)`` with the response envelope as ``details``.

    A server consumes ``Cloud.Service.RPC1.Requests.<ServiceType>`` (or
    ``queue=``), bound with ``RPC.Cloud.<ServiceType>.*.*`` (or
    ``routing_keys=``, e.g. ``["RPC.Cloud.*.<Resource>.*"]``). Its handler sees
    the envelope's ``RequestId``/``RequestClass``/``RequestType`` in
    ``request.headers``. A raising handler answers ``Status`` 500 (or the
    exception's own ``status`` attribute, 400-599) with ``Error`` = its
    message and ``ResponseClass`` = its class name. ``response_class`` maps a
    request's class name to the ``ResponseClass`` of a successful answer
    (default: none).

    ``request_exchange_type="direct"`` matches a deployment that already
    declared the Requests exchange as direct (wildcard bindings then match
    nothing). Payloads are JSON text: use ``codec=JSON``.
    """
    return _Cloud(service_type, request_exchange_type, response_class)
