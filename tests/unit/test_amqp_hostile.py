"""Hostile input on the anyio AMQP backend: one message or one broker must not take a service down.

The scripted fake broker of ``test_amqp_driver`` sends what RabbitMQ relays
from any publisher (headers nested hundreds deep, a timestamp of 2**63 - 1, a
header key or a short string that is not UTF-8, a body over the limit), what
RabbitMQ itself may send (a reply text cut inside a multi-byte character) and
what only a hostile or broken broker sends (a frame with no end before the
handshake, a 2**63-byte body, a frame trickled byte by byte). Each must end in
a typed result: a delivery the consumer can reject alone, an error for the one
publish that cannot be sent, or a ``ConnectionLost``/``ConnectFailed`` in
bounded time and memory.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from pamqp import commands, constants, encode, frame as pamqp_frame
from pamqp.header import ContentHeader
from structlog.testing import capture_logs
from test_amqp_driver import (
    FRAME_MAX,
    Peer,
    fake_broker,
    open_channel,
    options,
    quiet_for,
    session,
    together,
    until,
)

from hare_py.errors import ConfigError, ConnectFailed, HareError, UnsendableMessage
from hare_py.transport._amqp_codec import FRAME_MAX_LIMIT
from hare_py.transport.amqp import _channel, _connection
from hare_py.transport.amqp._connection import AmqpConnection, connect
from hare_py.transport.base import ConnectOptions, Delivery, Message, Properties, ReturnedMessage
from hare_py.transport.url import parse_url

pytestmark = pytest.mark.anyio

_FRAME = struct.Struct(">BHI")


@pytest.fixture(autouse=True)
def _short_close_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A close handshake the fake broker does not answer must not stall a test for 10 s."""
    monkeypatch.setattr(_connection, "CLOSE_TIMEOUT", 2.0)
    monkeypatch.setattr(_channel, "CLOSE_TIMEOUT", 2.0)


def raw_frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME.pack(kind, channel, len(payload)) + payload + b"\xce"


def nested_table(depth: int) -> bytes:
    """A field table ``depth`` levels deep, built by hand (no encoder would)."""
    table = b"\0\0\0\0"
    for _ in range(depth - 1):
        entry = b"\x01xF" + table
        table = struct.pack(">I", len(entry)) + entry
    return table


def content_header(channel: int, body_size: int, flags: int, properties: bytes) -> bytes:
    return raw_frame(2, channel, struct.pack(">HHQH", 60, 0, body_size, flags) + properties)


def shortstr(data: bytes) -> bytes:
    return bytes((len(data),)) + data


def raw_channel_close(channel: int, code: int, text: bytes) -> bytes:
    """channel.close with ``text`` as raw bytes (not necessarily UTF-8)."""
    payload = struct.pack(">HHH", 20, 40, code) + shortstr(text) + struct.pack(">HH", 50, 10)
    return raw_frame(1, channel, payload)


_KEY_NOT_UTF8 = b"\x01\xffS\x00\x00\x00\x01v"
POISON = {
    "headers-500-deep": (0x2000, nested_table(500)),
    "headers-5000-deep": (0x2000, nested_table(5000)),
    "timestamp-2**63-1": (0x0040, struct.pack(">Q", 2**63 - 1)),
    "timestamp-2**64-1": (0x0040, struct.pack(">Q", 2**64 - 1)),
    "header-key-not-utf8": (0x2000, struct.pack(">I", len(_KEY_NOT_UTF8)) + _KEY_NOT_UTF8),
}


async def consuming(conn: AmqpConnection, peer: Peer, got: list[Delivery]) -> tuple[Any, str]:
    """Channel 1 consuming "q" into ``got``: (channel, consumer tag)."""
    ch = await open_channel(conn, peer)

    async def consume_ok() -> None:
        consume = await peer.expect(commands.Basic.Consume, 1)
        await peer.send((1, commands.Basic.ConsumeOk(consume.consumer_tag)))

    tag = await together(lambda: ch.basic_consume("q", got.append), consume_ok)
    return ch, tag


def deliver(tag: str, delivery_tag: int) -> bytes:
    return pamqp_frame.marshal(commands.Basic.Deliver(tag, delivery_tag, False, "ex", "q"), 1)


# -- one poison message -----------------------------------------------------------


