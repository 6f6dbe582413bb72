"""The sans-I/O AMQP 0-9-1 client core: scripted broker frames in, exact frames out."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence

import pytest
from hypothesis import given, strategies as st
from pamqp import commands, frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader, ProtocolHeader
from pamqp.heartbeat import Heartbeat

from hare_py.transport._amqp_codec import encode_header
from hare_py.transport.amqp._protocol import (
    FRAME_MAX_LIMIT,
    HANDSHAKE_FRAME_MAX,
    PROTOCOL_HEADER,
    AMQPClientProtocol,
    ChannelClosed,
    ChannelOpened,
    ConnectionBlocked,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionStarted,
    ConnectionState,
    ConnectionTuned,
    ConnectionUnblocked,
    ContentReceived,
    Event,
    HeartbeatReceived,
    MethodReceived,
    ProtocolError,
    UnencodableMessage,
)
from hare_py.transport.base import Message, Properties

Wire = pamqp_frame.FrameTypes
FRAME_MAX = 4096


def marshal(*frames: tuple[int, Wire]) -> bytes:
    """Frames as the broker would write them, back to back."""
    return b"".join(pamqp_frame.marshal(value, channel) for channel, value in frames)


def parse(data: bytes) -> list[tuple[int, Wire]]:
    """Every frame in ``data`` as (channel, frame); the protocol header included."""
    frames = []
    while data:
        used, channel, value = pamqp_frame.unmarshal(data)
        frames.append((channel, value))
        data = data[used:]
    return frames


def plain(events: Sequence[Event]) -> list[object]:
    """Events comparable by value: pamqp methods compare by identity, so use their bytes."""
    return [
        (
            type(e),
            e.channel,
            pamqp_frame.marshal(e.method, 0),
            getattr(e, "properties", None),
            getattr(e, "body", None),
        )
        if isinstance(e, MethodReceived | ContentReceived)
        else e
        for e in events
    ]


def start_frame(mechanisms: str = "PLAIN AMQPLAIN") -> bytes:
    return marshal(
        (
            0,
            commands.Connection.Start(
                server_properties={"product": "RabbitMQ"}, mechanisms=mechanisms
            ),
        )
    )


def open_client(frame_max: int = FRAME_MAX, channels: int = 1) -> AMQPClientProtocol:
    """A client through the handshake with ``channels`` open channels, output drained."""
    client = AMQPClientProtocol(username="u", password="p", heartbeat=30)
    client.receive_data(start_frame())
    client.receive_data(marshal((0, commands.Connection.Tune(2047, frame_max, 60))))
    client.receive_data(marshal((0, commands.Connection.OpenOk())))
    for _ in range(channels):
        number = client.open_channel()
        client.receive_data(marshal((number, commands.Channel.OpenOk())))
    client.data_to_send()
    return client


def delivery_frames(
    channel: int,
    body: bytes,
    chunk: int,
    tag: int = 1,
    properties: commands.Basic.Properties | None = None,
) -> bytes:
    """A basic.deliver with its header and the body cut in ``chunk``-byte frames."""
    frames: list[tuple[int, Wire]] = [
        (channel, commands.Basic.Deliver("ctag", tag, False, "ex", "rk")),
        (channel, ContentHeader(0, len(body), properties)),
    ]
    frames += [(channel, ContentBody(body[i : i + chunk])) for i in range(0, len(body), chunk)]
    return marshal(*frames)


def feed_split(client: AMQPClientProtocol, data: bytes, cuts: Sequence[int]) -> list[Event]:
    """Feed ``data`` in pieces cut at ``cuts``; collect every event."""
    events: list[Event] = []
    bounds = [0, *sorted(set(cuts)), len(data)]
    for start, end in itertools.pairwise(bounds):
        events += client.receive_data(data[start:end])
    return events


# -- handshake --------------------------------------------------------------------


def test_protocol_header_is_queued_first() -> None:
    """A new client has exactly the AMQP 0-9-1 protocol header to send."""
    client = AMQPClientProtocol()
    assert client.data_to_send() == PROTOCOL_HEADER == ProtocolHeader().marshal()
    assert client.data_to_send() == b""
    assert client.state is ConnectionState.AWAIT_START


def test_scripted_handshake_sends_startok_tuneok_open() -> None:
    """Start -> StartOk(PLAIN), Tune -> TuneOk + Open(vhost), OpenOk -> open, as events."""
    client = AMQPClientProtocol(
        username="user",
        password="secret",
        virtual_host="/rpc",
        heartbeat=15,
        client_properties={"connection_name": "hare"},
    )
    client.data_to_send()

    events = client.receive_data(start_frame())
    assert events == [ConnectionStarted({"product": "RabbitMQ"}, "PLAIN AMQPLAIN", "en_US")]
    assert client.data_to_send() == marshal(
        (
            0,
            commands.Connection.StartOk(
                client_properties={"connection_name": "hare"},
                mechanism="PLAIN",
                response="\0user\0secret",
                locale="en_US",
            ),
        )
    )

    events = client.receive_data(marshal((0, commands.Connection.Tune(2047, 131072, 60))))
    assert events == [ConnectionTuned(channel_max=2047, frame_max=131072, heartbeat=15)]
    assert client.data_to_send() == marshal(
        (0, commands.Connection.TuneOk(2047, 131072, 15)),
        (0, commands.Connection.Open(virtual_host="/rpc")),
    )
    states = [client.state]

    assert client.receive_data(marshal((0, commands.Connection.OpenOk()))) == [ConnectionOpened()]
    states.append(client.state)
    assert states == [ConnectionState.AWAIT_OPEN_OK, ConnectionState.OPEN]
    assert client.data_to_send() == b""


def test_tune_lowers_the_brokers_limits_to_ours() -> None:
    """frame_max/channel_max take the lower wish; the broker's 0 (no limit) yields to ours."""
    client = AMQPClientProtocol(frame_max=8192, channel_max=16, heartbeat=0)
    client.receive_data(start_frame())
    client.data_to_send()
    events = client.receive_data(marshal((0, commands.Connection.Tune(0, 131072, 60))))
    assert events == [ConnectionTuned(channel_max=16, frame_max=8192, heartbeat=0)]
    assert client.data_to_send().startswith(marshal((0, commands.Connection.TuneOk(16, 8192, 0))))


