"""The aiormq backend against a hostile or broken broker, and against bad input.

The fake broker is a TCP listener on 127.0.0.1 that speaks the server side of
AMQP 0-9-1 with pamqp, in the style of ``test_amqp_driver.py``, and can write
raw bytes pamqp would never produce: content headers whose properties do not
decode, frames and bodies of absurd announced sizes.

aiormq runs on asyncio only, so every test here is pinned to asyncio.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import os
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiormq
import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from anyio.abc import SocketAttribute
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pamqp import commands, constants, frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader, ProtocolHeader
from pamqp.heartbeat import Heartbeat
from structlog.testing import capture_logs

from hare_py.errors import ConfigError, ConnectFailed, ConnectionLost, UnsendableMessage
from hare_py.transport._amqp_codec import FRAME_MAX_LIMIT
from hare_py.transport.aiormq_backend import _channel, _connection, _frames
from hare_py.transport.aiormq_backend._channel import AiormqChannel
from hare_py.transport.aiormq_backend._connection import AiormqConnection, connect
from hare_py.transport.base import ConnectOptions, Delivery, Message, Properties
from hare_py.transport.url import parse_url

# aiormq is asyncio-only: there is no trio variant of these tests to run.
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """aiormq runs on asyncio only."""
    return "asyncio"


Wire = pamqp_frame.FrameTypes
F = TypeVar("F")
FRAME_MAX = 131072
_FRAME_HEADER = struct.Struct(">BHI")
_CONTENT_HEADER = struct.Struct(">HHQH")


@pytest.fixture(autouse=True)
def _short_close_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A close handshake the fake broker does not answer must not stall a test for 10 s."""
    monkeypatch.setattr(_connection, "CLOSE_TIMEOUT", 2.0)
    monkeypatch.setattr(_channel, "CLOSE_TIMEOUT", 2.0)


# -- raw frames --


def raw_frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME_HEADER.pack(kind, channel, len(payload)) + payload + b"\xce"


def raw_header(channel: int, body_size: int, flags: int, fields: bytes) -> bytes:
    """A content header frame with hand-made property flags and field bytes."""
    return raw_frame(2, channel, _CONTENT_HEADER.pack(60, 0, body_size, flags) + fields)


def nested_table(depth: int) -> bytes:
    """A field table holding ``{"a": {"a": ...}}`` ``depth`` levels deep."""
    table = b"\0\0\0\0"
    for _ in range(depth - 1):
        entry = b"\x01aF" + table
        table = struct.pack(">I", len(entry)) + entry
    return table


def table_with_key(key: bytes) -> bytes:
    entry = bytes((len(key),)) + key + b"S" + struct.pack(">I", 1) + b"v"
    return struct.pack(">I", len(entry)) + entry


POISON = {
    # timestamp 2**63-1: no datetime holds it
    "timestamp": (0x0040, struct.pack(">Q", 2**63 - 1)),
    # headers 500 levels deep: pamqp's recursive decoder overflows the stack
    "deep headers": (0x2000, nested_table(500)),
    "non-UTF-8 key": (0x2000, table_with_key(b"\xff\xfekey")),
}


# -- the fake broker --


