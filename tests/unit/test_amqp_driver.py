"""The anyio AMQP driver and its channels against a scripted fake broker.

The fake broker is a TCP listener on 127.0.0.1 that speaks the server side of
AMQP 0-9-1 with pamqp: it does the handshake (or refuses it, drops it, or never
answers), then hands the socket to the test, which reads the client's frames
and writes the broker's, one by one. That shows what a real RabbitMQ will not
do on demand: wrong replies, late replies, silence, a broker that stops
reading, frames in a chosen order within a chosen write.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Literal, TypeVar

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute
from pamqp import commands, constants, frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader, ProtocolHeader
from pamqp.heartbeat import Heartbeat

from hare_py.errors import BrokerError, ConnectFailed, ConnectionLost
from hare_py.transport.amqp import _channel, _connection
from hare_py.transport.amqp._connection import AmqpConnection, connect
from hare_py.transport.base import CloseReason, ConnectOptions, Delivery, ReturnedMessage
from hare_py.transport.url import parse_url

pytestmark = pytest.mark.anyio

Wire = pamqp_frame.FrameTypes
F = TypeVar("F")
PASSWORD = "s3cret-Pa55w0rd-xyzzy"
FRAME_MAX = 131072
_FRAME_HEADER = struct.Struct(">BHI")


@pytest.fixture(autouse=True)
def _short_close_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A close handshake the fake broker does not answer must not stall a test for 10 s."""
    monkeypatch.setattr(_connection, "CLOSE_TIMEOUT", 2.0)
    monkeypatch.setattr(_channel, "CLOSE_TIMEOUT", 2.0)


# -- the fake broker --


class Peer:
    """The broker's end of one client connection, driven by the test."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.reads = 0  # receive() calls that returned data
        self.heartbeats = 0  # heartbeat frames from the client
        self.start_ok: commands.Connection.StartOk | None = None

    # - out -

    async def send(self, *frames: tuple[int, Wire]) -> None:
        """Write ``frames`` (channel, frame) back to back in one write."""
        await self.stream.send(b"".join(pamqp_frame.marshal(v, ch) for ch, v in frames))

    async def send_content(
        self, channel: int, method: Wire, body: bytes, properties: Any = None
    ) -> None:
        """A deliver/return with its header and body, in one write."""
        await self.send(
            (channel, method),
            (channel, ContentHeader(0, len(body), properties or commands.Basic.Properties())),
            (channel, ContentBody(body)),
        )

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()

    # - in -

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

    async def recv(self, *, heartbeats: bool = False) -> tuple[int, Wire]:
        """The client's next frame; heartbeats are counted and skipped unless asked for."""
        while True:
            item = self._parse_one()
            if item is None:
                data = await self.stream.receive(1 << 20)
                self.reads += 1
                self.buf += data
                continue
            if isinstance(item[1], Heartbeat):
                self.heartbeats += 1
                if not heartbeats:
                    continue
            return item

    async def expect(self, kind: type[F], channel: int | None = None) -> F:
        """The next frame, which must be a ``kind`` (on ``channel`` if given)."""
        got_channel, value = await self.recv()
        assert isinstance(value, kind), f"expected {kind.__name__}, got {value!r}"
        if channel is not None:
            assert got_channel == channel, f"{value!r} on channel {got_channel}, not {channel}"
        return value

    async def expect_publish(self, channel: int = 1) -> tuple[commands.Basic.Publish, bytes]:
        """One basic.publish with its header and body frames; (method, body)."""
        method = await self.expect(commands.Basic.Publish, channel)
        header = await self.expect(ContentHeader, channel)
        body = bytearray()
        while len(body) < header.body_size:
            part = await self.expect(ContentBody, channel)
            body += part.value
        return method, bytes(body)

    async def recv_until_eof(self) -> list[tuple[int, Wire]]:
        """Every frame until the client closes the socket."""
        frames = []
        try:
            while True:
                frames.append(await self.recv())
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return frames

    # - the broker's side of the handshake -

    async def start(self) -> None:
        """Protocol header in, connection.start out, start-ok in."""
        _, header = await self.recv()
        assert isinstance(header, ProtocolHeader)
        await self.send(
            (
                0,
                commands.Connection.Start(
                    server_properties={"product": "FakeMQ", "version": "0.0"},
                    mechanisms="PLAIN AMQPLAIN",
                ),
            )
        )
        self.start_ok = await self.expect(commands.Connection.StartOk, 0)

    async def tune_and_open(self, *, heartbeat: int, frame_max: int) -> None:
        await self.send((0, commands.Connection.Tune(2047, frame_max, heartbeat)))
        await self.expect(commands.Connection.TuneOk, 0)
        await self.expect(commands.Connection.Open, 0)
        await self.send((0, commands.Connection.OpenOk()))

    async def open_channel(self, channel: int = 1, *, confirms: bool = False) -> None:
        await self.expect(commands.Channel.Open, channel)
        await self.send((channel, commands.Channel.OpenOk()))
        if confirms:
            await self.expect(commands.Confirm.Select, channel)
            await self.send((channel, commands.Confirm.SelectOk()))