def test_handshake_split_at_every_byte_gives_the_same_events() -> None:
    """The whole handshake fed one byte at a time yields the same three events."""
    client = AMQPClientProtocol()
    data = start_frame() + marshal(
        (0, commands.Connection.Tune(2047, 131072, 60)), (0, commands.Connection.OpenOk())
    )
    events = feed_split(client, data, range(1, len(data)))
    assert [type(e) for e in events] == [ConnectionStarted, ConnectionTuned, ConnectionOpened]


def test_no_plain_mechanism_is_a_protocol_error() -> None:
    """A broker that offers no PLAIN login is refused."""
    client = AMQPClientProtocol()
    with pytest.raises(ProtocolError, match="PLAIN"):
        client.receive_data(start_frame("EXTERNAL"))


def test_amqplain_start_ok_carries_login_and_password_as_a_table() -> None:
    """AMQPLAIN's response is a field table (LOGIN, PASSWORD) without its length prefix."""
    client = AMQPClientProtocol(username="user", password="s3cret", mechanism="AMQPLAIN")
    client.data_to_send()
    client.receive_data(start_frame())
    _, channel, start_ok = pamqp_frame.unmarshal(client.data_to_send())
    assert channel == 0
    assert isinstance(start_ok, commands.Connection.StartOk)
    assert start_ok.mechanism == "AMQPLAIN"
    table = b"\x05LOGINS\x00\x00\x00\x04user" + b"\x08PASSWORDS\x00\x00\x00\x06s3cret"
    assert start_ok.response.encode() == table