class Peer:
    """The broker's end of one client connection, driven by the test."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.tune_ok: commands.Connection.TuneOk | None = None
        self.ch = 0  # the channel the client opened (aiormq starts at 2)
        # Streams of the client's consumers, closed with the fake broker.
        self.streams: list[MemoryObjectSendStream[Any] | MemoryObjectReceiveStream[Any]] = []

    async def send(self, *frames: tuple[int, Wire]) -> None:
        await self.stream.send(b"".join(pamqp_frame.marshal(v, ch) for ch, v in frames))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send(data)

    async def deliver(self, tag: int, body: bytes = b"hi", header: bytes | None = None) -> None:
        """A basic.deliver to consumer ``ctag``, with ``header`` (raw) or empty properties."""
        channel = self.ch
        method = pamqp_frame.marshal(commands.Basic.Deliver("ctag", tag, False, "", "q"), channel)
        if header is None:
            header = pamqp_frame.marshal(ContentHeader(0, len(body)), channel)
        await self.send_raw(method + header + pamqp_frame.marshal(ContentBody(body), channel))

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()

    def _parse_one(self) -> tuple[int, Wire] | None:
        buf = self.buf
        if len(buf) >= 4 and buf[:4] == b"AMQP":
            if len(buf) < 8:
                return None
            _, channel, value = pamqp_frame.unmarshal(bytes(buf[:8]))
            del buf[:8]
            return channel, value
        if len(buf) < constants.FRAME_HEADER_SIZE:
            return None
        _, _, payload = _FRAME_HEADER.unpack_from(buf)
        size = constants.FRAME_HEADER_SIZE + payload + 1
        if len(buf) < size:
            return None
        _, channel, value = pamqp_frame.unmarshal(bytes(buf[:size]))
        del buf[:size]
        return channel, value

    async def recv(self) -> tuple[int, Wire]:
        """The client's next frame (heartbeats skipped)."""
        while True:
            item = self._parse_one()
            if item is None:
                self.buf += await self.stream.receive(1 << 20)
                continue
            if not isinstance(item[1], Heartbeat):
                return item

    async def expect(self, kind: type[F], channel: int | None = None) -> F:
        got_channel, value = await self.recv()
        assert isinstance(value, kind), f"expected {kind.__name__}, got {value!r}"
        if channel is not None:
            assert got_channel == channel, f"{value!r} on channel {got_channel}, not {channel}"
        return value

    async def frames_until_eof(self) -> list[Wire]:
        """Every frame until the client closes the socket."""
        frames = []
        try:
            while True:
                frames.append((await self.recv())[1])
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return frames

    async def handshake(self, *, frame_max: int) -> None:
        _, header = await self.recv()
        assert isinstance(header, ProtocolHeader)
        await self.send(
            (0, commands.Connection.Start(server_properties={"product": "FakeMQ"})),
        )
        await self.expect(commands.Connection.StartOk, 0)
        await self.send((0, commands.Connection.Tune(2047, frame_max, 0)))
        self.tune_ok = await self.expect(commands.Connection.TuneOk, 0)
        await self.expect(commands.Connection.Open, 0)
        await self.send((0, commands.Connection.OpenOk()))


Script = Callable[[Peer], Awaitable[None]]


@dataclass
class FakeBroker:
    port: int
    frame_max: int
    before_handshake: Script | None
    peers: list[Peer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[Peer](10)

    def close(self) -> None:
        """Close the queue of accepted peers and the consumers' streams (once the
        client is gone, so nothing can add to them)."""
        self._send.close()
        self._receive.close()
        for peer in self.peers:
            for stream in peer.streams:
                stream.close()

    def url(self, query: str = "") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{query}"

    async def accept(self) -> Peer:
        with anyio.fail_after(5):
            return await self._receive.receive()

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        peer = Peer(stream)
        self.peers.append(peer)
        if self.before_handshake is not None:
            await self.before_handshake(peer)
            return
        await peer.handshake(frame_max=self.frame_max)
        await self._send.send(peer)


@asynccontextmanager
async def fake_broker(
    *, frame_max: int = FRAME_MAX, before_handshake: Script | None = None
) -> AsyncIterator[FakeBroker]:
    multi = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    listener = multi.listeners[0]
    assert isinstance(listener, anyio.abc.SocketListener)
    broker = FakeBroker(listener.extra(SocketAttribute.local_port), frame_max, before_handshake)

    async def serve() -> None:
        async with listener:
            while True:
                stream = await listener.accept()
                tg.start_soon(broker.handle, stream)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            try:
                yield broker
            finally:
                tg.cancel_scope.cancel()
                for peer in broker.peers:
                    await peer.aclose()
    finally:
        broker.close()


def options(**kwargs: Any) -> ConnectOptions:
    kwargs.setdefault("heartbeat", 0)
    kwargs.setdefault("connect_timeout", 5.0)
    return ConnectOptions(**kwargs)


@asynccontextmanager
async def session(
    opts: ConnectOptions | None = None, *, query: str = "", frame_max: int = FRAME_MAX
) -> AsyncIterator[tuple[AiormqConnection, Peer]]:
    async with (
        fake_broker(frame_max=frame_max) as broker,
        connect(parse_url(broker.url(query)), opts or options()) as conn,
    ):
        peer = await broker.accept()
        try:
            yield conn, peer
        finally:
            await peer.aclose()


T = TypeVar("T")


async def together(client: Callable[[], Awaitable[T]], broker: Callable[[], Awaitable[Any]]) -> T:
    """Run a client call and the broker's part of it concurrently; the call's result."""
    result: list[T] = []

    async def run_client() -> None:
        result.append(await client())

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_client)
        await broker()
    return result[0]


