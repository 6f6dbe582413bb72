"""The hand-written codecs for publish, deliver and content headers agree with pamqp.

pamqp is the reference: every encoding must be byte-for-byte what pamqp
marshals, and every decoding must give what pamqp unmarshals (through the
aiormq backend's converter to ``Properties``), for every value pamqp takes.
Where pamqp fails (deep nesting, huge timestamps, keys it truncates) the
bounded codec must fail with a ``ValueError`` instead, and decode in linear
time.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, SupportsIndex

import pytest
from hypothesis import given, settings, strategies as st
from pamqp import commands, decode as pamqp_decode, encode as pamqp_encode, frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from hare_py.transport import _fieldtable
from hare_py.transport._amqp_codec import (
    UndecodableProperties,
    decode_deliver,
    decode_header,
    decode_start,
    encode_header,
    encode_publish,
)
from hare_py.transport._fieldtable import FieldTableError, decode_table, encode_table
from hare_py.transport.aiormq_backend._convert import to_pamqp, to_properties
from hare_py.transport.base import Properties

short_text = st.text(max_size=40)
exchange_names = st.text("abcXYZ019-_.:@#,/+ ", max_size=30)
header_values = st.one_of(
    st.integers(min_value=-(2**31), max_value=2**31 - 1), st.text(max_size=20), st.booleans()
)
properties = st.builds(
    Properties,
    content_type=st.none() | short_text,
    content_encoding=st.none() | short_text,
    headers=st.none() | st.dictionaries(st.text(min_size=1, max_size=10), header_values),
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(min_value=0, max_value=255),
    correlation_id=st.none() | short_text,
    reply_to=st.none() | short_text,
    expiration=st.none() | st.integers(min_value=1, max_value=10**9).map(str),
    message_id=st.none() | short_text,
    timestamp=st.none()
    | st.integers(min_value=0, max_value=2**32 - 1).map(lambda s: datetime.fromtimestamp(s, UTC)),
    type=st.none() | short_text,
    user_id=st.none() | short_text,
    app_id=st.none() | short_text,
)


def payload_of(frame: bytes) -> bytes:
    return frame[7:-1]


@settings(max_examples=300, deadline=None)
@given(props=properties, size=st.integers(min_value=0, max_value=2**40))
def test_header_encoding_is_what_pamqp_marshals(props: Properties, size: int) -> None:
    """encode_header writes pamqp's bytes for every property set pamqp takes."""
    expected = pamqp_frame.marshal(ContentHeader(0, size, to_pamqp(props)), 3)
    assert encode_header(3, size, props) == expected


@settings(max_examples=300, deadline=None)
@given(props=properties, size=st.integers(min_value=0, max_value=2**40))
def test_header_decoding_is_what_pamqp_unmarshals(props: Properties, size: int) -> None:
    """decode_header reads back what pamqp unmarshals from pamqp's bytes."""
    wire = pamqp_frame.marshal(ContentHeader(0, size, to_pamqp(props)), 3)
    _, _, header = pamqp_frame.unmarshal(wire)
    assert isinstance(header, ContentHeader)
    assert decode_header(payload_of(wire)) == (size, to_properties(header.properties))


@settings(max_examples=200, deadline=None)
@given(
    exchange=exchange_names,
    routing_key=st.text(max_size=60),
    mandatory=st.booleans(),
    body=st.binary(max_size=3000),
    frame_max=st.sampled_from([0, 4096, 131072]) | st.integers(min_value=9, max_value=600),
    props=properties,
)
def test_publish_frames_are_what_pamqp_marshals(
    exchange: str, routing_key: str, mandatory: bool, body: bytes, frame_max: int, props: Properties
) -> None:
    """Publish frames are pamqp's bytes; a content header over frame_max is refused."""
    step = frame_max - 8 if frame_max else len(body) or 1
    header = pamqp_frame.marshal(ContentHeader(0, len(body), to_pamqp(props)), 5)
    if frame_max and len(header) > frame_max:
        with pytest.raises(ValueError, match="frame_max"):
            encode_publish(5, exchange, routing_key, mandatory, body, props, frame_max)
        return
    expected = [
        pamqp_frame.marshal(
            commands.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory),
            5,
        ),
        header,
        *(
            pamqp_frame.marshal(ContentBody(body[i : i + step]), 5)
            for i in range(0, len(body), step)
        ),
    ]
    assert encode_publish(5, exchange, routing_key, mandatory, body, props, frame_max) == expected