def test_external_start_ok_has_an_empty_response() -> None:
    client = AMQPClientProtocol(mechanism="EXTERNAL")
    client.data_to_send()
    client.receive_data(start_frame("EXTERNAL PLAIN"))
    _, _, start_ok = pamqp_frame.unmarshal(client.data_to_send())
    assert isinstance(start_ok, commands.Connection.StartOk)
    assert (start_ok.mechanism, start_ok.response) == ("EXTERNAL", "")


def test_an_unknown_mechanism_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="mechanism"):
        AMQPClientProtocol(mechanism="CRAM-MD5")


def test_broker_protocol_header_is_a_protocol_error() -> None:
    """A protocol header back from the broker (version refused) raises with its version."""
    client = AMQPClientProtocol()
    with pytest.raises(ProtocolError, match="0-9-1"):
        client.receive_data(PROTOCOL_HEADER)


def test_calls_before_open_are_refused() -> None:
    """Channels cannot be opened before connection.open-ok."""
    client = AMQPClientProtocol()
    with pytest.raises(ProtocolError, match="not open"):
        client.open_channel()


# -- channels ---------------------------------------------------------------------


def test_channel_open_sends_open_and_reports_open_ok() -> None:
    """open_channel picks the lowest free number, sends channel.open; open-ok is an event."""
    client = open_client(channels=0)
    assert client.open_channel() == 1
    assert client.open_channel() == 2
    assert client.data_to_send() == marshal(
        (1, commands.Channel.Open()),
        (2, commands.Channel.Open()),
    )
    assert not client.channel_is_open(1)
    assert client.receive_data(marshal((2, commands.Channel.OpenOk()))) == [ChannelOpened(2)]
    assert client.channel_is_open(2)


def test_client_channel_close_handshake() -> None:
    """close_channel sends code and text, drops methods meanwhile, and closes on close-ok."""
    client = open_client()
    client.close_channel(1, 200, "bye")
    assert client.data_to_send() == marshal((1, commands.Channel.Close(200, "bye", 0, 0)))
    with pytest.raises(ProtocolError):
        client.send_method(1, commands.Basic.Qos(prefetch_count=1))
    assert client.receive_data(delivery_frames(1, b"late", 10)) == []
    assert client.receive_data(marshal((1, commands.Channel.CloseOk()))) == [
        ChannelClosed(1, 200, "", "client")
    ]
    assert client.open_channel() == 1


def test_broker_channel_close_is_an_event_and_gets_close_ok() -> None:
    """A channel.close from the broker carries its reply, is answered, and frees the channel."""
    client = open_client()
    events = client.receive_data(
        marshal((1, commands.Channel.Close(404, "NOT_FOUND - no queue 'q'", 50, 10)))
    )
    assert events == [ChannelClosed(1, 404, "NOT_FOUND - no queue 'q'", "broker", 50, 10)]
    assert client.data_to_send() == marshal((1, commands.Channel.CloseOk()))
    assert not client.channel_is_open(1)
    with pytest.raises(ProtocolError, match="not open"):
        client.send_method(1, commands.Queue.Declare(queue="q"))


def test_broker_close_discards_a_half_received_message() -> None:
    """A channel closed mid-message forgets the partial content."""
    client = open_client()
    partial = delivery_frames(1, b"abcdef", 3)
    last_body_frame = 8 + 3
    assert client.receive_data(partial[:-last_body_frame]) == []
    client.receive_data(marshal((1, commands.Channel.Close(406, "PRECONDITION_FAILED", 0, 0))))
    client.open_channel(1)
    client.receive_data(marshal((1, commands.Channel.OpenOk())))
    events = client.receive_data(delivery_frames(1, b"fresh", 5))
    assert [e.body for e in events if isinstance(e, ContentReceived)] == [b"fresh"]


# -- methods and publishing ---------------------------------------------------------


def test_send_method_sends_exact_frame() -> None:
    """send_method queues the method frame on its channel, byte for byte."""
    client = open_client()
    declare = commands.Queue.Declare(queue="rpc", durable=True)
    client.send_method(1, declare)
    assert client.data_to_send() == pamqp_frame.marshal(declare, 1)