async def open_channel(conn: AiormqConnection, peer: Peer) -> AiormqChannel:
    async def broker_side() -> None:
        peer.ch, value = await peer.recv()
        assert isinstance(value, commands.Channel.Open), value
        await peer.send((peer.ch, commands.Channel.OpenOk()))

    ch = await together(conn.open_channel, broker_side)
    assert isinstance(ch, AiormqChannel)
    return ch


async def consume(ch: AiormqChannel, peer: Peer) -> anyio.abc.ObjectReceiveStream[Delivery]:
    """Consume queue ``q`` as ``ctag``; deliveries arrive on the returned stream."""
    send, receive = anyio.create_memory_object_stream[Delivery](math.inf)
    peer.streams += (send, receive)

    async def broker_side() -> None:
        await peer.expect(commands.Basic.Consume, peer.ch)
        await peer.send((peer.ch, commands.Basic.ConsumeOk("ctag")))

    await together(
        lambda: ch.basic_consume("q", send.send_nowait, consumer_tag="ctag"), broker_side
    )
    return receive


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)


# -- poison properties --


@pytest.mark.parametrize("poison", list(POISON))
async def test_undecodable_properties_arrive_as_a_delivery_to_reject(poison: str) -> None:
    """A delivery whose properties do not decode reaches the consumer flagged, the
    connection stays up, it can be rejected without requeue, and the next one decodes."""
    flags, fields = POISON[poison]
    with anyio.fail_after(10), capture_logs() as logs:
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            deliveries = await consume(ch, peer)
            await peer.deliver(1, b"poison", raw_header(peer.ch, 6, flags, fields))
            good = Properties(correlation_id="c-2", headers={"k": "v"})
            await peer.deliver(2, b"fine", _header_of(good, 4, peer.ch))
            bad = await deliveries.receive()
            assert bad.body == b"poison"
            assert bad.undecodable
            assert bad.properties == Properties()
            await ch.basic_reject(bad.delivery_tag, requeue=False)
            reject = await peer.expect(commands.Basic.Reject, peer.ch)
            assert (reject.delivery_tag, reject.requeue) == (1, False)
            ok = await deliveries.receive()
            assert ok.undecodable is None
            assert (ok.body, ok.properties) == (b"fine", good)
            assert conn.is_open and ch.is_open
    warnings = [e for e in logs if e.get("log_level") == "warning" and "undecodable" in e["event"]]
    assert len(warnings) == 1, logs


def _header_of(properties: Properties, body_size: int, channel: int) -> bytes:
    wire = commands.Basic.Properties(
        correlation_id=properties.correlation_id, headers=dict(properties.headers or {})
    )
    return pamqp_frame.marshal(ContentHeader(0, body_size, wire), channel)


async def test_a_content_header_with_broken_layout_ends_the_connection() -> None:
    """A header whose strings run past its frame cannot be trusted: ConnectionLost, not a crash."""
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            await consume(ch, peer)
            # content_type says 200 bytes follow; the frame ends after 3
            await peer.deliver(1, b"x", raw_header(peer.ch, 1, 0x8000, b"\xc8abc"))
            reason = await conn.wait_closed()
            assert reason.by == "network"
            with pytest.raises(ConnectionLost):
                await ch.queue_declare("after")


async def test_names_that_are_not_utf8_get_replacement_characters() -> None:
    """A routing key that is not UTF-8 (a raw publisher's) arrives with replacement
    characters instead of ending the connection."""
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            deliveries = await consume(ch, peer)
            ctag, key = b"ctag", b"key-\xff\xfe"
            method = struct.pack(">HH", 60, 60) + bytes((len(ctag),)) + ctag
            method += struct.pack(">QB", 1, 0) + b"\x00" + bytes((len(key),)) + key
            empty = pamqp_frame.marshal(ContentHeader(0, 2), peer.ch)
            body = pamqp_frame.marshal(ContentBody(b"hi"), peer.ch)
            await peer.send_raw(raw_frame(1, peer.ch, method) + empty + body)
            delivery = await deliveries.receive()
            assert delivery.routing_key == "key-\ufffd\ufffd"
            assert delivery.body == b"hi"
            assert conn.is_open and ch.is_open


