"""Seam messages to AMQP 1.0 bytes and back, and error conditions to reply codes.

Rules this module keeps:

- Encoding is checked whole before anything is sent: a message that cannot
  be put on the wire raises ``UnsendableMessage`` with its index, and the
  caller sends none of its batch.
- Bodies go out as one data section (``inferred=True``): without it proton
  sends bytes as an amqp-value, which an AMQP 0-9-1 consumer receives
  encoded instead of as the bytes.
- Decoding never raises: a message that does not decode, has no body
  section (proton decodes garbage as an empty message), or whose body is
  not bytes or text, arrives as a ``Delivery`` marked ``undecodable``.
- Types are kept: a correlation-id comes back in ``LinkProperties.correlation``
  as the string, ulong (int), uuid or binary it was; an absent content-type
  (which proton reads back as ``symbol('None')``) is ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import proton

from ...errors import UnsendableMessage
from ..base import (
    ACCESS_REFUSED,
    CONNECTION_FORCED,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_FOUND,
    PRECONDITION_FAILED,
    RESOURCE_LOCKED,
    CorrelationId,
    Delivery,
    LinkProperties,
    Message,
    Properties,
)

__all__ = ["INTERNAL_ERROR", "decode", "encode", "reply_code"]

INTERNAL_ERROR = 541
_CODES = {
    "amqp:not-found": NOT_FOUND,
    "amqp:unauthorized-access": ACCESS_REFUSED,
    "amqp:resource-locked": RESOURCE_LOCKED,
    "amqp:precondition-failed": PRECONDITION_FAILED,
    "amqp:not-allowed": NOT_ALLOWED,
    "amqp:connection:forced": CONNECTION_FORCED,
    "amqp:link:detach-forced": CONNECTION_FORCED,
    "amqp:session:window-violation": NOT_ALLOWED,
    "amqp:resource-limit-exceeded": PRECONDITION_FAILED,
    "amqp:link:message-size-exceeded": PRECONDITION_FAILED,
    "amqp:not-implemented": NOT_ALLOWED,
    "amqp:unauthorized": ACCESS_REFUSED,  # RabbitMQ 3.x's spelling
}
_HEADER_TYPES = (str, bool, int, float, bytes, UUID, type(None))
_MAX_HEADERS = 256


def reply_code(condition: str | None) -> int:
    """The AMQP 0-9-1 reply code for an AMQP 1.0 error condition (541 for others)."""
    if condition is None:
        return NO_ROUTE
    return _CODES.get(condition, INTERNAL_ERROR)


def _typed_id(value: CorrelationId, what: str, index: int) -> Any:
    if isinstance(value, bool):
        raise UnsendableMessage(index, f"a {what} cannot be a bool")
    if isinstance(value, int):
        if not 0 <= value < 2**64:
            raise UnsendableMessage(index, f"a numeric {what} is a ulong (0 to 2**64-1)")
        return proton.ulong(value)
    if isinstance(value, str | UUID | bytes):
        return value
    raise UnsendableMessage(index, f"a {what} is a str, int, UUID or bytes, not {value!r:.40}")


def _headers(headers: Mapping[str, Any], index: int) -> dict[str, Any]:
    if len(headers) > _MAX_HEADERS:
        raise UnsendableMessage(index, f"more than {_MAX_HEADERS} headers")
    out: dict[str, Any] = {}
    for key, value in headers.items():
        if not isinstance(key, str):
            raise UnsendableMessage(index, f"a header name must be a string, got {key!r:.40}")
        if not isinstance(value, _HEADER_TYPES):
            raise UnsendableMessage(
                index,
                f"header {key!r:.40}: AMQP 1.0 application-properties hold simple values "
                f"(str, int, float, bool, bytes, UUID), not {type(value).__name__}",
            )
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise UnsendableMessage(index, f"header {key!r:.40}: integer out of range")
        out[key] = value
    return out


def encode(message: Message, index: int, limit: int) -> bytes:
    """The transfer payload of ``message``; ``UnsendableMessage(index)`` if it cannot go."""
    exchange, address, body, props = message
    if exchange:
        raise UnsendableMessage(
            index, f"AMQP 1.0 has no exchanges (exchange {exchange!r:.60}): leave it ''"
        )
    if not address:
        raise UnsendableMessage(index, "an AMQP 1.0 message needs an address (the routing key)")
    if props.type is not None or props.app_id is not None:
        raise UnsendableMessage(index, "AMQP 1.0 has no type or app_id property: use a header")
    out = proton.Message(body=bytes(body), inferred=True)
    typed = props.correlation if isinstance(props, LinkProperties) else None
    if isinstance(props, LinkProperties) and props.subject is not None:
        out.subject = props.subject
    correlation = typed if typed is not None else props.correlation_id
    if correlation is not None:
        out.correlation_id = _typed_id(correlation, "correlation-id", index)
    if props.message_id is not None:
        out.id = props.message_id
    if props.reply_to is not None:
        out.reply_to = props.reply_to
    if props.content_type is not None:
        out.content_type = props.content_type
    if props.content_encoding is not None:
        out.content_encoding = props.content_encoding
    if props.user_id is not None:
        out.user_id = props.user_id.encode()
    if props.headers:
        out.properties = cast(Any, _headers(props.headers, index))  # typed None by proton
    if props.expiration is not None:
        try:
            out.ttl = int(props.expiration) / 1000
        except ValueError:
            raise UnsendableMessage(index, "expiration is milliseconds, as digits") from None
    if props.delivery_mode == 2:
        out.durable = True
    if props.priority is not None:
        out.priority = props.priority
    if props.timestamp is not None:
        out.creation_time = props.timestamp.timestamp()
    try:
        data: bytes = out.encode()
    except (proton.MessageException, proton.DataException, OverflowError, ValueError) as exc:
        raise UnsendableMessage(index, f"cannot encode the message: {exc}") from None
    if limit and len(data) > limit:
        raise UnsendableMessage(
            index, f"the message is {len(data)} bytes, over the peer's max-message-size {limit}"
        )
    return data


def _text(value: object) -> str | None:
    """A string property; proton reads an absent symbol back as ``symbol('None')``."""
    if value is None or (value == "None" and isinstance(value, proton.symbol)):
        return None
    return str(value)


def _body(body: object) -> bytes | None:
    if isinstance(body, bytes):
        return body
    if isinstance(body, memoryview | bytearray):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return None


def _correlation(value: object) -> CorrelationId | None:
    if isinstance(value, str | bytes | UUID) or value is None:
        return value
    if isinstance(value, int):
        return int(value)  # ulong to a plain int
    if isinstance(value, memoryview):
        return bytes(value)
    return str(value)


def decode(data: bytes, address: str, tag: int, link: str, redelivered: bool) -> Delivery:
    """A received transfer as a seam ``Delivery`` (``undecodable`` when it does not decode)."""
    message = proton.Message()
    try:
        message.decode(data)
        if message.body is None:
            # proton's decoder is lenient: bytes that are no message decode as an
            # empty one, and AMQP 1.0 asks for a body section anyway.
            raise ValueError("no body section")
        body = _body(message.body)
        if body is None:
            raise ValueError(f"an amqp-value body of type {type(message.body).__name__}")
        correlation = _correlation(message.correlation_id)
        headers = message.properties
        if headers is not None and not isinstance(headers, dict):
            raise ValueError("application-properties that are not a map")
        ttl = message.ttl
        created = message.creation_time
        user = message.user_id
        props = LinkProperties(
            content_type=_text(message.content_type),
            content_encoding=_text(message.content_encoding),
            headers={str(k): v for k, v in headers.items()} if headers else None,
            delivery_mode=2 if message.durable else None,
            priority=message.priority if message.priority != 4 else None,
            correlation_id=correlation if isinstance(correlation, str) else None,
            reply_to=_text(message.reply_to),
            expiration=str(round(ttl * 1000)) if ttl else None,
            message_id=_text(message.id),
            timestamp=datetime.fromtimestamp(created, UTC) if created else None,
            user_id=bytes(user).decode(errors="replace") if user else None,
            subject=_text(message.subject),
            correlation=correlation,
        )
    except Exception as exc:  # proton raises several kinds; none may escape
        return Delivery(
            b"", Properties(), "", address, tag, link, redelivered, f"{type(exc).__name__}: {exc}"
        )
    return Delivery(body, props, "", address, tag, link, redelivered)