def test_other_methods_surface_as_method_received() -> None:
    """Replies such as queue.declare-ok arrive as MethodReceived."""
    client = open_client()
    ok = commands.Queue.DeclareOk("amq.gen-1", 3, 1)
    assert plain(client.receive_data(marshal((1, ok)))) == plain([MethodReceived(1, ok)])


def test_publish_sends_method_header_and_body() -> None:
    """publish sends basic.publish (mandatory), a header with size and properties, one body."""
    client = open_client()
    props = Properties(correlation_id="c1", reply_to="amq.rabbitmq.reply-to")
    client.publish(1, "ex", "rk", b"hello", props, mandatory=True)
    wire = commands.Basic.Properties(correlation_id="c1", reply_to="amq.rabbitmq.reply-to")
    assert client.data_to_send() == marshal(
        (1, commands.Basic.Publish(exchange="ex", routing_key="rk", mandatory=True)),
        (1, ContentHeader(0, 5, wire)),
        (1, ContentBody(b"hello")),
    )


def test_publish_splits_a_big_body_at_frame_max_minus_8() -> None:
    """A body over frame_max - 8 goes out in frames whose payloads are frame_max - 8."""
    client = open_client(frame_max=FRAME_MAX)
    body = bytes(range(256)) * 40  # 10240 bytes
    client.publish(1, "", "q", body)
    data = client.data_to_send()
    frames = parse(data)
    bodies = [f for _, f in frames if isinstance(f, ContentBody)]
    assert [len(b.value) for b in bodies] == [
        FRAME_MAX - 8,
        FRAME_MAX - 8,
        10240 - 2 * (FRAME_MAX - 8),
    ]
    assert b"".join(b.value for b in bodies) == body
    assert frames[1][1].body_size == 10240  # type: ignore[union-attr]
    # every frame on the wire fits frame_max
    offset = 0
    while offset < len(data):
        size = int.from_bytes(data[offset + 3 : offset + 7], "big") + 8
        assert size <= FRAME_MAX
        offset += size


def test_publish_empty_body_sends_no_body_frame() -> None:
    """An empty body is a method and a header of size 0, nothing more."""
    client = open_client()
    client.publish(1, "", "q", b"")
    assert [type(f) for _, f in parse(client.data_to_send())] == [
        commands.Basic.Publish,
        ContentHeader,
    ]


def test_data_to_send_coalesces_several_publishes() -> None:
    """Three publishes since the last call come back as one buffer, in order."""
    client = open_client()
    for i in range(3):
        client.publish(1, "", "q", b"m%d" % i)
    data = client.data_to_send()
    expected = b"".join(
        pamqp_frame.marshal(commands.Basic.Publish(exchange="", routing_key="q"), 1)
        + pamqp_frame.marshal(ContentHeader(0, 2), 1)
        + pamqp_frame.marshal(ContentBody(b"m%d" % i), 1)
        for i in range(3)
    )
    assert data == expected
    assert client.data_to_send() == b""


# -- incoming content -----------------------------------------------------------------


@given(
    body=st.binary(min_size=0, max_size=300),
    chunk=st.integers(min_value=1, max_value=120),
    cuts=st.lists(st.integers(min_value=1, max_value=2000), max_size=30),
)
def test_delivery_split_at_arbitrary_bytes_is_one_event(
    body: bytes, chunk: int, cuts: list[int]
) -> None:
    """However the bytes are cut, a multi-frame delivery is one event with its whole body."""
    client = open_client()
    wire = commands.Basic.Properties(content_type="application/json", headers={"k": "v"})
    data = delivery_frames(1, body, chunk, tag=7, properties=wire)
    events = feed_split(client, data, [c for c in cuts if c < len(data)])
    assert len(events) == 1
    (event,) = events
    assert isinstance(event, ContentReceived)
    assert event.channel == 1
    assert event.body == body
    assert event.properties == Properties(content_type="application/json", headers={"k": "v"})
    assert isinstance(event.method, commands.Basic.Deliver)
    assert event.method.delivery_tag == 7