async def test_a_close_text_cut_mid_character_is_a_broker_error() -> None:
    """A channel.close whose reply text the broker cut inside a character closes that
    channel with its code, as any other; the connection stays up."""
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            text = "NOT_FOUND - no queue 'é".encode()[:-1]
            close = struct.pack(">HHH", 20, 40, 404) + bytes((len(text),)) + text
            close += struct.pack(">HH", 50, 10)
            async with anyio.create_task_group() as tg:
                errors: list[BaseException] = []

                async def declare() -> None:
                    try:
                        await ch.queue_declare("q", passive=True)
                    except Exception as exc:
                        errors.append(exc)

                tg.start_soon(declare)
                await peer.expect(commands.Queue.Declare, peer.ch)
                await peer.send_raw(raw_frame(1, peer.ch, close))
                await until(lambda: bool(errors))
            assert getattr(errors[0], "code", None) == 404, repr(errors[0])
            assert conn.is_open


async def test_a_client_method_from_the_broker_ends_the_connection_cleanly() -> None:
    """A method only a client sends (queue.declare, with a table nested 500 deep) from
    the broker is refused before pamqp decodes it: ConnectionLost (505), not RecursionError."""
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            declare = struct.pack(">HHH", 50, 10, 0) + b"\x01q\x00" + nested_table(500)
            async with anyio.create_task_group() as tg:
                errors: list[BaseException] = []

                async def call() -> None:
                    try:
                        await ch.queue_declare("q")
                    except Exception as exc:
                        errors.append(exc)

                tg.start_soon(call)
                await peer.expect(commands.Queue.Declare, peer.ch)
                await peer.send_raw(raw_frame(1, peer.ch, declare))
                reason = await conn.wait_closed()
                await until(lambda: bool(errors))
            assert (reason.code, reason.by) == (505, "network")
            assert isinstance(errors[0], ConnectionLost), repr(errors[0])


async def test_server_properties_nested_too_deep_fail_the_connect() -> None:
    """A connection.start whose server properties nest 500 deep is ConnectFailed."""

    async def script(peer: Peer) -> None:
        await peer.recv()
        table = nested_table(500)
        start = struct.pack(">HHBB", 10, 10, 0, 9) + table
        start += struct.pack(">I", 5) + b"PLAIN" + struct.pack(">I", 5) + b"en_US"
        await peer.send_raw(raw_frame(1, 0, start))
        await peer.frames_until_eof()

    with anyio.fail_after(5):
        error = await _connect_refused(script)
    assert "nested" in str(error)


async def test_a_frame_max_under_the_amqp_minimum_fails_the_connect() -> None:
    """A broker offering frame_max 512 (AMQP's minimum is 4096) is refused at connect."""

    async def script(peer: Peer) -> None:
        await peer.recv()
        await peer.send((0, commands.Connection.Start(server_properties={})))
        await peer.expect(commands.Connection.StartOk, 0)
        await peer.send((0, commands.Connection.Tune(2047, 512, 0)))
        await peer.frames_until_eof()

    with anyio.fail_after(5):
        error = await _connect_refused(script)
    assert "4096" in str(error)