@settings(max_examples=200, deadline=None)
@given(
    tag=st.text(max_size=60),
    delivery_tag=st.integers(min_value=0, max_value=2**63 - 1),  # pamqp packs it signed
    redelivered=st.booleans(),
    exchange=exchange_names,
    routing_key=st.text(max_size=60),
)
def test_deliver_decoding_is_what_pamqp_unmarshals(
    tag: str, delivery_tag: int, redelivered: bool, exchange: str, routing_key: str
) -> None:
    """decode_deliver reads every field pamqp marshals into basic.deliver."""
    method = commands.Basic.Deliver(tag, delivery_tag, redelivered, exchange, routing_key)
    decoded = decode_deliver(payload_of(pamqp_frame.marshal(method, 1)))
    assert (
        decoded.consumer_tag,
        decoded.delivery_tag,
        decoded.redelivered,
        decoded.exchange,
        decoded.routing_key,
    ) == (tag, delivery_tag, redelivered, exchange, routing_key)


@pytest.mark.parametrize(
    ("props", "message"),
    [
        (Properties(delivery_mode=3), "delivery_mode"),
        (Properties(priority=256), "priority"),
        (Properties(correlation_id="x" * 256), "correlation_id"),
        (Properties(reply_to=b"q"), "reply_to"),  # type: ignore[arg-type]
        (Properties(headers={"k": object()}), "headers"),
        (Properties(timestamp="yesterday"), "timestamp"),  # type: ignore[arg-type]
    ],
)
def test_values_amqp_cannot_carry_are_value_errors(props: Properties, message: str) -> None:
    """Property values AMQP cannot carry are ValueErrors naming the property."""
    with pytest.raises(ValueError, match=message):
        encode_header(1, 0, props)


def test_a_long_routing_key_is_a_value_error() -> None:
    """A routing key over 255 bytes is a ValueError."""
    with pytest.raises(ValueError, match="routing key"):
        encode_publish(1, "", "k" * 256, False, b"", Properties(), 0)


@pytest.mark.parametrize("name", ["bad*name", "x" * 128])
def test_an_exchange_name_pamqp_refuses_is_a_value_error(name: str) -> None:
    """An exchange name pamqp refuses is a ValueError."""
    with pytest.raises(ValueError, match="exchange"):
        encode_publish(1, name, "", False, b"", Properties(), 0)


@pytest.mark.parametrize("cut", [5, 9, 12])
def test_truncated_frames_do_not_decode(cut: int) -> None:
    """A truncated deliver or content header fails with a catchable decoding error."""
    method = commands.Basic.Deliver("ctag", 1, False, "exchange", "routing-key")
    payload = payload_of(pamqp_frame.marshal(method, 1))
    header = payload_of(
        pamqp_frame.marshal(ContentHeader(0, 1, to_pamqp(Properties(reply_to="q" * 20))), 1)
    )
    errors: list[Any] = []
    for data, decode in ((payload[:cut], decode_deliver), (header[: cut + 10], decode_header)):
        try:
            decode(data)
        except (ValueError, IndexError, struct.error) as exc:
            errors.append(exc)
    assert len(errors) == 2


def test_huge_header_table_round_trips() -> None:
    """A content header with ~400 kB of headers, a timestamp and delivery mode round-trips."""
    headers = {f"k{i}": "v" * 200 for i in range(2000)}  # ~ 400 kB of headers
    stamp = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    props = Properties(headers=headers, timestamp=stamp, delivery_mode=2)
    frame = encode_header(1, 3, props)
    size, decoded = decode_header(frame[7:-1])
    assert size == 3
    assert decoded.headers == headers
    assert decoded.delivery_mode == 2
    assert decoded.timestamp is not None
    assert decoded.timestamp.replace(tzinfo=None) == stamp.replace(tzinfo=None)


# -- field tables: the bounded codec against pamqp ----------------------------------