def test_delivery_split_at_every_offset() -> None:
    """A delivery cut in two at every byte offset yields the same single event."""
    data = delivery_frames(1, b"0123456789" * 5, 17)
    for cut in range(len(data) + 1):
        client = open_client()
        events = client.receive_data(data[:cut]) + client.receive_data(data[cut:])
        assert [e.body for e in events if isinstance(e, ContentReceived)] == [b"0123456789" * 5]


@pytest.mark.parametrize(
    "method",
    [
        commands.Basic.Return(312, "NO_ROUTE", "ex", "rk"),
        commands.Basic.GetOk(5, False, "ex", "rk", 0),
    ],
)
def test_return_and_get_ok_carry_content(
    method: commands.Basic.Return | commands.Basic.GetOk,
) -> None:
    """basic.return and basic.get-ok are reassembled with their bodies like deliveries."""
    client = open_client()
    events = client.receive_data(
        marshal(
            (1, method),
            (1, ContentHeader(0, 6)),
            (1, ContentBody(b"abc")),
            (1, ContentBody(b"def")),
        )
    )
    assert plain(events) == plain([ContentReceived(1, method, Properties(), b"abcdef")])


def test_empty_body_completes_on_the_header() -> None:
    """A zero-length body is delivered as soon as its header arrives."""
    client = open_client()
    events = client.receive_data(delivery_frames(1, b"", 10))
    assert [e.body for e in events if isinstance(e, ContentReceived)] == [b""]


def test_interleaved_channels_and_a_batch_of_frames() -> None:
    """Frames of two channels interleaved in one read give both messages, in completion order."""
    client = open_client(channels=2)
    a = commands.Basic.Deliver("a", 1, False, "", "qa")
    b = commands.Basic.Deliver("b", 1, False, "", "qb")
    data = marshal(
        (1, a),
        (2, b),
        (1, ContentHeader(0, 4)),
        (2, ContentHeader(0, 2)),
        (1, ContentBody(b"aa")),
        (2, ContentBody(b"bb")),
        (1, ContentBody(b"aa")),
        (0, Heartbeat()),
    )
    events = client.receive_data(data)
    assert plain(events) == plain(
        [
            ContentReceived(2, b, Properties(), b"bb"),
            ContentReceived(1, a, Properties(), b"aaaa"),
            HeartbeatReceived(),
        ]
    )


def test_body_longer_than_announced_is_a_protocol_error() -> None:
    """More body bytes than the header announced break the stream."""
    client = open_client()
    data = marshal(
        (1, commands.Basic.Deliver("c", 1, False, "", "q")),
        (1, ContentHeader(0, 2)),
        (1, ContentBody(b"abc")),
    )
    with pytest.raises(ProtocolError, match="announced"):
        client.receive_data(data)


def test_frame_over_frame_max_is_a_protocol_error() -> None:
    """A frame bigger than the negotiated frame_max is refused before it is buffered whole."""
    client = open_client(frame_max=FRAME_MAX)
    data = delivery_frames(1, b"x" * FRAME_MAX, FRAME_MAX)
    with pytest.raises(ProtocolError, match="frame_max"):
        client.receive_data(data)


def test_unknown_frame_type_is_a_protocol_error() -> None:
    """A frame type AMQP 0-9-1 does not define breaks the stream."""
    client = open_client()
    with pytest.raises(ProtocolError, match="frame type"):
        client.receive_data(b"\x09\x00\x00\x00\x00\x00\x00\xce")


# -- heartbeats, blocking, connection close ---------------------------------------------


def test_heartbeats_in_and_out() -> None:
    """A heartbeat frame is an event; send_heartbeat queues the 8-byte heartbeat frame."""
    client = open_client()
    assert client.receive_data(Heartbeat.marshal()) == [HeartbeatReceived()]
    client.send_heartbeat()
    assert client.data_to_send() == b"\x08\x00\x00\x00\x00\x00\x00\xce"


def test_heartbeat_split_across_reads() -> None:
    """A heartbeat cut in two is reported once, when whole."""
    client = open_client()
    assert client.receive_data(Heartbeat.marshal()[:3]) == []
    assert client.receive_data(Heartbeat.marshal()[3:]) == [HeartbeatReceived()]