@pytest.mark.parametrize("poison", POISON, ids=list(POISON))
async def test_a_message_whose_properties_do_not_decode_reaches_the_consumer_alone(
    poison: str,
) -> None:
    """A delivery whose properties do not decode arrives once, marked undecodable with empty
    properties, is rejected without requeue, and the connection and the next message go on."""
    flags, properties = POISON[poison]
    got: list[Delivery] = []
    with anyio.fail_after(10), capture_logs() as logs:
        async with session() as (conn, peer):
            ch, tag = await consuming(conn, peer, got)
            await peer.stream.send(
                deliver(tag, 1)
                + content_header(1, 6, flags, properties)
                + raw_frame(3, 1, b"poison")
            )
            await peer.send_content(
                1,
                commands.Basic.Deliver(tag, 2, False, "ex", "q"),
                b"fine",
                commands.Basic.Properties(correlation_id="c2"),
            )
            await until(lambda: len(got) == 2)
            bad, good = got
            assert bad.undecodable is not None
            assert (bad.properties, bad.body, bad.delivery_tag) == (Properties(), b"poison", 1)
            assert (good.undecodable, good.properties.correlation_id) == (None, "c2")
            await ch.basic_reject(bad.delivery_tag, requeue=False)
            reject = await peer.expect(commands.Basic.Reject, 1)
            assert (reject.delivery_tag, reject.requeue) == (1, False)
            assert conn.is_open and ch.is_open
    events = [e for e in logs if e["event"] == "amqp.properties_undecodable"]
    assert len(events) == 1, logs
    assert events[0]["delivery_tag"] == 1 and events[0]["reason"] == bad.undecodable


async def test_a_returned_message_whose_properties_do_not_decode_keeps_the_connection() -> None:
    """A basic.return with undecodable properties reaches on_return with empty properties."""
    returned: list[ReturnedMessage] = []
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await together(
                lambda: conn.open_channel(on_return=returned.append), lambda: peer.open_channel(1)
            )
            back = commands.Basic.Return(312, "NO_ROUTE", "ex", "q")
            await peer.stream.send(
                pamqp_frame.marshal(back, 1)
                + content_header(1, 1, *POISON["headers-500-deep"])
                + raw_frame(3, 1, b"r")
            )
            await until(lambda: bool(returned))
            assert (returned[0].properties, returned[0].body) == (Properties(), b"r")
            assert conn.is_open and ch.is_open


@pytest.mark.rabbitmq
async def test_poison_messages_through_rabbitmq_are_dead_lettered_and_the_consumer_goes_on(
    rabbitmq_url: str,
) -> None:
    """Through a real RabbitMQ, each poison message reaches the consumer undecodable, its
    rejection without requeue dead-letters it whole, and a good message after them arrives."""
    got: list[Delivery] = []
    url = parse_url(rabbitmq_url + ("&" if "?" in rabbitmq_url else "?") + "backend=anyio")
    with anyio.fail_after(30):
        async with connect(url, ConnectOptions(heartbeat=0)) as conn:
            ch = await conn.open_channel(publisher_confirms=True)
            dead = (await ch.queue_declare("", exclusive=True)).name
            queue = (
                await ch.queue_declare(
                    "",
                    exclusive=True,
                    arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead},
                )
            ).name
            # A raw publisher: the channel itself refuses to encode such properties.
            publish = pamqp_frame.marshal(commands.Basic.Publish(routing_key=queue), ch.number)
            for flags, properties in POISON.values():
                conn.protocol._queue(
                    publish
                    + content_header(ch.number, 6, flags, properties)
                    + raw_frame(3, ch.number, b"poison")
                )
            await ch.basic_publish(b"fine", routing_key=queue)  # confirms all before it too

            await ch.basic_consume(queue, got.append)
            await until(lambda: len(got) == len(POISON) + 1)
            for delivery in got:
                if delivery.undecodable is None:
                    await ch.basic_ack(delivery.delivery_tag)
                else:
                    await ch.basic_reject(delivery.delivery_tag, requeue=False)
            kept: list[Delivery] = []
            await ch.basic_consume(dead, kept.append, no_ack=True)
            await until(lambda: len(kept) == len(POISON))
            assert conn.is_open and ch.is_open
    assert [d.undecodable is None for d in got] == [False] * len(POISON) + [True]
    assert got[-1].body == b"fine"
    assert {d.body for d in kept} == {b"poison"}


# -- strings from the broker that are not UTF-8 ----------------------------------


async def test_non_utf8_reply_text_in_channel_close_closes_only_the_channel() -> None:
    """A channel.close whose reply text is not UTF-8 closes that channel, not the connection."""
    # RabbitMQ cuts reply texts at 252 bytes (amqp_exception_explanation),
    # which can split a multi-byte character of a queue or exchange name.
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            await peer.stream.send(raw_channel_close(1, 404, b"NOT_FOUND - no queue '\xc3"))
            await quiet_for(conn)
            assert conn.is_open, conn.close_reason
            assert ch.close_reason is not None and ch.close_reason.code == 404