keys = st.text(min_size=0, max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=20),
    st.floats(width=32, allow_nan=False),
    st.decimals(places=3, min_value=-(10**6), max_value=10**6, allow_nan=False),
    st.integers(min_value=0, max_value=2**32 - 1).map(lambda s: datetime.fromtimestamp(s, UTC)),
    st.binary(max_size=10).map(bytearray),
)
field_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=25,
)
tables = st.dictionaries(keys, field_values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(table=tables)
def test_field_tables_encode_to_pamqp_bytes_and_decode_to_pamqp_values(
    table: dict[str, Any],
) -> None:
    """For every table pamqp takes, encoding is pamqp's bytes and decoding is pamqp's values."""
    wire = pamqp_encode.field_table(table)
    assert encode_table(table) == wire
    assert decode_table(wire) == (pamqp_decode.field_table(wire)[1], len(wire))
    assert decode_table(memoryview(b"pad" + wire), 3) == (
        pamqp_decode.field_table(wire)[1],
        3 + len(wire),
    )


def nested(depth: int) -> dict[str, Any]:
    """A table ``depth`` levels deep, the outermost counting as 1."""
    table: dict[str, Any] = {}
    for _ in range(depth - 1):
        table = {"x": table}
    return table


def nested_wire(depth: int) -> bytes:
    """The bytes of a table ``depth`` levels deep, built without any encoder."""
    wire = b"\0\0\0\0"
    for _ in range(depth - 1):
        entry = b"\x01xF" + wire
        wire = struct.pack(">I", len(entry)) + entry
    return wire


def test_nesting_up_to_the_limit_round_trips_and_one_more_level_is_refused() -> None:
    """Tables nested MAX_DEPTH deep encode and decode; one level more is a FieldTableError."""
    limit = _fieldtable.MAX_DEPTH
    assert decode_table(encode_table(nested(limit)))[0] == nested(limit)
    with pytest.raises(FieldTableError, match="deeper"):
        encode_table(nested(limit + 1))
    with pytest.raises(FieldTableError, match="deeper"):
        decode_table(nested_wire(limit + 1))


@pytest.mark.parametrize("depth", [500, 5000])
def test_deeply_nested_headers_are_value_errors_never_recursion_errors(depth: int) -> None:
    """Headers nested far past the limit fail as a ValueError on encode and decode."""
    with pytest.raises(ValueError, match="headers"):
        encode_header(1, 0, Properties(headers=nested(depth)))
    payload = struct.pack(">HHQH", 60, 0, 7, 0x2000) + nested_wire(depth)
    with pytest.raises(UndecodableProperties, match="deeper") as caught:
        decode_header(payload)
    assert caught.value.body_size == 7


def test_a_self_containing_table_is_refused() -> None:
    """A table that contains itself is a FieldTableError, not an endless walk."""
    table: dict[str, Any] = {}
    table["me"] = table
    with pytest.raises(FieldTableError):
        encode_table(table)


class CopyCounting(bytes):
    """Bytes that count the bytes every slice of them (and of their slices) copies."""

    copied = 0

    def __getitem__(self, key: SupportsIndex | slice) -> Any:
        if isinstance(key, slice):
            piece = bytes.__getitem__(self, key)
            CopyCounting.copied += len(piece)
            return CopyCounting(piece)
        return bytes.__getitem__(self, key)


def test_decoding_many_headers_copies_each_byte_a_bounded_number_of_times() -> None:
    """Decoding copies O(size) bytes, not a remainder per header (which is quadratic)."""
    headers = {f"header-{i}": i for i in range(20_000)}
    payload = encode_header(1, 0, Properties(headers=headers))[7:-1]
    CopyCounting.copied = 0
    _, props = decode_header(CopyCounting(payload))
    assert props.headers == headers
    assert CopyCounting.copied <= 2 * len(payload), CopyCounting.copied


def test_a_table_with_more_values_than_the_limit_is_refused() -> None:
    """More than MAX_ENTRIES values in one table (all levels) is a FieldTableError."""
    many = [None] * _fieldtable.MAX_ENTRIES
    with pytest.raises(FieldTableError, match="more than"):
        encode_table({"a": many})
    wire = b"\x01aA" + struct.pack(">I", len(many)) + b"V" * len(many)
    with pytest.raises(FieldTableError, match="more than"):
        decode_table(struct.pack(">I", len(wire)) + wire)
    assert len(decode_table(encode_table({"a": many[:-1]}))[0]["a"]) == len(many) - 1


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({1: 2}, "key must be a string"),
        ({"k" * 129: 1}, "over 128"),
        ({"\ud800": 1}, "not valid Unicode"),
        ({"k": "\udfff"}, "not valid Unicode"),
        ({"k": object()}, "no AMQP field type"),
        ({"k": 2**63}, "64-bit"),
        ({"k": -(2**63) - 1}, "64-bit"),
        ({"k": datetime(1969, 12, 31, tzinfo=UTC)}, "before 1970"),
        ({"k": Decimal("NaN")}, "decimal"),
        ({"k": Decimal("1e-300")}, "decimal"),
        ({"k": {"inner": {2: 3}}}, "key must be a string"),
        ("not a mapping", "mapping"),
    ],
)
def test_headers_amqp_cannot_carry_are_value_errors(headers: Any, message: str) -> None:
    """encode_header refuses such headers with a ValueError (never Type-, Overflow- or
    RecursionError), and so does the shared encoder, with a FieldTableError."""
    with pytest.raises(ValueError, match=message) as caught:
        encode_header(1, 0, Properties(headers=headers))
    assert type(caught.value) is ValueError
    with pytest.raises(FieldTableError, match=message):
        encode_table(headers)


@pytest.mark.parametrize(
    "stamp", [datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(1, 1, 1)]
)
def test_a_timestamp_before_1970_is_a_value_error(stamp: datetime) -> None:
    """The timestamp property cannot carry a time before 1970: ValueError, not struct.error."""
    with pytest.raises(ValueError, match="timestamp"):
        encode_header(1, 0, Properties(timestamp=stamp))