def test_blocked_and_unblocked_are_events() -> None:
    """connection.blocked/unblocked surface as events and flip ``blocked``."""
    client = open_client()
    assert client.receive_data(marshal((0, commands.Connection.Blocked("low on memory")))) == [
        ConnectionBlocked("low on memory")
    ]
    assert client.blocked
    assert client.receive_data(marshal((0, commands.Connection.Unblocked()))) == [
        ConnectionUnblocked()
    ]
    assert not client.blocked


def test_broker_connection_close_is_answered_and_final() -> None:
    """connection.close from the broker is an event, gets close-ok, and ends the stream."""
    client = open_client()
    events = client.receive_data(
        marshal((0, commands.Connection.Close(320, "CONNECTION_FORCED - shutdown", 0, 0)))
        + marshal((1, commands.Basic.Ack(1)))
    )
    assert events == [ConnectionClosed(320, "CONNECTION_FORCED - shutdown", "broker")]
    assert client.data_to_send() == marshal((0, commands.Connection.CloseOk()))
    assert client.closed
    assert not client.channel_is_open(1)
    assert client.receive_data(Heartbeat.marshal()) == []
    with pytest.raises(ProtocolError):
        client.publish(1, "", "q", b"x")


def test_client_connection_close_handshake() -> None:
    """close sends connection.close, drops methods meanwhile, and closes on close-ok."""
    client = open_client()
    client.close(200, "bye")
    client.close()  # idempotent
    assert client.data_to_send() == marshal((0, commands.Connection.Close(200, "bye", 0, 0)))
    with pytest.raises(ProtocolError):
        client.send_method(1, commands.Basic.Ack(1))
    assert client.receive_data(delivery_frames(1, b"late", 4)) == []
    assert client.receive_data(marshal((0, commands.Connection.CloseOk()))) == [
        ConnectionClosed(200, "bye", "client")
    ]
    assert client.state is ConnectionState.CLOSED


# -- hostile input: bounded buffers, one bad message alone -------------------------

_FRAME = struct.Struct(">BHI")


def raw_frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME.pack(kind, channel, len(payload)) + payload + b"\xce"


def deep_headers_header(channel: int, body_size: int, depth: int) -> bytes:
    """A content header frame whose headers table is ``depth`` levels deep."""
    table = b"\0\0\0\0"
    for _ in range(depth - 1):
        entry = b"\x01xF" + table
        table = struct.pack(">I", len(entry)) + entry
    return raw_frame(2, channel, struct.pack(">HHQH", 60, 0, body_size, 0x2000) + table)


def deliver(tag: int = 1) -> bytes:
    return marshal((1, commands.Basic.Deliver("ctag", tag, False, "ex", "rk")))


def test_a_frame_over_the_handshake_limit_is_refused_before_tune() -> None:
    """Before connection.tune, a frame over HANDSHAKE_FRAME_MAX is refused from its header."""
    client = AMQPClientProtocol()
    client.data_to_send()
    with pytest.raises(ProtocolError, match="frame"):
        client.receive_data(_FRAME.pack(1, 0, HANDSHAKE_FRAME_MAX))


def test_a_brokers_frame_max_of_zero_is_capped() -> None:
    """frame_max 0 (no limit) from the broker becomes FRAME_MAX_LIMIT, and frames over it fail."""
    client = AMQPClientProtocol(heartbeat=0)
    client.receive_data(start_frame())
    client.data_to_send()
    events = client.receive_data(marshal((0, commands.Connection.Tune(2047, 0, 60))))
    assert events == [ConnectionTuned(2047, FRAME_MAX_LIMIT, 0)]
    assert client.data_to_send().startswith(
        marshal((0, commands.Connection.TuneOk(2047, FRAME_MAX_LIMIT, 0)))
    )
    client.receive_data(marshal((0, commands.Connection.OpenOk())))
    with pytest.raises(ProtocolError, match="frame_max"):
        client.receive_data(_FRAME.pack(3, 1, FRAME_MAX_LIMIT))


