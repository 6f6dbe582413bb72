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
  as the string, ulong (int), uuid or binary it was; an absent property is
  ``None``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
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

_c: Any = importlib.import_module("cproton")  # proton's C binding, untyped


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


# C messages to reuse: making and freeing one costs four times clearing it. A list's
# pop and append are atomic, so threads with loops of their own may share it.
_SPARE: list[Any] = []
_SPARE_MAX = 8


def _take_message() -> Any:
    try:
        return _SPARE.pop()
    except IndexError:
        return _c.pn_message()


def _give_back(message: Any) -> None:
    if len(_SPARE) < _SPARE_MAX:
        _c.pn_message_clear(message)
        _SPARE.append(message)
    else:
        _c.pn_message_free(message)


def _set(failed: int | None) -> None:
    """Check a proton setter's result (some return nothing, the rest an error code)."""
    if failed is not None and failed < 0:
        raise ValueError(f"proton error {failed}")


def _encode(out: Any, body: bytes, props: Properties, index: int) -> bytes:
    """``props`` and ``body`` into the C message ``out``, encoded (through proton's C
    binding: proton's ``Message`` builds a wrapper per section and encodes into a
    buffer doubled from 16 bytes until it fits)."""
    _c.pn_message_set_inferred(out, True)  # bytes as a data section, not an amqp-value
    section = _c.pn_message_body(out)
    _set(_c.pn_data_put_binary(section, bytes(body)))
    typed = props.correlation if isinstance(props, LinkProperties) else None
    if isinstance(props, LinkProperties) and props.subject is not None:
        _set(_c.pn_message_set_subject(out, props.subject))
    correlation = typed if typed is not None else props.correlation_id
    if correlation is not None:
        _set(_c.pn_message_set_correlation_id(out, _typed_id(correlation, "correlation-id", index)))
    if props.message_id is not None:
        _set(_c.pn_message_set_id(out, props.message_id))
    if props.reply_to is not None:
        _set(_c.pn_message_set_reply_to(out, props.reply_to))
    if props.content_type is not None:
        _set(_c.pn_message_set_content_type(out, props.content_type))
    if props.content_encoding is not None:
        _set(_c.pn_message_set_content_encoding(out, props.content_encoding))
    if props.user_id is not None:
        _set(_c.pn_message_set_user_id(out, props.user_id.encode()))
    if props.headers:
        application = proton.Data(_c.pn_message_properties(out))
        application.put_object(_headers(props.headers, index))
    if props.expiration is not None:
        try:
            ttl = int(props.expiration)
        except ValueError:
            raise UnsendableMessage(index, "expiration is milliseconds, as digits") from None
        _set(_c.pn_message_set_ttl(out, ttl))
    if props.delivery_mode == 2:
        _set(_c.pn_message_set_durable(out, True))
    if props.priority is not None:
        _set(_c.pn_message_set_priority(out, props.priority))
    if props.timestamp is not None:
        _set(_c.pn_message_set_creation_time(out, int(props.timestamp.timestamp() * 1000)))
    size = len(body) + 512
    while True:
        failed, data = _c.pn_message_encode(out, size)
        if failed != _c.PN_OVERFLOW:
            _set(failed)
            return bytes(data)
        size *= 2


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
    out = _take_message()
    try:
        data = _encode(out, body, props, index)
    except UnsendableMessage:
        raise
    except (proton.MessageException, proton.DataException, OverflowError, ValueError) as exc:
        raise UnsendableMessage(index, f"cannot encode the message: {exc}") from None
    finally:
        _give_back(out)
    if limit and len(data) > limit:
        raise UnsendableMessage(
            index, f"the message is {len(data)} bytes, over the peer's max-message-size {limit}"
        )
    return data


def _body(data: Any) -> bytes:
    """The body section: bytes (a data section, or an amqp-value of binary) or text."""
    _c.pn_data_rewind(data)
    if not _c.pn_data_next(data):
        # proton's decoder is lenient: bytes that are no message decode as an empty
        # one, and AMQP 1.0 asks for a body section anyway.
        raise ValueError("no body section")
    kind = _c.pn_data_type(data)
    if kind == _c.PN_BINARY:
        return bytes(_c.pn_data_get_binary(data))
    if kind == _c.PN_STRING:
        return str(_c.pn_data_get_string(data)).encode()
    raise ValueError(f"an amqp-value body of AMQP type {kind}")


def _message_id(value: Any) -> CorrelationId | None:
    """A message-id or correlation-id as its Python type (uuid arrives as a tuple)."""
    if isinstance(value, tuple):
        return UUID(bytes=bytes(value[1])) if value[0] == _c.PN_UUID else None
    if value is None or isinstance(value, str | UUID):
        return value
    if isinstance(value, int):
        return int(value)  # ulong to a plain int
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value)


def _app_properties(data: Any) -> dict[str, Any] | None:
    _c.pn_data_rewind(data)
    if not _c.pn_data_next(data):
        return None
    headers = proton.Data(data).get_object()
    if not isinstance(headers, dict):
        raise ValueError("application-properties that are not a map")
    return {str(k): v for k, v in headers.items()} if headers else None


def decode(data: bytes, address: str, tag: int, link: str, redelivered: bool) -> Delivery:
    """A received transfer as a seam ``Delivery`` (``undecodable`` when it does not decode).

    Read through proton's C binding, section by section: proton's ``Message``
    would convert every section and property to Python objects first, at
    three times the cost.
    """
    message = _take_message()
    try:
        failed = _c.pn_message_decode(message, data)
        if failed < 0:
            raise ValueError(f"not an AMQP 1.0 message (proton error {failed})")
        body = _body(_c.pn_message_body(message))
        correlation = _message_id(_c.pn_message_get_correlation_id(message))
        ttl = _c.pn_message_get_ttl(message)
        created = _c.pn_message_get_creation_time(message)
        user = _c.pn_message_get_user_id(message)
        message_id = _message_id(_c.pn_message_get_id(message))
        priority = _c.pn_message_get_priority(message)
        props = LinkProperties(
            content_type=_c.pn_message_get_content_type(message),
            content_encoding=_c.pn_message_get_content_encoding(message),
            headers=_app_properties(_c.pn_message_properties(message)),
            delivery_mode=2 if _c.pn_message_is_durable(message) else None,
            priority=priority if priority != 4 else None,
            correlation_id=correlation if isinstance(correlation, str) else None,
            reply_to=_c.pn_message_get_reply_to(message),
            expiration=str(ttl) if ttl else None,
            message_id=str(message_id) if message_id is not None else None,
            timestamp=datetime.fromtimestamp(created / 1000, UTC) if created else None,
            user_id=bytes(user).decode(errors="replace") if user else None,
            subject=_c.pn_message_get_subject(message),
            correlation=correlation,
        )
    except Exception as exc:  # proton raises several kinds; none may escape
        return Delivery(
            b"", Properties(), "", address, tag, link, redelivered, f"{type(exc).__name__}: {exc}"
        )
    finally:
        _give_back(message)
    return Delivery(body, props, "", address, tag, link, redelivered)