def test_values_pamqp_cannot_encode_but_amqp_carries() -> None:
    """bytes go out as a byte array, a float too big for 32 bits as a double."""
    wire = encode_table({"b": b"\x00\xff", "d": 1e300})
    assert decode_table(wire)[0] == {"b": bytearray(b"\x00\xff"), "d": 1e300}


@pytest.mark.parametrize("stamp", [2**63 - 1, 2**64 - 1, 2**55])
def test_a_timestamp_no_datetime_holds_is_undecodable_not_an_overflow(stamp: int) -> None:
    """A timestamp property out of datetime's range makes the properties undecodable."""
    payload = struct.pack(">HHQHQ", 60, 0, 3, 0x0040, stamp)
    with pytest.raises(UndecodableProperties, match="timestamp") as caught:
        decode_header(payload)
    assert caught.value.body_size == 3
    in_table = encode_table({"t": datetime(2020, 1, 1, tzinfo=UTC)})[:-8] + struct.pack(">Q", stamp)
    with pytest.raises(FieldTableError, match="timestamp"):
        decode_table(in_table)


def test_a_header_key_that_is_not_utf8_is_undecodable() -> None:
    """A key that is not UTF-8 makes the properties undecodable, whatever follows."""
    entry = b"\x01\xffS" + struct.pack(">I", 1) + b"v"
    table = struct.pack(">I", len(entry)) + entry
    payload = struct.pack(">HHQH", 60, 0, 1, 0x2000 | 0x0400) + table + b"\x03cid"
    with pytest.raises(UndecodableProperties, match="UTF-8"):
        decode_header(payload)


@pytest.mark.parametrize(
    "table",
    [
        b"\0\0\0\x05\x01kI\0\0",  # an int32 cut short
        b"\0\0\0\x03\x05k",  # a key longer than its table
        b"\0\0\0\x07\x01kS\0\0\0\x09",  # a string longer than its table
        b"\0\0\0\x03\x01k?",  # an unknown type
        b"\0\0\0\x0a\x01kF\0\0\0\x09\0\0",  # an inner table longer than the outer
    ],
)
def test_broken_table_contents_are_field_table_errors(table: bytes) -> None:
    """A table whose entries run past it, or hold an unknown type, is a FieldTableError."""
    with pytest.raises(FieldTableError):
        decode_table(table)


def test_a_table_running_past_the_frame_breaks_the_frame() -> None:
    """A headers table longer than its frame is a broken layout, not undecodable values."""
    payload = struct.pack(">HHQHI", 60, 0, 1, 0x2000, 100) + b"\x01kV"
    with pytest.raises(ValueError, match="past the frame") as caught:
        decode_header(payload)
    assert not isinstance(caught.value, UndecodableProperties)


def test_connection_start_decodes_and_refuses_deep_server_properties() -> None:
    """connection.start is decoded by hand: what pamqp reads, and deep tables a ValueError."""
    start = commands.Connection.Start(
        server_properties={"product": "RabbitMQ", "capabilities": {"basic.nack": True}},
        mechanisms="PLAIN AMQPLAIN",
    )
    decoded = decode_start(payload_of(pamqp_frame.marshal(start, 0)))
    assert (
        decoded.version_major,
        decoded.version_minor,
        decoded.server_properties,
        decoded.mechanisms,
        decoded.locales,
    ) == (0, 9, start.server_properties, "PLAIN AMQPLAIN", "en_US")
    deep = struct.pack(">HHBB", 10, 10, 0, 9) + nested_wire(1000) + b"\0\0\0\0" * 2
    with pytest.raises(ValueError, match="deeper"):
        decode_start(deep)


junk_keys = st.one_of(
    st.text(max_size=140), st.integers(), st.binary(max_size=4), st.none(), st.booleans()
)
junk = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.text(max_size=10),  # lone surrogates included
        st.binary(max_size=10),
        st.decimals(),
        st.datetimes(),
        st.builds(object),
        st.frozensets(st.integers(), max_size=2),
        st.complex_numbers(),
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(junk_keys, inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(headers=st.dictionaries(junk_keys, junk, max_size=4), stamp=st.none() | st.datetimes())
def test_encode_header_refuses_anything_with_a_value_error_and_decodes_what_it_takes(
    headers: dict[Any, Any], stamp: datetime | None
) -> None:
    """Whatever the headers hold, encode_header succeeds or raises ValueError itself; what it
    encodes decodes again."""
    props = Properties(headers=headers, timestamp=stamp)
    try:
        frame = encode_header(1, 0, props)
    except ValueError:
        return  # any other exception fails the test
    assert decode_header(payload_of(frame))[0] == 0
