"""AMQP 0-9-1 field tables and arrays, bounded: one codec for both AMQP backends.

Rules this module keeps:

- Parsers are a security boundary. Decoding walks the input once through a
  memoryview with offsets (no copies of the remainder, so the cost is linear
  in its size); nesting is bounded by ``MAX_DEPTH``, a table's values by
  ``MAX_ENTRIES`` and its size by ``MAX_SIZE``; every value must end inside its
  container. Every failure is a ``FieldTableError`` (a ``ValueError``), never a
  ``RecursionError``, ``struct.error``, ``UnicodeDecodeError`` or ``OverflowError``.
- Decoding gives what pamqp gives for the same bytes (RabbitMQ's type tags,
  pamqp's Python types), as plain ``dict`` and ``list``; a key that is not
  UTF-8 and a timestamp no ``datetime`` can hold are errors, as they are to
  pamqp (which raises less helpful ones).
- Encoding writes what pamqp writes for every value pamqp takes (keys sorted,
  integers in the smallest type, floats as 32-bit ``f``), and refuses what AMQP
  cannot carry or pamqp would silently change: keys that are not ``str`` or
  are over 128 bytes (pamqp truncates them), lone surrogates, integers outside
  signed 64 bits, timestamps before 1970, nesting over ``MAX_DEPTH``, types
  with no AMQP field type. It takes a little more than pamqp where AMQP has a
  type for it: ``bytes`` (a byte array, ``x``), any ``Mapping``, tuples (arrays),
  and floats too large for 32 bits (doubles, ``d``).
"""

from __future__ import annotations

import calendar
import struct
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_ENTRIES",
    "MAX_KEY_SIZE",
    "MAX_SIZE",
    "FieldTableError",
    "decode_table",
    "decode_timestamp",
    "encode_table",
    "encode_timestamp",
]

MAX_DEPTH = 64  # tables and arrays inside one another, the outermost table counting as 1
MAX_ENTRIES = 1 << 18  # values in one table, all levels together
MAX_SIZE = 1 << 24  # encoded bytes of one table
MAX_KEY_SIZE = 128  # AMQP 0-9-1: field names are at most 128 bytes

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_DECIMAL = struct.Struct(">Bi")
_U32_MAX = 0xFFFFFFFF
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1

# Fixed-size numbers by type tag, as pamqp decodes them ('L' signed, like pamqp).
_NUMBERS: dict[int, struct.Struct] = {
    ord("b"): struct.Struct(">b"),
    ord("B"): struct.Struct(">B"),
    ord("s"): struct.Struct(">h"),
    ord("u"): struct.Struct(">H"),
    ord("I"): struct.Struct(">i"),
    ord("i"): struct.Struct(">I"),
    ord("l"): struct.Struct(">q"),
    ord("L"): struct.Struct(">q"),
    ord("f"): _F32,
    ord("d"): _F64,
}
# pamqp's choice of integer type: the smallest that holds the value.
_INTEGERS = (
    (-(1 << 7), (1 << 7) - 1, b"b", struct.Struct(">b")),
    (-(1 << 15), (1 << 15) - 1, b"s", struct.Struct(">h")),
    (0, (1 << 16) - 1, b"u", struct.Struct(">H")),
    (-(1 << 31), (1 << 31) - 1, b"I", struct.Struct(">i")),
    (0, _U32_MAX, b"i", struct.Struct(">I")),
    (_I64_MIN, _I64_MAX, b"l", struct.Struct(">q")),
)
_S, _T, _D, _A, _F, _TS, _V, _X, _NUL = (ord(c) for c in "StDAFTVx\0")


class FieldTableError(ValueError):
    """A value AMQP 0-9-1 field tables cannot carry, or bytes that are not a field table."""


# -- timestamps -------------------------------------------------------------------


def encode_timestamp(value: Any) -> bytes:
    """A timestamp's 8 bytes (seconds since 1970, UTC); a naive datetime is taken as UTC."""
    try:
        if isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                value = value.replace(tzinfo=UTC)
            seconds = int(value.timestamp())
        elif isinstance(value, time.struct_time):
            seconds = calendar.timegm(value)
        else:
            raise FieldTableError(f"a timestamp must be a datetime, got {type(value).__name__}")
    except (OverflowError, OSError) as exc:
        raise FieldTableError(f"timestamp {value} is out of range: {exc}") from None
    if not 0 <= seconds < 1 << 64:
        raise FieldTableError(f"timestamp {value} is before 1970 or too far ahead")
    return _U64.pack(seconds)