async def test_non_utf8_text_during_handshake_is_connect_failed() -> None:
    """A refusal during the handshake whose reply text is not UTF-8 is ConnectFailed."""

    async def handle(stream: anyio.abc.SocketStream) -> None:
        peer = Peer(stream)
        try:
            await peer.start()
            await stream.send(
                raw_frame(
                    1,
                    0,
                    struct.pack(">HHH", 10, 50, 403) + shortstr(b"ACCESS_REFUSED \xff") + b"\0" * 4,
                )
            )
            with anyio.move_on_after(2):
                await peer.recv_until_eof()
        finally:
            await peer.aclose()  # also when the test's task group is cancelled

    with anyio.fail_after(10):
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, handle)
                url = parse_url(f"amqp://guest:guest@127.0.0.1:{port}/")
                try:
                    async with connect(url, options()):
                        pass
                except HareError as exc:
                    error: BaseException = exc
                except Exception as exc:
                    error = exc
                tg.cancel_scope.cancel()
    assert isinstance(error, ConnectFailed), repr(error)


async def test_non_utf8_header_key_does_not_kill_the_connection() -> None:
    """A header key that is not UTF-8 drops that message's header table, not the connection."""
    got: list[Delivery] = []
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            _, tag = await consuming(conn, peer, got)
            # headers = {b"\xff": "v"}: the table is a long size then key, type, value.
            entry = shortstr(b"\xff") + b"S" + struct.pack(">I", 1) + b"v"
            table = struct.pack(">I", len(entry)) + entry
            await peer.stream.send(
                deliver(tag, 1) + content_header(1, 1, 0x2000, table) + raw_frame(3, 1, b"x")
            )
            await quiet_for(conn)
            assert conn.is_open, conn.close_reason
    # The message still arrives; only its undecodable header table is dropped.
    assert [(d.body, d.properties.headers) for d in got] == [(b"x", None)]


def test_ascii_field_table_encode_sanity() -> None:
    """The hand-built field tables of these tests are laid out as pamqp encodes them."""
    # The table bytes above are what pamqp writes for {"k": "v"} with a
    # different key: keep the hand-built table honest.
    entry = shortstr(b"k") + b"S" + struct.pack(">I", 1) + b"v"
    assert struct.pack(">I", len(entry)) + entry == encode.field_table({"k": "v"})
    assert constants.FRAME_END == 0xCE


async def test_non_utf8_short_string_properties_and_cluster_id_are_tolerated() -> None:
    """Short-string properties that are not UTF-8, app-id and cluster-id still decode."""
    got: list[Delivery] = []
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            _, tag = await consuming(conn, peer, got)
            # content-type (bad UTF-8), app-id and cluster-id, which brokers may set.
            props = shortstr(b"text/\xff") + shortstr(b"app") + shortstr(b"rabbit@node")
            flags = 0x8000 | 0x0008 | 0x0004
            await peer.stream.send(
                deliver(tag, 7) + content_header(1, 0, flags, props)  # empty body
            )
            await until(lambda: bool(got))
            assert conn.is_open
    (delivery,) = got
    assert delivery.body == b""
    assert delivery.delivery_tag == 7
    assert delivery.properties.app_id == "app"
    assert delivery.properties.content_type == "text/\ufffd"


# -- bodies over max_body_size ------------------------------------------------------


async def test_a_body_over_max_body_size_arrives_empty_and_undecodable() -> None:
    """A body over ConnectOptions.max_body_size is dropped unread: the delivery arrives with
    an empty body and its reason, logged once; a body at the limit arrives whole."""
    got: list[Delivery] = []
    with anyio.fail_after(10), capture_logs() as logs:
        async with session(options(max_body_size=100)) as (conn, peer):
            _, tag = await consuming(conn, peer, got)
            await peer.send_content(1, commands.Basic.Deliver(tag, 1, False, "", "q"), b"x" * 101)
            await peer.send_content(1, commands.Basic.Deliver(tag, 2, False, "", "q"), b"y" * 100)
            await until(lambda: len(got) == 2)
            assert conn.is_open
    big, fits = got
    assert big.undecodable is not None and "max_body_size" in big.undecodable
    assert (big.body, big.properties) == (b"", Properties())
    assert (fits.body, fits.undecodable) == (b"y" * 100, None)
    events = [e for e in logs if e["event"] == "amqp.body_too_large"]
    assert [e["body_size"] for e in events] == [101]