@pytest.mark.parametrize("chunk", [1, 7, 13, 4096])
async def test_the_frame_guard_reads_any_split_of_the_stream(chunk: int) -> None:
    """However the socket splits the stream, aiormq's frame reader gets every frame
    whole and in order, and each content header's properties wait under its tag."""
    wire = commands.Basic.Properties(correlation_id="c", headers={"k": [1, "x"]})
    frames: list[tuple[int, Wire]] = [
        (0, Heartbeat()),
        (2, commands.Basic.Deliver("ctag", 7, False, "ex", "rk")),
        (2, ContentHeader(0, 5, wire)),
        (2, ContentBody(b"he")),
        (2, ContentBody(b"llo")),
        (2, commands.Channel.Close(404, "NOT_FOUND", 50, 10)),
    ]
    data = b"".join(pamqp_frame.marshal(v, ch) for ch, v in frames)
    reader = asyncio.StreamReader()
    headers = _frames.HeaderStore()
    headers.reset(2)
    guard = _frames.FrameGuard(
        reader, max_body_size=1 << 20, is_open=lambda n: n == 2, headers=headers
    )
    receiver = aiormq.connection.FrameReceiver(guard)  # type: ignore[arg-type]

    async def feed() -> None:
        for start in range(0, len(data), chunk):
            reader.feed_data(data[start : start + chunk])
            await anyio.lowlevel.checkpoint()
        reader.feed_eof()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            got = [await receiver.get_frame() for _ in frames]
    assert [(ch, type(v)) for _, ch, v in got] == [(ch, type(v)) for ch, v in frames]
    header = got[2][2]
    assert isinstance(header, ContentHeader) and header.body_size == 5
    taken = headers.take(2, header.weight)
    assert taken.properties == Properties(correlation_id="c", headers={"k": [1, "x"]})
    assert b"".join(v.value for _, _, v in got[3:5] if isinstance(v, ContentBody)) == b"hello"
    assert guard.at_eof()


async def test_a_burst_of_deliveries_keeps_every_message_s_properties() -> None:
    """Two thousand small deliveries in one write each arrive with their own properties."""
    with anyio.fail_after(20):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            deliveries = await consume(ch, peer)
            burst = b"".join(
                pamqp_frame.marshal(commands.Basic.Deliver("ctag", i, False, "", "q"), peer.ch)
                + _header_of(Properties(correlation_id=f"c{i}"), 1, peer.ch)
                + pamqp_frame.marshal(ContentBody(b"x"), peer.ch)
                for i in range(1, 2001)
            )
            await peer.send_raw(burst)
            for i in range(1, 2001):
                delivery = await deliveries.receive()
                assert delivery.undecodable is None, delivery
                assert (delivery.delivery_tag, delivery.properties.correlation_id) == (i, f"c{i}")


# -- sizes the broker announces --


async def _connect_refused(before_handshake: Script) -> BaseException:
    async with fake_broker(before_handshake=before_handshake) as broker:
        with pytest.raises(ConnectFailed) as info:
            async with connect(parse_url(broker.url()), options()):
                pass
    return info.value


async def test_a_huge_frame_before_tune_is_refused_at_once() -> None:
    """A frame announced larger than any pre-tune frame may be fails the connect at once."""

    async def script(peer: Peer) -> None:
        await peer.recv()  # protocol header
        await peer.send_raw(_FRAME_HEADER.pack(1, 0, 2**32 - 1))
        await _flood(peer)

    with anyio.fail_after(4):
        error = await _connect_refused(script)
    assert "frame" in str(error)


async def test_frame_max_zero_is_capped_and_larger_frames_refused() -> None:
    """A broker offering frame_max=0 (no limit) gets a bounded tune-ok, and a frame over it
    ends the connection with ConnectionLost for the caller waiting on it."""
    with anyio.fail_after(10):
        async with session(frame_max=0) as (conn, peer):
            assert peer.tune_ok is not None
            assert peer.tune_ok.frame_max == FRAME_MAX_LIMIT
            ch = await open_channel(conn, peer)
            async with anyio.create_task_group() as tg:
                failure: list[BaseException] = []

                async def declare() -> None:
                    try:
                        await ch.queue_declare("q")
                    except ConnectionLost as exc:
                        failure.append(exc)

                tg.start_soon(declare)
                await peer.expect(commands.Queue.Declare, peer.ch)
                await peer.send_raw(_FRAME_HEADER.pack(1, peer.ch, FRAME_MAX_LIMIT))
                tg.start_soon(_flood, peer)
                reason = await conn.wait_closed()
                await until(lambda: bool(failure))
                tg.cancel_scope.cancel()
            assert isinstance(failure[0], ConnectionLost) and failure[0].code == 501
            assert (reason.code, reason.by) == (501, "network")
            assert "frame_max" in reason.text


async def _flood(peer: Peer) -> None:
    try:
        while True:
            await peer.send_raw(b"\0" * 65536)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        return