Login = Literal["ok", "refuse", "drop", "silent"]


class FakeBroker:
    def __init__(self, port: int, login: Login, heartbeat: int, frame_max: int) -> None:
        self.port = port
        self.login = login
        self.heartbeat = heartbeat
        self.frame_max = frame_max
        self.peers: list[Peer] = []
        self._send, self._receive = anyio.create_memory_object_stream[Peer](10)

    def close(self) -> None:
        """Close the queue of accepted peers (once nothing can add to it)."""
        self._send.close()
        self._receive.close()

    def url(self, password: str = PASSWORD) -> str:
        return f"amqp://guest:{password}@127.0.0.1:{self.port}/"

    async def accept(self) -> Peer:
        """The next client connection, once its handshake is done."""
        with anyio.fail_after(5):
            return await self._receive.receive()

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        peer = Peer(stream)
        self.peers.append(peer)
        if self.login == "silent":
            return  # never a word back; the socket stays open
        await peer.start()
        if self.login == "refuse":
            await peer.send(
                (
                    0,
                    commands.Connection.Close(
                        403,
                        "ACCESS_REFUSED - Login was refused using authentication mechanism",
                        0,
                        0,
                    ),
                )
            )
            await peer.expect(commands.Connection.CloseOk, 0)
            await peer.aclose()
            return
        if self.login == "drop":
            await peer.aclose()
            return
        await peer.tune_and_open(heartbeat=self.heartbeat, frame_max=self.frame_max)
        await self._send.send(peer)


