"""Hand-written AMQP 0-9-1 codecs for the frames of every RPC: publish, deliver, content.

pamqp's generic (un)marshalling walks each method's attribute list and type
names; for the three frames every request and reply makes (``basic.publish``
or ``basic.deliver``, the content header, the body) that was a quarter of the
client's CPU. These functions do the same bytes directly, between the wire and
hare_py's ``Properties``. Field tables and timestamps go through the bounded
``_fieldtable`` codec, which is also why ``connection.start`` (the one method a
broker sends with a table) is decoded here. Equivalence with pamqp is
property-tested (``tests/unit/test_amqp_codec.py``).

Decoding tells two failures apart. Bytes that break the frame's layout (a
string or table running past the frame) are a ``ValueError``: the stream can
no longer be trusted. A content header whose layout is sound but one of whose
values cannot be decoded (a table nested too deep, a key that is not UTF-8, a
timestamp no ``datetime`` holds) is an ``UndecodableProperties``: the message
can still be received, and refused, on its own.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from pamqp import constants
from pamqp.commands import Basic, Channel, Connection

from ._fieldtable import (
    FieldTableError,
    decode_table,
    decode_timestamp,
    encode_table,
    encode_timestamp,
)
from .base import Properties

__all__ = [
    "FRAME_MAX_LIMIT",
    "FRAME_MIN_SIZE",
    "HANDSHAKE_FRAME_MAX",
    "UndecodableProperties",
    "decode_close",
    "decode_deliver",
    "decode_header",
    "decode_start",
    "encode_header",
    "encode_publish",
    "plain",
]

FRAME_MIN_SIZE = 4096  # AMQP 0-9-1: the least frame_max a peer may ask for
# Frames before connection.tune: a connection.start is well under 1 KiB in practice.
HANDSHAKE_FRAME_MAX = 131072
# The most frame_max this client agrees to, also when the broker offers 0 (no
# limit); RabbitMQ's default is 128 KiB.
FRAME_MAX_LIMIT = 1 << 20
_FRAME = struct.Struct(">BHI")
_PUBLISH = struct.Struct(">HHH")  # class 60, method 40, reserved-1
_DELIVER_TAG = struct.Struct(">QB")  # delivery-tag, redelivered bit
_HEADER = struct.Struct(">HHQH")  # class 60, weight 0, body size, property flags
_END = b"\xce"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_VERSION = struct.Struct(">BB")

# (flag, attribute, kind) in wire order; cluster-id (0x0004) is never sent.
_FIELDS = (
    (0x8000, "content_type", "s"),
    (0x4000, "content_encoding", "s"),
    (0x2000, "headers", "t"),
    (0x1000, "delivery_mode", "o"),
    (0x0800, "priority", "o"),
    (0x0400, "correlation_id", "s"),
    (0x0200, "reply_to", "s"),
    (0x0100, "expiration", "s"),
    (0x0080, "message_id", "s"),
    (0x0040, "timestamp", "T"),
    (0x0020, "type", "s"),
    (0x0010, "user_id", "s"),
    (0x0008, "app_id", "s"),
)
_CLUSTER_ID = 0x0004
_EXCHANGE_NAME = constants.DOMAIN_REGEX["exchange-name"]


class UndecodableProperties(ValueError):
    """A content header whose layout is sound but a property of which cannot be decoded."""

    def __init__(self, body_size: int, reason: str) -> None:
        super().__init__(reason)
        self.body_size = body_size
        self.reason = reason


def _short(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    try:
        data = value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{what} {value[:40]!r} is not valid Unicode") from None
    if len(data) > 255:
        raise ValueError(f"{what} is longer than 255 bytes")
    return bytes((len(data),)) + data


def encode_header(channel: int, body_size: int, properties: Properties) -> bytes:
    """The content header frame; ``ValueError`` for values AMQP cannot carry."""
    flags = 0
    parts: list[bytes] = []
    for flag, name, kind in _FIELDS:
        value = getattr(properties, name)
        if value is None or value == "":  # absent, as pamqp (and so aiormq) sends them
            continue
        flags |= flag
        if kind == "s":
            parts.append(_short(value, name))
        elif kind == "o":
            if name == "delivery_mode" and value not in (1, 2):
                raise ValueError(f"delivery_mode must be 1 or 2, got {value!r}")
            if not isinstance(value, int) or not 0 <= value <= 255:
                raise ValueError(f"{name} must be an integer 0-255, got {value!r}")
            parts.append(bytes((value,)))
        elif kind == "t":
            try:
                parts.append(encode_table(value))
            except FieldTableError as exc:
                raise ValueError(f"headers: {exc}") from None
        else:
            try:
                parts.append(encode_timestamp(value))
            except FieldTableError as exc:
                raise ValueError(f"timestamp: {exc}") from None
    payload = _HEADER.pack(60, 0, body_size, flags) + b"".join(parts)
    return _FRAME.pack(2, channel, len(payload)) + payload + _END


def encode_publish(
    channel: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    body: bytes,
    properties: Properties,
    frame_max: int,
) -> list[bytes]:
    """The frames of one publish: method, content header, body in frame_max pieces.

    A content header over ``frame_max`` is a ``ValueError``: a broker closes
    the whole connection for it (RabbitMQ: 501 FRAME_ERROR).
    """
    if exchange and (len(exchange) > 127 or not _EXCHANGE_NAME.fullmatch(exchange)):
        raise ValueError(f"invalid exchange name {exchange[:130]!r}")  # as pamqp checks it
    payload = b"".join(
        (
            _PUBLISH.pack(60, 40, 0),
            _short(exchange, "exchange"),
            _short(routing_key, "routing key"),
            b"\x01" if mandatory else b"\x00",
        )
    )
    header = encode_header(channel, len(body), properties)
    if frame_max and len(header) > frame_max:
        raise ValueError(
            f"the properties make a content header of {len(header)} bytes, over the "
            f"connection's frame_max of {frame_max} (send fewer or smaller headers)"
        )
    frames = [_FRAME.pack(1, channel, len(payload)) + payload + _END, header]
    size = len(body)
    step = frame_max - 8 if frame_max else size or 1
    pack = _FRAME.pack
    for start in range(0, size, step):
        chunk = body[start : start + step]
        frames.append(pack(3, channel, len(chunk)) + chunk + _END)
    return frames


def _str(data: bytes, offset: int) -> tuple[str, int]:
    end = offset + 1 + data[offset]
    if end > len(data):
        raise ValueError("short string runs past the frame")
    return data[offset + 1 : end].decode("utf-8", "replace"), end


_CLOSE_IDS = struct.Struct(">HH")
_CLOSE = struct.Struct(">H")


def decode_close(payload: bytes) -> Channel.Close | Connection.Close:
    """A ``channel.close`` or ``connection.close`` payload; a reply text that is not
    UTF-8 (RabbitMQ cuts long texts at a byte count) gets replacement characters."""
    (class_id,) = _CLOSE.unpack_from(payload, 0)  # 20 channel or 10 connection; then 40/50
    (code,) = _CLOSE.unpack_from(payload, 4)
    text, offset = _str(payload, 6)
    failed_class, failed_method = _CLOSE_IDS.unpack_from(payload, offset)
    kind = Channel.Close if class_id == 20 else Connection.Close
    return kind(code, text, failed_class, failed_method)


def decode_deliver(payload: bytes) -> Basic.Deliver:
    """A ``basic.deliver`` method payload (after class and method ids at 0-3)."""
    consumer_tag, offset = _str(payload, 4)
    delivery_tag, bits = _DELIVER_TAG.unpack_from(payload, offset)
    exchange, offset = _str(payload, offset + 9)
    routing_key, _ = _str(payload, offset)
    return Basic.Deliver(consumer_tag, delivery_tag, bool(bits & 1), exchange, routing_key)


def _long_str(data: bytes, offset: int) -> tuple[str, int]:
    (size,) = _U32.unpack_from(data, offset)
    end = offset + 4 + size
    if end > len(data):
        raise ValueError("long string runs past the frame")
    return data[offset + 4 : end].decode("utf-8", "replace"), end


def decode_start(payload: bytes) -> Connection.Start:
    """A ``connection.start`` payload, its server properties through the bounded decoder."""
    major, minor = _VERSION.unpack_from(payload, 4)
    try:
        server_properties, offset = decode_table(payload, 6)
    except FieldTableError as exc:
        raise ValueError(f"connection.start server properties: {exc}") from None
    mechanisms, offset = _long_str(payload, offset)
    locales, _ = _long_str(payload, offset)
    return Connection.Start(major, minor, server_properties, mechanisms, locales)


def plain(value: Any) -> Any:
    """Field tables as plain dicts and lists, all the way down."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def decode_header(payload: bytes) -> tuple[int, Properties]:
    """A content header payload: the body size and the properties.

    ``UndecodableProperties`` (with the body size) when the layout holds but a
    value does not decode; ``ValueError``, ``IndexError`` or ``struct.error``
    when the layout itself is broken.
    """
    _, _, body_size, flags = _HEADER.unpack_from(payload, 0)
    if not flags:
        return body_size, Properties()
    offset = _HEADER.size
    values: dict[str, Any] = {}
    problems: list[str] = []
    for flag, name, kind in _FIELDS:
        if not flags & flag:
            continue
        if kind == "s":
            values[name], offset = _str(payload, offset)
        elif kind == "o":
            values[name] = payload[offset]
            offset += 1
        elif kind == "t":
            end = offset + 4 + _U32.unpack_from(payload, offset)[0]
            if end > len(payload):
                raise ValueError("headers run past the frame")
            try:
                values[name], _ = decode_table(payload, offset)
            except FieldTableError as exc:
                problems.append(f"headers: {exc}")
            offset = end
        else:
            (stamp,) = _U64.unpack_from(payload, offset)
            offset += 8
            try:
                values[name] = decode_timestamp(stamp)
            except FieldTableError as exc:
                problems.append(f"timestamp: {exc}")
    if flags & _CLUSTER_ID:
        _, offset = _str(payload, offset)
    if offset > len(payload):
        raise ValueError("content header runs past the frame")
    if problems:
        raise UndecodableProperties(body_size, "; ".join(problems))
    return body_size, Properties(**values)