def decode_timestamp(seconds: int) -> datetime:
    """An AMQP timestamp as pamqp reads it (over 2**32 - 1: milliseconds), in UTC."""
    value: float = seconds / 1000.0 if seconds > _U32_MAX else seconds
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise FieldTableError(f"timestamp {seconds} is out of range") from None


# -- encoding ---------------------------------------------------------------------


def encode_table(table: Mapping[str, Any]) -> bytes:
    """A field table (with its 4-byte size); ``FieldTableError`` for what AMQP cannot carry."""
    return _Encoder().table(table, 1)


class _Encoder:
    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries = 0

    def table(self, table: Any, depth: int) -> bytes:
        if not isinstance(table, Mapping):
            raise FieldTableError(f"a field table must be a mapping, got {type(table).__name__}")
        if depth > MAX_DEPTH:
            raise FieldTableError(f"tables and arrays are nested deeper than {MAX_DEPTH} levels")
        if not table:
            return b"\0\0\0\0"
        for key in table:
            if not isinstance(key, str):
                raise FieldTableError(f"a key must be a string, got {type(key).__name__}")
        parts: list[bytes] = []
        append = parts.append
        for key in sorted(table):
            try:
                raw = key.encode()
            except UnicodeEncodeError:
                raise FieldTableError(f"key {key[:40]!r} is not valid Unicode") from None
            if len(raw) > MAX_KEY_SIZE:
                raise FieldTableError(
                    f"key {key[:40]!r}... is {len(raw)} bytes long, over {MAX_KEY_SIZE}"
                )
            append(bytes((len(raw),)))
            append(raw)
            if depth > 1:
                append(self.value(table[key], depth))
                continue
            try:
                append(self.value(table[key], depth))
            except FieldTableError as exc:  # name the top-level key only
                raise FieldTableError(f"{key[:40]!r}: {exc}") from None
        return self.sized(b"".join(parts))

    def array(self, array: list[Any] | tuple[Any, ...], depth: int) -> bytes:
        if depth > MAX_DEPTH:
            raise FieldTableError(f"tables and arrays are nested deeper than {MAX_DEPTH} levels")
        value = self.value
        return self.sized(b"".join([value(item, depth) for item in array]))

    def sized(self, data: bytes) -> bytes:
        if len(data) > MAX_SIZE:
            raise FieldTableError(f"the table encodes to {len(data)} bytes, over {MAX_SIZE}")
        return _U32.pack(len(data)) + data

    def value(self, value: Any, depth: int) -> bytes:
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise FieldTableError(f"the table holds more than {MAX_ENTRIES} values")
        if isinstance(value, str):
            try:
                raw = value.encode()
            except UnicodeEncodeError:
                raise FieldTableError(f"string {value[:40]!r} is not valid Unicode") from None
            return b"S" + self.sized(raw)
        if isinstance(value, bool):
            return b"t\x01" if value else b"t\x00"
        if isinstance(value, int):
            for low, high, tag, packer in _INTEGERS:
                if low <= value <= high:
                    return tag + packer.pack(value)
            raise FieldTableError(f"integer {value} is outside the signed 64-bit range")
        if value is None:
            return b"V"
        if isinstance(value, Mapping):
            return b"F" + self.table(value, depth + 1)
        if isinstance(value, list | tuple):
            return b"A" + self.array(value, depth + 1)
        if isinstance(value, float):
            try:
                return b"f" + _F32.pack(value)
            except OverflowError:
                return b"d" + _F64.pack(value)  # 32 bits cannot hold it; AMQP has doubles
        if isinstance(value, datetime | time.struct_time):
            return b"T" + encode_timestamp(value)
        if isinstance(value, Decimal):
            return b"D" + _decimal(value)
        if isinstance(value, bytes | bytearray):
            return b"x" + self.sized(bytes(value))
        raise FieldTableError(f"{type(value).__name__} has no AMQP field type")


def _decimal(value: Decimal) -> bytes:
    """As pamqp: ``decimals`` octet (0-255), then a signed 32-bit mantissa."""
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):
        raise FieldTableError(f"decimal {value} is not a number AMQP can carry")
    if exponent > 0:
        scale, mantissa = 0, int(value)
    else:
        scale = -exponent
        mantissa = int(value.scaleb(scale))
    if scale > 255 or not -(1 << 31) <= mantissa < (1 << 31):
        raise FieldTableError(f"decimal {value} needs more than 255 places or 32 bits")
    return _DECIMAL.pack(scale, mantissa)