async def test_the_urls_max_body_size_wins_over_the_options() -> None:
    """?max_body_size= in the URL sets the limit, over ConnectOptions.max_body_size."""
    with anyio.fail_after(10):
        async with fake_broker() as broker:
            url = parse_url(broker.url() + "?max_body_size=4096")
            async with connect(url, options(max_body_size=5)) as conn:
                peer = await broker.accept()
                assert conn.protocol.max_body_size == 4096
                await peer.aclose()


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", ""])
async def test_a_bad_max_body_size_is_a_config_error(value: str) -> None:
    """max_body_size= that is not a whole number of bytes is a ConfigError before connecting."""
    url = parse_url(f"amqp://guest:guest@127.0.0.1:1/?max_body_size={value}")
    with anyio.fail_after(5), pytest.raises(ConfigError, match="max_body_size"):
        async with connect(url, options()):
            pass


CHILD = """
import resource, sys
import anyio, structlog
from hare_py.transport.amqp._connection import connect
from hare_py.transport.base import ConnectOptions
from hare_py.transport.url import parse_url

def peak_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

async def main(url):
    got = []
    async with connect(parse_url(url), ConnectOptions(heartbeat=0, connect_timeout=10)) as conn:
        channel = await conn.open_channel()
        await channel.basic_consume("q", got.append)
        print("ready", peak_kib(), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        print("done", peak_kib(), int(conn.is_open), len(got), flush=True)

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
anyio.run(main, sys.argv[1], backend=sys.argv[2])
"""
STREAMED = 160 << 20  # body bytes the broker sends after announcing 2**63
GROWTH_BOUND_KIB = 32 << 10