@pytest.mark.parametrize("body_size", [2**63, 2**64 - 1, 128 * 2**20 + 1])
async def test_a_body_over_the_maximum_arrives_empty_and_flagged(body_size: int) -> None:
    """A content header announcing a body over max_body_size (128 MiB by default) hands
    the consumer an empty delivery marked undecodable at once; the body frames that
    follow are dropped unread and the connection stays up."""
    with anyio.fail_after(10), capture_logs() as logs:
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            deliveries = await consume(ch, peer)
            await peer.deliver(1, b"x" * 100, raw_header(peer.ch, body_size, 0, b""))
            big = await deliveries.receive()
            assert big.body == b""
            assert big.undecodable is not None and "max_body_size" in big.undecodable
            await ch.basic_reject(big.delivery_tag, requeue=False)
            await peer.expect(commands.Basic.Reject, peer.ch)
            assert conn.is_open and ch.is_open
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["amqp.body_too_large"]


async def test_a_body_dropped_to_its_end_lets_the_next_message_through() -> None:
    """Once a body over the limit has streamed by, the next delivery arrives whole."""
    with anyio.fail_after(10):
        async with session(options(max_body_size=1000)) as (conn, peer):
            ch = await open_channel(conn, peer)
            deliveries = await consume(ch, peer)
            await peer.deliver(1, b"x" * 1000)
            assert (await deliveries.receive()).body == b"x" * 1000
            await peer.deliver(2, b"y" * 5000)
            dropped = await deliveries.receive()
            assert (dropped.delivery_tag, dropped.body) == (2, b"")
            assert dropped.undecodable is not None
            await peer.deliver(3, b"z" * 10)
            after = await deliveries.receive()
            assert (after.delivery_tag, after.body, after.undecodable) == (3, b"z" * 10, None)
            assert conn.is_open


async def test_a_body_being_dropped_counts_as_signs_of_life() -> None:
    """Body frames dropped unread still prove the broker alive: a slow body over the
    limit, with nothing else sent for three heartbeat intervals, keeps the connection."""
    with anyio.fail_after(15):
        async with session(options(heartbeat=1, max_body_size=10)) as (conn, peer):
            ch = await open_channel(conn, peer)
            deliveries = await consume(ch, peer)
            await peer.deliver(1, b"", raw_header(peer.ch, 1000, 0, b""))
            assert (await deliveries.receive()).undecodable is not None
            for _ in range(10):
                await peer.send_raw(pamqp_frame.marshal(ContentBody(b"x" * 100), peer.ch))
                await anyio.sleep(0.3)
            assert conn.is_open, conn.close_reason


async def test_max_body_size_from_the_url() -> None:
    """The URL's max_body_size= sets the limit too."""
    with anyio.fail_after(10):
        async with session(query="?max_body_size=10") as (conn, peer):
            ch = await open_channel(conn, peer)
            deliveries = await consume(ch, peer)
            await peer.deliver(1, b"x" * 11)
            assert (await deliveries.receive()).undecodable is not None


async def test_a_body_frame_beyond_its_message_ends_the_connection() -> None:
    """Body bytes beyond the size the header announced break the stream: ConnectionLost."""
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            await consume(ch, peer)
            await peer.deliver(1, b"x" * 10, raw_header(peer.ch, 5, 0, b""))
            reason = await conn.wait_closed()
            assert (reason.code, reason.by) == (501, "network")
            with pytest.raises(ConnectionLost):
                await ch.queue_declare("after")