def test_a_brokers_frame_max_over_the_limit_is_lowered_to_it() -> None:
    """A frame_max offer over FRAME_MAX_LIMIT is answered with the limit."""
    client = AMQPClientProtocol(heartbeat=0)
    client.receive_data(start_frame())
    events = client.receive_data(marshal((0, commands.Connection.Tune(0, 1 << 30, 0))))
    assert events == [ConnectionTuned(0, FRAME_MAX_LIMIT, 0)]


def test_a_frame_max_under_the_amqp_minimum_is_refused() -> None:
    """A broker offering frame_max under 4096 (AMQP's frame-min-size) breaks the handshake."""
    client = AMQPClientProtocol()
    client.receive_data(start_frame())
    with pytest.raises(ProtocolError, match="minimum"):
        client.receive_data(marshal((0, commands.Connection.Tune(0, 8, 0))))


def test_deeply_nested_server_properties_are_a_protocol_error() -> None:
    """connection.start with a table 1000 deep is a ProtocolError, not a RecursionError."""
    table = b"\0\0\0\0"
    for _ in range(1000):
        entry = b"\x01xF" + table
        table = struct.pack(">I", len(entry)) + entry
    payload = struct.pack(">HHBB", 10, 10, 0, 9) + table + b"\0\0\0\x05PLAIN\0\0\0\0"
    client = AMQPClientProtocol()
    with pytest.raises(ProtocolError, match="deeper"):
        client.receive_data(raw_frame(1, 0, payload))


def test_a_method_brokers_never_send_is_refused_before_it_is_decoded() -> None:
    """A client-only method (queue.declare with a table 1000 deep) is a ProtocolError."""
    arguments = b"\0\0\0\0"
    for _ in range(1000):
        entry = b"\x01xF" + arguments
        arguments = struct.pack(">I", len(entry)) + entry
    payload = struct.pack(">HHH", 50, 10, 0) + b"\x01q\x00" + arguments
    client = open_client(frame_max=FRAME_MAX_LIMIT)
    with pytest.raises(ProtocolError, match=r"unexpected method 50\.10"):
        client.receive_data(raw_frame(1, 1, payload))


def test_a_method_frame_too_short_for_its_id_is_a_protocol_error() -> None:
    """A method frame of 2 payload bytes is a ProtocolError, not a ValueError from pamqp."""
    client = open_client()
    with pytest.raises(ProtocolError, match="method"):
        client.receive_data(raw_frame(1, 1, b"\x00\x14"))


def test_a_frame_of_exactly_frame_max_is_taken_and_one_byte_more_is_refused() -> None:
    """A frame of exactly frame_max bytes is taken, split at any byte; one byte more is refused."""
    proto = open_client(4096)
    wire = (
        marshal((1, commands.Basic.Deliver("t", 1, False, "", "rk")))
        + encode_header(1, 4096 - 8, Properties())
        + raw_frame(3, 1, b"a" * (4096 - 8))
    )
    events = []
    for i in range(len(wire)):  # split at every byte
        events += proto.receive_data(wire[i : i + 1])
    (event,) = events
    assert isinstance(event, ContentReceived) and event.body == b"a" * 4088
    with pytest.raises(ProtocolError, match="frame_max"):
        proto.receive_data(raw_frame(3, 1, b"a" * (4096 - 7)))


def test_truncated_content_header_is_a_protocol_error_not_an_index_error() -> None:
    """A content header cut short inside its properties is a ProtocolError, not an IndexError."""
    proto = open_client()
    proto.receive_data(marshal((1, commands.Basic.Deliver("t", 1, False, "", "rk"))))
    # delivery-mode flag set, but the octet is missing.
    with pytest.raises(ProtocolError):
        proto.receive_data(raw_frame(2, 1, struct.pack(">HHQH", 60, 0, 1, 0x1000)))