async def test_a_body_announced_as_2_to_the_63_bytes_streams_by_in_bounded_memory(
    anyio_backend: str,
) -> None:
    """A broker announcing a 2**63-byte body and streaming 160 MiB of it grows the client's
    peak RSS (measured in a child process) by less than 32 MiB; the connection stays up."""
    with anyio.fail_after(90):
        async with (
            fake_broker() as broker,
            await anyio.open_process(
                [sys.executable, "-c", CHILD, broker.url(), anyio_backend],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ) as child,
        ):
            assert child.stdin is not None and child.stdout is not None
            lines = BufferedByteReceiveStream(child.stdout)
            peer = await broker.accept()
            await peer.open_channel(1)
            consume = await peer.expect(commands.Basic.Consume, 1)
            await peer.send((1, commands.Basic.ConsumeOk(consume.consumer_tag)))
            ready = (await lines.receive_until(b"\n", 200)).split()
            assert ready[0] == b"ready", ready
            await peer.stream.send(deliver(consume.consumer_tag, 1))
            await peer.send((1, ContentHeader(0, 2**63, commands.Basic.Properties())))
            chunk = raw_frame(3, 1, b"\0" * (FRAME_MAX - 8)) * 16
            for _ in range(STREAMED // (16 * (FRAME_MAX - 8))):
                await peer.stream.send(chunk)
            # The client answers channel.flow only after reading everything before it.
            await peer.send((1, commands.Channel.Flow(active=True)))
            await peer.expect(commands.Channel.FlowOk, 1)
            await child.stdin.send(b"\n")
            done = (await lines.receive_until(b"\n", 200)).split()
            await peer.aclose()
            await child.wait()
    assert done[0] == b"done", done
    growth = int(done[1]) - int(ready[1])
    assert growth < GROWTH_BOUND_KIB, f"peak RSS grew by {growth} KiB"
    assert done[2:] == [b"1", b"0"]  # still connected; nothing delivered yet


# -- what only a hostile broker sends ----------------------------------------------


async def hostile_handshake(handler: Callable[[anyio.abc.SocketStream], Awaitable[None]]) -> Any:
    """Connect to a listener running ``handler``; the error connecting raised."""

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:  # closed even when the test's task group is cancelled
            with anyio.CancelScope() as scope:
                try:
                    await stream.receive(8)  # the protocol header
                    await handler(stream)
                except (anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                    scope.cancel()

    error: BaseException | None = None
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handle)
            url = parse_url(f"amqp://guest:guest@127.0.0.1:{port}/")
            try:
                async with connect(url, options(connect_timeout=30)):
                    pass
            except Exception as exc:
                error = exc
            tg.cancel_scope.cancel()
    return error


async def test_a_frame_with_no_end_before_tune_fails_the_connect_at_once() -> None:
    """A broker announcing a 4 GiB frame before connection.tune is a ConnectFailed from the
    frame's header, long before connect_timeout, with nothing of it buffered."""

    async def endless_frame(stream: anyio.abc.SocketStream) -> None:
        await stream.send(_FRAME.pack(1, 0, 2**32 - 1))
        while True:
            await stream.send(b"\0" * 65536)

    with anyio.fail_after(10):
        error = await hostile_handshake(endless_frame)
    assert isinstance(error, ConnectFailed), repr(error)
    assert "frame" in str(error)


async def test_server_properties_nested_deep_fail_the_connect_with_a_typed_error() -> None:
    """A connection.start whose server properties nest 5000 deep is a ConnectFailed."""

    async def deep_start(stream: anyio.abc.SocketStream) -> None:
        payload = struct.pack(">HHBB", 10, 10, 0, 9) + nested_table(5000)
        await stream.send(raw_frame(1, 0, payload + b"\0\0\0\x05PLAIN\0\0\0\x05en_US"))
        await stream.receive()

    with anyio.fail_after(10):
        error = await hostile_handshake(deep_start)
    assert isinstance(error, HareError), repr(error)
    assert isinstance(error, ConnectFailed)


async def test_a_brokers_frame_max_of_zero_is_capped_and_a_bigger_frame_refused() -> None:
    """frame_max 0 from the broker negotiates FRAME_MAX_LIMIT; a frame over it ends the
    connection with 505 from its header, before it is buffered."""
    with anyio.fail_after(10):
        async with session(frame_max=0) as (conn, peer):
            assert conn.protocol.frame_max == FRAME_MAX_LIMIT
            await open_channel(conn, peer)
            await peer.stream.send(_FRAME.pack(3, 1, FRAME_MAX_LIMIT) + b"\0" * 65536)
            with anyio.fail_after(3):
                reason = await conn.wait_closed()
            assert reason.code == 505 and "frame_max" in reason.text


async def test_a_broker_trickling_a_frame_byte_by_byte_is_declared_dead() -> None:
    """Liveness counts whole frames: a frame header and then a byte every 0.3 s, with
    heartbeats of 1 s, ends the connection for missed heartbeats."""

    async def trickle(peer: Peer) -> None:
        try:
            await peer.stream.send(_FRAME.pack(1, 0, 1000))
            while True:
                await anyio.sleep(0.3)
                await peer.stream.send(b"\0")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    with anyio.fail_after(15):
        async with session(options(heartbeat=1), heartbeat=1) as (conn, peer):
            async with anyio.create_task_group() as tg:
                tg.start_soon(trickle, peer)
                reason = await conn.wait_closed()
                tg.cancel_scope.cancel()
    assert reason.by == "network" and "heartbeat" in reason.text, reason


# -- what the client must not send -------------------------------------------------

TOO_MANY_HEADERS = Properties(headers={f"header-{i}": i for i in range(20_000)})


async def test_a_content_header_over_frame_max_fails_that_publish_alone() -> None:
    """20,000 headers (a content header over frame_max) are a ConfigError before anything is
    sent; the channel and the next publish go on."""
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            with pytest.raises(ConfigError, match="frame_max"):
                await ch.basic_publish(b"big", routing_key="q", properties=TOO_MANY_HEADERS)
            await ch.basic_publish(b"next", routing_key="q")
            _, body = await peer.expect_publish(1)
            assert body == b"next"
            assert ch.is_open and conn.is_open


@pytest.mark.parametrize(
    "bad",
    [
        Properties(headers={"k": object()}),
        Properties(headers={1: 2}),  # type: ignore[dict-item]
        TOO_MANY_HEADERS,
    ],
    ids=["object", "int-key", "over-frame-max"],
)
async def test_publish_many_sends_nothing_when_one_message_cannot_be_sent(
    bad: Properties,
) -> None:
    """basic_publish_many encodes the whole batch first: one message it cannot send is an
    UnsendableMessage with its index, nothing of the batch reaches the broker, and it takes
    no confirm tags from the next batch."""
    good = Message("", "q", b"good")
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer, publisher_confirms=True)
            with pytest.raises(UnsendableMessage) as caught:
                await ch.basic_publish_many([good, good, Message("", "q", b"bad", bad), good])
            assert caught.value.index == 2

            async def broker() -> None:
                bodies = [(await peer.expect_publish(1))[1] for _ in range(3)]
                assert bodies == [b"after-0", b"after-1", b"after-2"]
                await peer.send((1, commands.Basic.Ack(2, multiple=True)))
                await peer.send((1, commands.Basic.Ack(3)))

            after = [Message("", "q", f"after-{i}".encode()) for i in range(3)]
            await together(lambda: ch.basic_publish_many(after), broker)
            assert not ch._confirms  # the broker's tags 1-3 were the second batch's
            assert ch.is_open and conn.is_open