_MEMORY_CHILD = textwrap.dedent(
    """
    import asyncio, json, resource, struct, sys

    from pamqp import commands, frame
    from pamqp.body import ContentBody
    from hare_py.transport.aiormq_backend._connection import connect
    from hare_py.transport.base import ConnectOptions
    from hare_py.transport.url import parse_url

    MODE, TOTAL = sys.argv[1], int(sys.argv[2])

    def peak_kib():
        # VmHWM starts afresh at exec; ru_maxrss keeps the forking parent's peak.
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    CHUNK = b"\\0" * (1 << 16)
    flooded = asyncio.Event()

    async def read_frame(reader):
        head = await reader.readexactly(7)
        if head.startswith(b"AMQP"):
            return 0, await reader.readexactly(1)
        _, channel, size = struct.unpack(">BHI", head)
        return channel, await reader.readexactly(size + 1)

    async def flood(writer, data):
        sent = 0
        try:
            while sent < TOTAL:
                writer.write(data)
                await writer.drain()
                sent += len(data)
        except OSError:
            pass
        flooded.set()

    async def broker(reader, writer):
        await read_frame(reader)
        if MODE == "frame":
            writer.write(struct.pack(">BHI", 1, 0, 2**32 - 1))
            await flood(writer, CHUNK)
            return
        writer.write(frame.marshal(commands.Connection.Start(), 0))
        await read_frame(reader)
        writer.write(frame.marshal(commands.Connection.Tune(2047, 131072, 0), 0))
        await read_frame(reader)
        await read_frame(reader)
        writer.write(frame.marshal(commands.Connection.OpenOk(), 0))
        ch, _ = await read_frame(reader)
        writer.write(frame.marshal(commands.Channel.OpenOk(), ch))
        writer.write(frame.marshal(commands.Basic.Deliver("t", 1, False, "", "q"), ch))
        writer.write(struct.pack(">BHIHHQH", 2, ch, 14, 60, 0, 2**63, 0) + b"\\xce")
        await flood(writer, frame.marshal(ContentBody(b"\\0" * (131072 - 8)), ch))

    async def main():
        server = await asyncio.start_server(broker, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        url = parse_url(f"amqp://guest:guest@127.0.0.1:{port}/")
        base = peak_kib()
        try:
            async with connect(url, ConnectOptions(heartbeat=0, connect_timeout=60)) as conn:
                await conn.open_channel()
                closed = asyncio.ensure_future(conn.wait_closed())
                await asyncio.wait([closed, asyncio.ensure_future(flooded.wait())],
                                   timeout=60, return_when=asyncio.FIRST_COMPLETED)
                outcome = "closed" if closed.done() else "open"
                closed.cancel()
        except Exception as exc:
            outcome = type(exc).__name__
        server.close()
        peak = peak_kib()
        print(json.dumps({"base_kib": base, "peak_kib": peak, "outcome": outcome}))

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("mode", ["frame", "body"])
def test_memory_stays_bounded_against_a_flooding_broker(mode: str) -> None:
    """A broker announcing a 4 GiB frame before tune, or a 2**63-byte body, then streaming
    512 MiB, raises the client's peak RSS by less than 64 MiB (measured in a child process)."""
    total = 512 << 20
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, mode, str(total)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    grown_mib = (result["peak_kib"] - result["base_kib"]) / 1024
    assert grown_mib < 64, result
    # the frame is refused at its header; the body is dropped as it streams by
    assert result["outcome"] == ("ConnectFailed" if mode == "frame" else "open"), result


# -- what the client sends --


async def test_a_header_key_over_128_bytes_is_refused_not_truncated() -> None:
    """A header key longer than AMQP's 128 bytes fails that publish with ConfigError and
    sends nothing; the channel goes on."""
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            with pytest.raises(ConfigError, match="128"):
                await ch.basic_publish(b"x", routing_key="q", properties=_headers({"k" * 129: 1}))
            await ch.basic_publish(b"ok", routing_key="q")
            publish = await peer.expect(commands.Basic.Publish, peer.ch)
            assert publish.routing_key == "q"
            await peer.expect(ContentHeader, peer.ch)
            assert (await peer.expect(ContentBody, peer.ch)).value == b"ok"
            assert ch.is_open


def _headers(headers: dict[Any, Any]) -> Properties:
    return Properties(headers=headers)


async def test_a_content_header_over_frame_max_is_refused_before_sending() -> None:
    """20,000 headers make a content header over frame_max: ConfigError for that publish
    alone (a broker would close the whole connection with 501)."""
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            many = _headers({f"h{i}": i for i in range(20_000)})
            with pytest.raises(ConfigError, match="frame_max"):
                await ch.basic_publish(b"x", routing_key="q", properties=many)
            await ch.basic_publish(b"ok", routing_key="q2")
            publish = await peer.expect(commands.Basic.Publish, peer.ch)
            assert publish.routing_key == "q2"
            assert conn.is_open and ch.is_open


@pytest.mark.parametrize(
    "bad",
    [
        Message("", "q", b"x", Properties(headers={1: 2})),  # type: ignore[dict-item]
        Message("", "q", b"x", Properties(headers={"k" * 129: 1})),
        Message("", "q", b"x", Properties(headers={f"h{i}": i for i in range(20_000)})),
        Message("", "q" * 256, b"x"),
        Message("", "\ud800", b"x"),
        Message("bad exchange!", "q", b"x"),
    ],
    ids=["int key", "long key", "header over frame_max", "long key name", "surrogate", "exchange"],
)
async def test_publish_many_sends_nothing_when_one_message_cannot_be_encoded(
    bad: Message,
) -> None:
    """basic_publish_many encodes every message before writing any: one it cannot send
    fails the batch with UnsendableMessage naming its index, and nothing leaves."""
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            good = Message("", "q", b"good")
            with pytest.raises(UnsendableMessage) as info:
                await ch.basic_publish_many([good, good, bad, good])
            assert info.value.index == 2
            assert isinstance(info.value, ConfigError)
            await ch.basic_publish(b"marker", routing_key="after")
            publish = await peer.expect(commands.Basic.Publish, peer.ch)
            assert publish.routing_key == "after"


async def test_a_write_whose_drain_fails_raises_connection_lost() -> None:
    """A publish written to the socket whose drain then fails (the broker reset the
    connection) raises ConnectionLost: the caller cannot know if it arrived."""
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            raw = peer.stream.extra(SocketAttribute.raw_socket)
            # The broker stops reading: big publishes fill the socket buffers and wait in drain.
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            errors: list[BaseException] = []

            async def publish() -> None:
                try:
                    while True:
                        await ch.basic_publish(b"x" * (1 << 20), routing_key="q")
                except Exception as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(publish)
                await anyio.sleep(0.2)
                # RST instead of FIN: the pending drain fails with a reset.
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await peer.aclose()
                await until(lambda: bool(errors))
            assert isinstance(errors[0], ConnectionLost), repr(errors[0])


# -- the aiormq internals this backend overrides --


def _params(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_the_private_aiormq_hooks_the_backend_relies_on_still_exist() -> None:
    """Every private aiormq hook the backend overrides or calls exists with the
    signature it expects; an aiormq upgrade that changes one fails here first."""
    channel, connection = aiormq.Channel, aiormq.Connection
    assert _params(channel._get_frame) == ["self"]
    assert _params(channel._read_content) == ["self", "frame", "header"]
    assert _params(channel._on_deliver_frame) == ["self", "frame"]
    assert _params(channel._on_return_frame) == ["self", "frame"]
    assert _params(channel._on_close_frame) == ["self", "frame"]
    assert _params(channel._split_body) == ["self", "body"]
    assert _params(channel.__init__)[:6] == [
        "self",
        "connector",
        "number",
        "publisher_confirms",
        "frame_buffer",
        "on_return_raises",
    ]
    assert _params(connection._on_reader_done) == ["self", "task"]
    assert isinstance(inspect.getattr_static(connection, "_rpc"), staticmethod)
    assert _params(connection._rpc) == ["request", "writer", "frame_receiver", "wait_response"]
    assert "transport_factory" in _params(connection.__init__)
    assert _params(aiormq.connection.TransportFactory.create) == ["self", "url", "kwargs"]
    # aiormq's frame reader uses only these of the stream reader we hand it.
    source = inspect.getsource(aiormq.connection.FrameReceiver.get_frame)
    used = {name for name in ("readexactly", "read", "at_eof", "readline") if f".{name}(" in source}
    assert used == {"readexactly", "read", "at_eof"}
    for name in ("write_queue", "FRAME_BUFFER_SIZE", "last_channel_lock", "channels"):
        assert hasattr(connection, name) or name in inspect.getsource(connection.__init__)
    # The backend's overrides take what aiormq passes them.
    overrides = {
        _channel._RawChannel: ("_on_deliver_frame", "_on_return_frame", "_on_close_frame"),
        _connection._RawConnection: ("_on_reader_done", "_rpc"),
    }
    for cls, names in overrides.items():
        base = cls.__mro__[1]
        for name in names:
            assert name in vars(cls), f"{cls.__name__} no longer overrides {name}"
            theirs = _params(getattr(base, name))
            if isinstance(inspect.getattr_static(base, name), staticmethod):
                theirs = ["self", *theirs]  # called as self._rpc(...)
            assert _params(getattr(cls, name)) == theirs, name