@asynccontextmanager
async def fake_broker(
    *,
    login: Login = "ok",
    heartbeat: int = 0,
    frame_max: int = FRAME_MAX,
    rcvbuf: int | None = None,
) -> AsyncIterator[FakeBroker]:
    """A fake broker on 127.0.0.1; every socket it accepted is closed on exit."""
    multi = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    listener = multi.listeners[0]  # 127.0.0.1: one socket
    assert isinstance(listener, anyio.abc.SocketListener)
    if rcvbuf is not None:
        # Inherited by accepted sockets: a small window, so that a broker that
        # stops reading soon stops the client's writes too.
        raw = listener.extra(SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    broker = FakeBroker(listener.extra(SocketAttribute.local_port), login, heartbeat, frame_max)

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
    opts: ConnectOptions | None = None, **broker_kwargs: Any
) -> AsyncIterator[tuple[AmqpConnection, Peer]]:
    """A connected client and the broker's end of its socket.

    The broker drops the socket before the client's ``async with`` ends, so the
    client's close never waits on a broker that no longer answers.
    """
    async with (
        fake_broker(**broker_kwargs) as broker,
        connect(parse_url(broker.url()), opts or options()) as conn,
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


async def open_channel(
    conn: AmqpConnection, peer: Peer, channel: int = 1, **kwargs: Any
) -> _channel.AmqpChannel:
    confirms = bool(kwargs.get("publisher_confirms"))
    ch = await together(
        lambda: conn.open_channel(**kwargs), lambda: peer.open_channel(channel, confirms=confirms)
    )
    assert isinstance(ch, _channel.AmqpChannel)
    assert ch.number == channel
    return ch


class Pending:
    """A client call running in the background: its result or its error, once done."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    async def run(self, call: Callable[[], Awaitable[Any]]) -> None:
        # Done only when the call returns or raises; not when the test cancels it.
        try:
            self.result = await call()
        except Exception as exc:
            self.error = exc
        self.done.set()

    async def wait(self) -> Pending:
        with anyio.fail_after(5):
            await self.done.wait()
        return self


def spawn(tg: anyio.abc.TaskGroup, call: Callable[[], Awaitable[Any]]) -> Pending:
    pending = Pending()
    tg.start_soon(pending.run, call)
    return pending


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)


async def quiet_for(conn: AmqpConnection, seconds: float = 0.3) -> None:
    """Give the reader time to act on what the broker sent."""
    with anyio.move_on_after(seconds):
        await conn.wait_closed()


# -- 1. heartbeats --


async def test_heartbeats_sent_when_idle_and_a_silent_broker_is_declared_dead() -> None:
    with anyio.fail_after(15):
        async with session(options(heartbeat=1), heartbeat=1) as (conn, peer):
            assert conn.heartbeat == 1
            ch = await open_channel(conn, peer)

            # Phase 1: the broker sends heartbeats and only reads; the idle
            # client must send its own, and stay open past 2 intervals.
            async def broker_alive(seconds: float) -> None:
                with anyio.move_on_after(seconds):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(peer.recv)  # counts heartbeats; nothing else may come
                        while True:
                            await peer.stream.send(Heartbeat.marshal())
                            await anyio.sleep(0.4)

            await broker_alive(3.0)
            assert conn.is_open, conn.close_reason
            # Heartbeats every 0.5 s, or every 1 s when a tick comes a hair early.
            assert peer.heartbeats >= 2, f"only {peer.heartbeats} client heartbeats in 3 s"

            # Phase 2: a call waits, the broker goes silent (socket open, reading).
            async with anyio.create_task_group() as tg:
                declare = spawn(tg, lambda: ch.queue_declare("q"))
                await peer.expect(commands.Queue.Declare, 1)
                await peer.stream.send(Heartbeat.marshal())  # the broker's last word
                silent_since = anyio.current_time()
                before = peer.heartbeats
                tg.start_soon(peer.recv_until_eof)
                with anyio.fail_after(4):
                    reason = await conn.wait_closed()
                took = anyio.current_time() - silent_since
                await declare.wait()
                tg.cancel_scope.cancel()
            assert reason.by == "network"
            assert "heartbeat" in reason.text
            assert 1.9 <= took <= 3.5, took  # 2 intervals, detected on a 0.5 s tick
            assert peer.heartbeats > before, "the client stopped sending heartbeats"
            assert isinstance(declare.error, ConnectionLost)
            assert ch.close_reason is not None and ch.close_reason.by == "connection"
            with pytest.raises(ConnectionLost):
                await ch.queue_declare("after")


# -- 2. a reply of the wrong type --


async def test_wrong_reply_type_breaks_the_connection_with_505() -> None:
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            async with anyio.create_task_group() as tg:
                spawn(tg, lambda: ch.exchange_declare("x"))  # see the test below
                await peer.expect(commands.Exchange.Declare, 1)
                behind = spawn(tg, lambda: ch.queue_declare("q"))
                await peer.expect(commands.Queue.Declare, 1)
                await peer.send((1, commands.Queue.DeclareOk("q", 0, 0)))
                with anyio.fail_after(3):
                    reason = await conn.wait_closed()
                await behind.wait()
                tg.cancel_scope.cancel()
            assert reason.code == 505
            assert reason.by == "network"
            assert "Queue.DeclareOk" in reason.text
            assert conn.close_reason == reason
            assert isinstance(behind.error, ConnectionLost)
            assert behind.error.code == 505
            assert ch.close_reason is not None and ch.close_reason.by == "connection"
            with pytest.raises(ConnectionLost):
                await ch.queue_declare("after")


async def test_the_call_answered_with_the_wrong_type_fails_with_connection_lost() -> None:
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            async with anyio.create_task_group() as tg:
                declare = spawn(tg, lambda: ch.exchange_declare("x"))
                await peer.expect(commands.Exchange.Declare, 1)
                await peer.send((1, commands.Queue.DeclareOk("q", 0, 0)))
                with anyio.fail_after(3):
                    await conn.wait_closed()
                with anyio.move_on_after(1):
                    await declare.done.wait()
                tg.cancel_scope.cancel()
            assert declare.done.is_set(), "exchange_declare still waits, 1 s after the close"
            assert isinstance(declare.error, ConnectionLost)


async def test_wrong_reply_type_sends_connection_close_505_to_the_broker() -> None:
    # Regression: _broken queued the 505 close, then _lost cancelled the writer
    # before it went out; the broker only saw the socket drop.
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            async with anyio.create_task_group() as tg:
                spawn(tg, lambda: ch.exchange_declare("x"))
                await peer.expect(commands.Exchange.Declare, 1)
                await peer.send((1, commands.Queue.DeclareOk("q", 0, 0)))
                # Everything the client wrote until it dropped the socket.
                with anyio.fail_after(4):
                    frames = await peer.recv_until_eof()
                tg.cancel_scope.cancel()
            assert conn.close_reason is not None and conn.close_reason.code == 505
            closes = [v for _, v in frames if isinstance(v, commands.Connection.Close)]
            assert closes, f"no connection.close before the socket closed: {frames}"
            assert closes[0].reply_code == 505
            assert "UNEXPECTED_FRAME" in closes[0].reply_text


# -- 3. a cancelled caller's late reply --


async def test_cancelled_callers_late_reply_is_swallowed_and_next_call_gets_its_own() -> None:
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            with anyio.move_on_after(0.1) as scope:
                await ch.queue_declare("first")
            assert scope.cancelled_caught
            declare = await peer.expect(commands.Queue.Declare, 1)
            assert declare.queue == "first"

            async def broker() -> None:
                nxt = await peer.expect(commands.Queue.Declare, 1)
                assert nxt.queue == "second"
                # The stale reply, then the one for the second call, in separate writes.
                await peer.send((1, commands.Queue.DeclareOk("first", 7, 7)))
                await anyio.sleep(0.05)
                await peer.send((1, commands.Queue.DeclareOk("second", 2, 1)))

            info = await together(lambda: ch.queue_declare("second"), broker)
            assert (info.name, info.message_count, info.consumer_count) == ("second", 2, 1)
            assert ch.is_open and conn.is_open

            # The FIFO is in step: a third call gets its reply too.
            async def purge() -> None:
                await peer.expect(commands.Queue.Purge, 1)
                await peer.send((1, commands.Queue.PurgeOk(5)))

            assert await together(lambda: ch.queue_purge("second"), purge) == 5
            assert ch.is_open and conn.is_open


# -- 4. an abandoned basic.consume --


async def test_abandoned_consume_is_cancelled_when_consume_ok_arrives_late() -> None:
    delivered: list[Delivery] = []
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            with anyio.move_on_after(0.1) as scope:
                await ch.basic_consume("q", delivered.append, consumer_tag="late-tag")
            assert scope.cancelled_caught
            consume = await peer.expect(commands.Basic.Consume, 1)
            assert consume.consumer_tag == "late-tag"

            # consume-ok comes late, with a delivery right behind it.
            await peer.send((1, commands.Basic.ConsumeOk("late-tag")))
            await peer.send_content(1, commands.Basic.Deliver("late-tag", 1, False, "", "q"), b"x")
            cancel = await peer.expect(commands.Basic.Cancel, 1)
            assert cancel.consumer_tag == "late-tag"
            assert cancel.nowait is True

            # The channel still works, and the dropped delivery never reached us.
            async def qos() -> None:
                await peer.expect(commands.Basic.Qos, 1)
                await peer.send((1, commands.Basic.QosOk()))

            await together(lambda: ch.basic_qos(10), qos)
            assert delivered == []
            assert ch.is_open and conn.is_open


async def test_consume_ok_and_a_cancel_in_one_read_the_call_still_returns_its_tag() -> None:
    """A consume cancelled in the read that brings its consume-ok still returns its tag."""
    # Checked: anyio does not cancel a task whose wait already completed, so a
    # settled consume is never dropped without a basic.cancel (no leaked consumer).
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            scope = anyio.CancelScope()

            def on_return(_: ReturnedMessage) -> None:
                scope.cancel()  # the caller's scope, cancelled in the same read

            ch = await open_channel(conn, peer, on_return=on_return)
            tags: list[str] = []

            async def consume() -> None:
                with scope:
                    tags.append(await ch.basic_consume("q", lambda _: None))

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                method = await peer.expect(commands.Basic.Consume, 1)
                await peer.send(
                    (1, commands.Basic.ConsumeOk(method.consumer_tag)),
                    (1, commands.Basic.Return(312, "NO_ROUTE", "", "rk")),
                    (1, ContentHeader(0, 0, commands.Basic.Properties())),
                )
            assert scope.cancel_called
            assert tags == [method.consumer_tag]
            assert conn.is_open


# -- 5. publisher confirms --


async def test_publisher_confirms_multiple_ack_nack_and_return_before_ack() -> None:
    events: list[str] = []
    returned: list[ReturnedMessage] = []

    def on_return(message: ReturnedMessage) -> None:
        returned.append(message)
        events.append("return")

    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer, on_return=on_return, publisher_confirms=True)
            async with anyio.create_task_group() as tg:
                pubs = []
                for i in range(3):
                    pubs.append(spawn(tg, partial(ch.basic_publish, b"m%d" % i)))
                    _, body = await peer.expect_publish(1)
                    assert body == b"m%d" % i
                await anyio.sleep(0.05)
                assert not any(p.done.is_set() for p in pubs)

                # ack 2 multiple: the first two settle, the third still waits.
                await peer.send((1, commands.Basic.Ack(2, multiple=True)))
                await pubs[0].wait()
                await pubs[1].wait()
                await anyio.sleep(0.05)
                assert not pubs[2].done.is_set()
                await peer.send((1, commands.Basic.Ack(3, multiple=False)))
                await pubs[2].wait()
                assert [p.error for p in pubs] == [None, None, None]

                # A nack fails its publish with BrokerError.
                nacked = spawn(tg, lambda: ch.basic_publish(b"m3"))
                await peer.expect_publish(1)
                await peer.send((1, commands.Basic.Nack(4)))
                await nacked.wait()
                assert isinstance(nacked.error, BrokerError)

                # An unroutable mandatory publish: return, then (later) its ack.
                async def publish_mandatory() -> None:
                    await ch.basic_publish(b"m4", routing_key="nowhere", mandatory=True)
                    events.append("published")

                mandatory = spawn(tg, publish_mandatory)
                method, _ = await peer.expect_publish(1)
                assert method.mandatory is True
                await peer.send_content(
                    1, commands.Basic.Return(312, "NO_ROUTE", "", "nowhere"), b"m4"
                )
                await until(lambda: bool(returned))
                assert not mandatory.done.is_set()
                await peer.send((1, commands.Basic.Ack(5)))
                await mandatory.wait()
            assert mandatory.error is None
            assert events == ["return", "published"]
            assert returned[0].reply_code == 312
            assert returned[0].body == b"m4"
            assert returned[0].routing_key == "nowhere"
            assert ch.is_open and conn.is_open


async def test_return_and_ack_in_one_read_still_call_on_return_first() -> None:
    events: list[str] = []
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(
                conn, peer, on_return=lambda m: events.append("return"), publisher_confirms=True
            )

            async def publish() -> None:
                await ch.basic_publish(b"m", routing_key="nowhere", mandatory=True)
                events.append("published")

            async def broker() -> None:
                await peer.expect_publish(1)
                await peer.send(
                    (1, commands.Basic.Return(312, "NO_ROUTE", "", "nowhere")),
                    (1, ContentHeader(0, 1, commands.Basic.Properties())),
                    (1, ContentBody(b"m")),
                    (1, commands.Basic.Ack(1)),
                )

            await together(publish, broker)
            assert events == ["return", "published"]


# -- 6. the broker closes a channel --


async def test_broker_channel_close_fails_waiters_with_broker_error_and_connection_survives() -> (
    None
):
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            async with anyio.create_task_group() as tg:
                first = spawn(tg, lambda: ch.queue_declare("a", durable=True))
                await peer.expect(commands.Queue.Declare, 1)
                second = spawn(tg, lambda: ch.queue_bind("a", "x"))
                await peer.expect(commands.Queue.Bind, 1)
                await peer.send(
                    (
                        1,
                        commands.Channel.Close(
                            406, "PRECONDITION_FAILED - inequivalent arg", 50, 10
                        ),
                    )
                )
                await peer.expect(commands.Channel.CloseOk, 1)
                await first.wait()
                await second.wait()
            for call in (first, second):
                assert isinstance(call.error, BrokerError), call.error
                assert call.error.code == 406
            assert ch.close_reason == CloseReason(
                406, "PRECONDITION_FAILED - inequivalent arg", "broker"
            )
            with pytest.raises(ConnectionLost):
                await ch.queue_declare("after")
            assert conn.is_open

            # The channel number is free again, and the new channel works.
            again = await open_channel(conn, peer, 1)

            async def declare_ok() -> None:
                await peer.expect(commands.Queue.Declare, 1)
                await peer.send((1, commands.Queue.DeclareOk("b", 0, 0)))

            assert (await together(lambda: again.queue_declare("b"), declare_ok)).name == "b"
            assert again.is_open and conn.is_open


async def test_broker_channel_close_fails_a_waiting_confirm_with_broker_error() -> None:
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer, publisher_confirms=True)
            async with anyio.create_task_group() as tg:
                pub = spawn(tg, lambda: ch.basic_publish(b"m", exchange="missing"))
                await peer.expect_publish(1)
                await peer.send((1, commands.Channel.Close(404, "NOT_FOUND - no exchange", 60, 40)))
                await peer.expect(commands.Channel.CloseOk, 1)
                await pub.wait()
            assert isinstance(pub.error, BrokerError)
            assert pub.error.code == 404
            assert conn.is_open


async def test_crossed_channel_close_keeps_the_connection_open() -> None:
    """A broker channel.close crossing ours is answered and closes only that channel."""
    # RabbitMQ's reader answers a channel.close that arrives while it is closing
    # the channel itself with channel.close-ok (rabbit_reader, "closing" state).
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            async with anyio.create_task_group() as tg:
                closing = spawn(tg, ch.close)
                await peer.expect(commands.Channel.Close, 1)
                await peer.send(
                    (1, commands.Channel.Close(404, "NOT_FOUND - no exchange 'x'", 60, 40)),
                    (1, commands.Channel.CloseOk()),
                )
                await peer.expect(commands.Channel.CloseOk, 1)
                await closing.wait()
            await quiet_for(conn)
            assert closing.error is None
            assert conn.is_open, conn.close_reason


async def test_channel_number_is_not_reused_before_our_close_ok_arrives() -> None:
    """A channel number stays taken until the broker's close-ok for our channel.close."""
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            async with anyio.create_task_group() as tg:
                closing = spawn(tg, ch.close)
                await peer.expect(commands.Channel.Close, 1)
                await peer.send((1, commands.Channel.Close(406, "PRECONDITION_FAILED", 50, 10)))
                await peer.expect(commands.Channel.CloseOk, 1)
                await closing.wait()
                # The broker has not yet answered our channel.close.
                opening = spawn(tg, conn.open_channel)
                channel, frame = await peer.recv()
                assert isinstance(frame, commands.Channel.Open)
                await peer.send((channel, commands.Channel.OpenOk()))
                await opening.wait()
            assert channel != 1, "channel 1 reused while its close-ok is still due"


# -- 7. backpressure --


HIGH_WATER = 256 * 1024
MESSAGE = 32 * 1024
LIMIT = 1500  # 48 MB: far beyond any socket buffers; publishing this far means no backpressure


async def _wait_stalled(progress: Callable[[], int], quiet: float = 0.3) -> None:
    """Wait until ``progress()`` has not moved for ``quiet`` seconds."""
    last, since = progress(), anyio.current_time()
    while anyio.current_time() - since < quiet:
        await anyio.sleep(0.02)
        now = progress()
        if now != last:
            last, since = now, anyio.current_time()


async def _drain(peer: Peer, counts: list[int]) -> None:
    """Read publishes for good; counts[i] += 1 for each body tagged with publisher i."""
    while True:
        _, body = await peer.expect_publish(1)
        counts[body[0]] += 1


async def test_backpressure_blocks_publishers_and_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_connection, "HIGH_WATER", HIGH_WATER)
    published = 0
    peak = 0
    stop = anyio.Event()
    with anyio.fail_after(20):
        async with session(rcvbuf=64 * 1024) as (conn, peer):
            ch = await open_channel(conn, peer)

            async def publisher() -> None:
                nonlocal published, peak
                body = bytes(MESSAGE)
                while published < LIMIT and not stop.is_set():
                    await ch.basic_publish(body)
                    published += 1
                    peak = max(peak, conn.protocol.bytes_to_send)

            async def monitor() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, conn.protocol.bytes_to_send)
                    await anyio.sleep(0.001)

            async with anyio.create_task_group() as tg:
                pub = spawn(tg, publisher)
                tg.start_soon(monitor)
                with anyio.fail_after(10):
                    await _wait_stalled(lambda: published)
                assert not pub.done.is_set(), "publishing never blocked"
                assert published < LIMIT
                stalled_at = published
                wire = MESSAGE + 64  # a publish's frames: the body and a few dozen bytes
                # Never much more than HIGH_WATER queued (besides the chunk the
                # writer is sending, which holds at most as much again).
                assert 0 < peak <= HIGH_WATER + wire, peak

                # The broker reads again: publishing resumes.
                counts = [0]
                tg.start_soon(_drain, peer, counts)
                await until(lambda: published >= stalled_at + 100, timeout=5)
                stop.set()
                await pub.wait()
                assert pub.error is None
                await until(lambda: counts[0] == published, timeout=5)
                assert conn.protocol.bytes_to_send <= HIGH_WATER + wire
                tg.cancel_scope.cancel()
            assert peak <= HIGH_WATER + wire, peak
            assert conn.is_open