@pytest.mark.parametrize(
    "header",
    [
        deep_headers_header(1, 5, 500),
        raw_frame(2, 1, struct.pack(">HHQHQ", 60, 0, 5, 0x0040, 2**63 - 1)),
    ],
    ids=["headers-500-deep", "timestamp-2**63-1"],
)
def test_undecodable_properties_complete_the_message_and_the_stream_goes_on(
    header: bytes,
) -> None:
    """Properties that do not decode give a ContentReceived marked undecodable, empty
    properties and the body; the next message decodes as usual."""
    client = open_client()
    events = client.receive_data(
        deliver(1) + header + raw_frame(3, 1, b"hello") + delivery_frames(1, b"next", 10, tag=2)
    )
    first, second = events
    assert isinstance(first, ContentReceived) and isinstance(second, ContentReceived)
    assert first.undecodable is not None
    assert (first.properties, first.body, first.dropped) == (Properties(), b"hello", 0)
    assert isinstance(first.method, commands.Basic.Deliver) and first.method.delivery_tag == 1
    assert second.undecodable is None and second.body == b"next"


def test_a_body_over_max_body_size_is_dropped_as_it_streams() -> None:
    """A body announced over max_body_size is counted, not kept, and arrives undecodable."""
    client = AMQPClientProtocol(username="u", password="p", heartbeat=0, max_body_size=1000)
    client.receive_data(start_frame())
    client.receive_data(marshal((0, commands.Connection.Tune(2047, FRAME_MAX, 0))))
    client.receive_data(marshal((0, commands.Connection.OpenOk())))
    client.open_channel()
    client.receive_data(marshal((1, commands.Channel.OpenOk())))
    body = b"x" * 5000
    events = client.receive_data(delivery_frames(1, body, 1000))
    (event,) = events
    assert isinstance(event, ContentReceived)
    assert (event.body, event.properties, event.dropped) == (b"", Properties(), 5000)
    assert event.undecodable is not None and "max_body_size" in event.undecodable
    # exactly the limit is kept
    (kept,) = client.receive_data(delivery_frames(1, body[:1000], 400, tag=2))
    assert isinstance(kept, ContentReceived) and kept.body == body[:1000]


def test_a_body_of_2_to_the_63_keeps_nothing_buffered() -> None:
    """Body frames of a 2**63-byte announcement are dropped: nothing of them is kept."""
    client = open_client()
    client.receive_data(deliver() + marshal((1, ContentHeader(0, 2**63))))
    chunk = raw_frame(3, 1, b"x" * (FRAME_MAX - 8))
    for _ in range(100):
        assert client.receive_data(chunk * 4) == []
    pending = client._content[1]
    assert pending.chunks == [] and pending.received == 400 * (FRAME_MAX - 8)


def test_frames_received_counts_whole_frames_only() -> None:
    """frames_received moves on a whole frame, not on a byte of a partial one."""
    client = open_client()
    before = client.frames_received
    heartbeat = Heartbeat.marshal()
    for byte in heartbeat[:-1]:
        client.receive_data(bytes((byte,)))
        assert client.frames_received == before
    client.receive_data(heartbeat[-1:])
    assert client.frames_received == before + 1


def test_a_content_header_over_frame_max_is_refused_before_anything_is_queued() -> None:
    """A publish whose headers make a content header over frame_max is a ValueError; nothing
    of it is queued."""
    client = open_client()
    headers = {f"h{i}": i for i in range(1000)}
    with pytest.raises(ValueError, match="frame_max"):
        client.publish(1, "", "q", b"body", Properties(headers=headers))
    assert client.data_to_send() == b""


def test_publish_many_is_all_or_nothing() -> None:
    """publish_many queues every message, or, when one cannot be encoded, nothing and its index."""
    client = open_client()
    good = Message("", "q", b"a")
    bad = Message("", "q", b"b", Properties(headers={"k": object()}))
    with pytest.raises(UnencodableMessage) as caught:
        client.publish_many(1, [good, good, bad, good])
    assert caught.value.index == 2
    assert "headers" in caught.value.reason
    assert client.data_to_send() == b""
    client.publish_many(1, [good, Message("", "q", b"c")], mandatory=True)
    frames = parse(client.data_to_send())
    assert [type(v) for _, v in frames] == [commands.Basic.Publish, ContentHeader, ContentBody] * 2
