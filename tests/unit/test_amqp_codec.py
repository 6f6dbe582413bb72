"""The hand-written codecs for publish, deliver and content headers agree with pamqp.

pamqp is the reference: every encoding must be byte-for-byte what pamqp
marshals, and every decoding must give what pamqp unmarshals (through the
aiormq backend's converter to ``Properties``).
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from pamqp import commands, frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from hare_py.transport.aiormq_backend._convert import to_pamqp, to_properties
from hare_py.transport.amqp._codec import (
    decode_deliver,
    decode_header,
    encode_header,
    encode_publish,
)
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
    expected = pamqp_frame.marshal(ContentHeader(0, size, to_pamqp(props)), 3)
    assert encode_header(3, size, props) == expected


@settings(max_examples=300, deadline=None)
@given(props=properties, size=st.integers(min_value=0, max_value=2**40))
def test_header_decoding_is_what_pamqp_unmarshals(props: Properties, size: int) -> None:
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
    step = frame_max - 8 if frame_max else len(body) or 1
    expected = [
        pamqp_frame.marshal(
            commands.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory),
            5,
        ),
        pamqp_frame.marshal(ContentHeader(0, len(body), to_pamqp(props)), 5),
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
    with pytest.raises(ValueError, match=message):
        encode_header(1, 0, props)


def test_a_long_routing_key_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="routing key"):
        encode_publish(1, "", "k" * 256, False, b"", Properties(), 0)


@pytest.mark.parametrize("name", ["bad*name", "x" * 128])
def test_an_exchange_name_pamqp_refuses_is_a_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="exchange"):
        encode_publish(1, name, "", False, b"", Properties(), 0)


@pytest.mark.parametrize("cut", [5, 9, 12])
def test_truncated_frames_do_not_decode(cut: int) -> None:
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