async def test_backpressure_releases_every_blocked_publisher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Regression: wait_writable replaced _writable while another publisher
    # waited on the old event, which was then never set: that publisher hung.
    monkeypatch.setattr(_connection, "HIGH_WATER", HIGH_WATER)
    published = [0, 0]
    targets = [LIMIT // 2, LIMIT // 2]
    with anyio.fail_after(20):
        async with session(rcvbuf=64 * 1024) as (conn, peer):
            ch = await open_channel(conn, peer)

            async def publisher(i: int) -> None:
                body = bytes([i]) + bytes(MESSAGE - 1)
                while published[i] < targets[i]:
                    await ch.basic_publish(body)
                    published[i] += 1

            async with anyio.create_task_group() as tg:
                pubs = [spawn(tg, partial(publisher, i)) for i in range(2)]
                with anyio.fail_after(10):
                    await _wait_stalled(lambda: sum(published))
                assert not any(p.done.is_set() for p in pubs), [(p.error, published) for p in pubs]
                targets[:] = [n + 30 for n in published]

                # Both publishers must get going again once the broker reads.
                tg.start_soon(_drain, peer, [0, 0])
                with anyio.move_on_after(1.5):
                    for p in pubs:
                        await p.done.wait()
                left = [t - n for t, n in zip(targets, published, strict=True)]
                tg.cancel_scope.cancel()
            assert left == [0, 0], f"publishes each publisher still had to make: {left}"
            assert all(p.error is None for p in pubs)


# -- 8. coalescing --


async def test_a_burst_of_publishes_reaches_the_broker_in_few_reads() -> None:
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            bodies: list[bytes] = []
            reads_before = peer.reads
            assert not peer.buf

            async def broker() -> None:
                while len(bodies) < 100:
                    _, body = await peer.expect_publish(1)
                    bodies.append(body)

            async with anyio.create_task_group() as tg:
                tg.start_soon(broker)
                await anyio.sleep(0.05)  # the broker is parked in receive()
                for i in range(100):
                    await ch.basic_publish(b"%03d" % i + bytes(97), routing_key="rk")
            reads = peer.reads - reads_before
            assert [b[:3] for b in bodies] == [b"%03d" % i for i in range(100)]
            assert reads <= 5, f"100 publishes took {reads} reads"


# -- 9. connection.close from the broker --


async def test_broker_connection_close_is_answered_and_settles_everything() -> None:
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch1 = await open_channel(conn, peer, 1)
            ch2 = await open_channel(conn, peer, 2)
            async with anyio.create_task_group() as tg:
                waiting = spawn(tg, lambda: ch1.queue_declare("q"))
                await peer.expect(commands.Queue.Declare, 1)
                await peer.send(
                    (0, commands.Connection.Close(320, "CONNECTION_FORCED - shutdown", 0, 0))
                )
                await peer.expect(commands.Connection.CloseOk, 0)
                with anyio.fail_after(3):
                    reason = await conn.wait_closed()
                await waiting.wait()
            assert reason == CloseReason(320, "CONNECTION_FORCED - shutdown", "broker")
            assert isinstance(waiting.error, ConnectionLost)
            assert waiting.error.code == 320
            for ch in (ch1, ch2):
                assert ch.close_reason == CloseReason(
                    320, "CONNECTION_FORCED - shutdown", "connection"
                )
            with pytest.raises(ConnectionLost):
                await conn.open_channel()
            # After its close-ok the client hangs up.
            with anyio.fail_after(3):
                assert await peer.recv_until_eof() == []


# -- 10. connect errors --


def _assert_no_password(error: BaseException) -> None:
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        assert PASSWORD not in str(link), link
        assert PASSWORD not in repr(link), link
        assert PASSWORD not in repr(link.args)
        link = link.__cause__ or link.__context__


async def test_login_refused_with_connection_close_403() -> None:
    with anyio.fail_after(10):
        async with fake_broker(login="refuse") as broker:
            with pytest.raises(ConnectFailed) as info:
                async with connect(parse_url(broker.url()), options()):
                    pytest.fail("connected")
            peer = broker.peers[0]
            assert peer.start_ok is not None and PASSWORD in peer.start_ok.response
    assert info.value.code == 403
    assert "ACCESS_REFUSED" in str(info.value)
    _assert_no_password(info.value)


async def test_socket_dropped_after_login_means_wrong_credentials() -> None:
    with anyio.fail_after(10):
        async with fake_broker(login="drop") as broker:
            with pytest.raises(ConnectFailed) as info:
                async with connect(parse_url(broker.url()), options()):
                    pytest.fail("connected")
    assert info.value.code == 403
    assert "credentials" in str(info.value)
    _assert_no_password(info.value)


async def test_silent_peer_fails_within_connect_timeout() -> None:
    with anyio.fail_after(10):
        async with fake_broker(login="silent") as broker:
            started = anyio.current_time()
            with pytest.raises(ConnectFailed) as info:
                async with connect(parse_url(broker.url()), options(connect_timeout=0.5)):
                    pytest.fail("connected")
            took = anyio.current_time() - started
    assert 0.4 <= took <= 2.0, took
    assert "0.5 s" in str(info.value)
    _assert_no_password(info.value)


async def test_refused_port_fails_without_the_password() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with anyio.fail_after(10), pytest.raises(ConnectFailed) as info:
            url = parse_url(f"amqp://guest:{PASSWORD}@127.0.0.1:{port}/")
            async with connect(url, options()):
                pytest.fail("connected")
    _assert_no_password(info.value)


# -- 11. basic.cancel from the broker --


async def test_broker_cancel_calls_on_cancel_and_drops_later_deliveries() -> None:
    cancelled: list[tuple[str, CloseReason]] = []
    gone: list[Delivery] = []
    kept: list[Delivery] = []
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)

            async def consume_ok() -> None:
                method = await peer.expect(commands.Basic.Consume, 1)
                await peer.send((1, commands.Basic.ConsumeOk(method.consumer_tag)))

            tag = await together(
                lambda: ch.basic_consume(
                    "q1", gone.append, on_cancel=lambda t, r: cancelled.append((t, r))
                ),
                consume_ok,
            )
            other = await together(lambda: ch.basic_consume("q2", kept.append), consume_ok)

            await peer.send_content(1, commands.Basic.Deliver(tag, 1, False, "", "q1"), b"one")
            await until(lambda: bool(gone))
            await peer.send((1, commands.Basic.Cancel(tag, nowait=False)))
            ok = await peer.expect(commands.Basic.CancelOk, 1)
            assert ok.consumer_tag == tag
            assert [t for t, _ in cancelled] == [tag]
            assert cancelled[0][1].by == "broker"

            # A delivery for the cancelled tag is dropped; the other consumer's arrives.
            await peer.send_content(1, commands.Basic.Deliver(tag, 2, False, "", "q1"), b"two")
            await peer.send_content(1, commands.Basic.Deliver(other, 3, False, "", "q2"), b"3")
            await until(lambda: bool(kept))
            assert [d.body for d in gone] == [b"one"]
            assert [(d.body, d.delivery_tag, d.consumer_tag) for d in kept] == [(b"3", 3, other)]
            assert len(cancelled) == 1
            assert ch.is_open and conn.is_open