# -- decoding ---------------------------------------------------------------------


def decode_table(
    data: bytes | bytearray | memoryview, offset: int = 0
) -> tuple[dict[str, Any], int]:
    """The field table at ``offset`` (its 4-byte size first) and the offset after it."""
    view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
    with view:
        return _Decoder(view).table(offset, len(view), 1)


class _Decoder:
    __slots__ = ("entries", "view")

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.entries = 0

    def sized(self, offset: int, limit: int, what: str) -> tuple[int, int]:
        """The (start, end) of the sized item at ``offset``, inside ``limit``."""
        if offset + 4 > limit:
            raise FieldTableError(f"{what} size runs past its container")
        (size,) = _U32.unpack_from(self.view, offset)
        start = offset + 4
        end = start + size
        if end > limit:
            raise FieldTableError(f"{what} of {size} bytes runs past its container")
        return start, end

    def table(self, offset: int, limit: int, depth: int) -> tuple[dict[str, Any], int]:
        if depth > MAX_DEPTH:
            raise FieldTableError(f"tables and arrays are nested deeper than {MAX_DEPTH} levels")
        pos, end = self.sized(offset, limit, "a table")
        if end - pos > MAX_SIZE:
            raise FieldTableError(f"a table of {end - pos} bytes is over {MAX_SIZE}")
        view = self.view
        value = self.value
        result: dict[str, Any] = {}
        while pos < end:
            key_end = pos + 1 + view[pos]
            if key_end >= end:  # the key, and at least a type tag, must fit
                raise FieldTableError("a table entry runs past its table")
            try:
                key = str(view[pos + 1 : key_end], "utf-8")
            except UnicodeDecodeError:
                raise FieldTableError(
                    f"key {bytes(view[pos + 1 : key_end])!r} is not UTF-8"
                ) from None
            result[key], pos = value(key_end, end, depth)
        return result, end

    def array(self, offset: int, limit: int, depth: int) -> tuple[list[Any], int]:
        if depth > MAX_DEPTH:
            raise FieldTableError(f"tables and arrays are nested deeper than {MAX_DEPTH} levels")
        pos, end = self.sized(offset, limit, "an array")
        value = self.value
        result: list[Any] = []
        append = result.append
        while pos < end:
            item, pos = value(pos, end, depth)
            append(item)
        return result, end

    def value(self, pos: int, limit: int, depth: int) -> tuple[Any, int]:
        """The tagged value at ``pos``, which must end by ``limit``."""
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise FieldTableError(f"the table holds more than {MAX_ENTRIES} values")
        view = self.view
        tag = view[pos]
        pos += 1
        number = _NUMBERS.get(tag)
        if number is not None:
            end = pos + number.size
            if end > limit:
                raise FieldTableError(f"a {chr(tag)!r} value runs past its container")
            return number.unpack_from(view, pos)[0], end
        if tag == _S:
            start, end = self.sized(pos, limit, "a string")
            raw = view[start:end]
            try:
                return str(raw, "utf-8"), end
            except UnicodeDecodeError:
                return bytes(raw), end  # as pamqp: a long string that is not text stays bytes
        if tag == _T:
            if pos >= limit:
                raise FieldTableError("a boolean runs past its container")
            return view[pos] != 0, pos + 1
        if tag == _F:
            return self.table(pos, limit, depth + 1)
        if tag == _A:
            return self.array(pos, limit, depth + 1)
        if tag in (_V, _NUL):
            return None, pos
        if tag == _TS:
            if pos + 8 > limit:
                raise FieldTableError("a timestamp runs past its container")
            return decode_timestamp(_U64.unpack_from(view, pos)[0]), pos + 8
        if tag == _D:
            if pos + 5 > limit:
                raise FieldTableError("a decimal runs past its container")
            scale, mantissa = _DECIMAL.unpack_from(view, pos)
            return Decimal(mantissa) * (Decimal(10) ** -scale), pos + 5
        if tag == _X:
            start, end = self.sized(pos, limit, "a byte array")
            return bytearray(view[start:end]), end
        raise FieldTableError(f"unknown field type {bytes((tag,))!r}")
