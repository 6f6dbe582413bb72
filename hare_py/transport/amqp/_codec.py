"""Hand-written AMQP 0-9-1 codecs for the frames of every RPC: publish, deliver, content.

pamqp's generic (un)marshalling walks each method's attribute list and type
names; for the three frames every request and reply makes (``basic.publish``
or ``basic.deliver``, the content header, the body) that was a quarter of the
client's CPU. These functions do the same bytes directly, between the wire and
hare_py's ``Properties``. Field tables and timestamps still go through pamqp.
Equivalence with pamqp is property-tested (``tests/unit/test_amqp_codec.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from pamqp import constants, decode, encode
from pamqp.commands import Basic, Channel, Connection

from ..base import Properties

__all__ = [
    "decode_close",
    "decode_deliver",
    "plain",
    "decode_header",
    "encode_header",
    "encode_publish",
]

_FRAME = struct.Struct(">BHI")
_PUBLISH = struct.Struct(">HHH")  # class 60, method 40, reserved-1
_DELIVER_TAG = struct.Struct(">QB")  # delivery-tag, redelivered bit
_HEADER = struct.Struct(">HHQH")  # class 60, weight 0, body size, property flags
_END = b"\xce"

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


def _short(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    data = value.encode()
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
                parts.append(encode.field_table(dict(value)))
            except TypeError as exc:
                raise ValueError(f"headers: {exc}") from None
        else:
            try:
                parts.append(encode.timestamp(value))
            except TypeError as exc:
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
    """The frames of one publish: method, content header, body in frame_max pieces."""
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
    frames = [
        _FRAME.pack(1, channel, len(payload)) + payload + _END,
        encode_header(channel, len(body), properties),
    ]
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


def plain(value: Any) -> Any:
    """Field tables as plain dicts and lists, all the way down."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def decode_header(payload: bytes) -> tuple[int, Properties]:
    """A content header payload: the body size and the properties."""
    _, _, body_size, flags = _HEADER.unpack_from(payload, 0)
    if not flags:
        return body_size, Properties()
    offset = _HEADER.size
    values: dict[str, Any] = {}
    for flag, name, kind in _FIELDS:
        if not flags & flag:
            continue
        if kind == "s":
            values[name], offset = _str(payload, offset)
        elif kind == "o":
            values[name] = payload[offset]
            offset += 1
        elif kind == "t":
            try:
                used, table = decode.field_table(payload[offset:])
                values[name] = plain(table)
            except UnicodeDecodeError:
                # A key that is not UTF-8, from whichever client published the
                # message: drop the table rather than the connection.
                used = 4 + struct.unpack_from(">I", payload, offset)[0]
            offset += used
        else:
            used, stamp = decode.timestamp(payload[offset:])
            values[name] = stamp
            offset += used
    if flags & _CLUSTER_ID:
        _, offset = _str(payload, offset)
    if offset > len(payload):
        raise ValueError("content header runs past the frame")
    return body_size, Properties(**values)