# -- 12. channel.flow --


async def test_channel_flow_from_the_broker_is_answered_with_flow_ok() -> None:
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            await peer.send((1, commands.Channel.Flow(active=False)))
            ok = await peer.expect(commands.Channel.FlowOk, 1)
            assert ok.active is False
            await peer.send((1, commands.Channel.Flow(active=True)))
            ok = await peer.expect(commands.Channel.FlowOk, 1)
            assert ok.active is True
            assert ch.is_open and conn.is_open


# -- 13. consumer callbacks --


async def test_on_delivery_that_raises_does_not_hurt_the_connection() -> None:
    """A consumer callback that raises loses nothing: later deliveries arrive and acks go out."""
    seen: list[int] = []

    def boom(delivery: Delivery) -> None:
        seen.append(delivery.delivery_tag)
        raise RuntimeError("user bug")

    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            async with anyio.create_task_group() as tg:
                pending = spawn(tg, lambda: ch.basic_consume("q", boom))
                consume = await peer.expect(commands.Basic.Consume, 1)
                await peer.send((1, commands.Basic.ConsumeOk(consume.consumer_tag)))
                await pending.wait()
            for tag in (1, 2):
                await peer.send_content(
                    1, commands.Basic.Deliver(pending.result, tag, False, "", "rk"), b"m"
                )
            await until(lambda: seen == [1, 2])
            await ch.basic_ack(2, multiple=True)
            ack = await peer.expect(commands.Basic.Ack, 1)
            assert ack.delivery_tag == 2 and ack.multiple
            assert conn.is_open and ch.is_open


async def test_callback_closing_its_channel_through_a_task() -> None:
    """A callback may close its own channel from a task; the close is normal and the rest stays."""
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            async with anyio.create_task_group() as tg:

                def close_soon(_: Delivery) -> None:
                    tg.start_soon(ch.close)

                pending = spawn(tg, lambda: ch.basic_consume("q", close_soon))
                consume = await peer.expect(commands.Basic.Consume, 1)
                await peer.send((1, commands.Basic.ConsumeOk(consume.consumer_tag)))
                await pending.wait()
                await peer.send_content(
                    1, commands.Basic.Deliver(pending.result, 1, False, "", "rk"), b"m"
                )
                await peer.expect(commands.Channel.Close, 1)
                # A delivery already on the wire is dropped while closing.
                await peer.send_content(
                    1, commands.Basic.Deliver(pending.result, 2, False, "", "rk"), b"m"
                )
                await peer.send((1, commands.Channel.CloseOk()))
            assert ch.close_reason is not None and ch.close_reason.is_normal
            assert conn.is_open


# -- 14. body frames --


async def test_body_of_frame_max_minus_8_is_one_body_frame_and_one_more_byte_two() -> None:
    """A body of frame_max - 8 bytes goes in one body frame, one byte more in two, empty in none."""
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            for size, frames in ((FRAME_MAX - 8, 1), (FRAME_MAX - 7, 2), (0, 0)):
                await ch.basic_publish(b"x" * size, routing_key="q")
                await peer.expect(commands.Basic.Publish, 1)
                header = await peer.expect(ContentHeader, 1)
                assert header.body_size == size
                got = 0
                for _ in range(frames):
                    got += len((await peer.expect(ContentBody, 1)).value)
                assert got == size
            # Nothing else was sent: the empty body has no body frame.
            await ch.basic_ack(9)
            await peer.expect(commands.Basic.Ack, 1)
