"""Review tests for the anyio AMQP backend: races, odd broker bytes, codec edges.

Some of these showed bugs found in review (a crossed channel close, a channel
number reused before its close-ok, reply texts and header keys that are not
UTF-8), fixed since; the others pin behaviour that was checked and holds. The scripted fake
broker is the one of ``test_amqp_driver``.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc
import pytest
from pamqp import commands, constants, encode
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from test_amqp_driver import (
    FRAME_MAX,
    Peer,
    open_channel,
    options,
    session,
    spawn,
    until,
)

from hare_py.errors import ConnectFailed, HareError
from hare_py.transport import _amqp_codec as _codec
from hare_py.transport.amqp import _channel, _connection, _protocol as p
from hare_py.transport.amqp._connection import connect
from hare_py.transport.base import Delivery, Properties, ReturnedMessage
from hare_py.transport.url import parse_url

pytestmark = pytest.mark.anyio

_FRAME = struct.Struct(">BHI")


@pytest.fixture(autouse=True)
def _short_close_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_connection, "CLOSE_TIMEOUT", 2.0)
    monkeypatch.setattr(_channel, "CLOSE_TIMEOUT", 2.0)


def raw_frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME.pack(kind, channel, len(payload)) + payload + b"\xce"


def shortstr(data: bytes) -> bytes:
    return bytes((len(data),)) + data


def raw_channel_close(channel: int, code: int, text: bytes) -> bytes:
    """channel.close with ``text`` as raw bytes (not necessarily UTF-8)."""
    payload = struct.pack(">HHH", 20, 40, code) + shortstr(text) + struct.pack(">HH", 50, 10)
    return raw_frame(1, channel, payload)


def raw_deliver(channel: int, tag: str, delivery_tag: int) -> bytes:
    payload = (
        struct.pack(">HH", 60, 60)
        + shortstr(tag.encode())
        + struct.pack(">QB", delivery_tag, 0)
        + shortstr(b"")
        + shortstr(b"rk")
    )
    return raw_frame(1, channel, payload)


def raw_header(channel: int, body_size: int, flags: int, props: bytes) -> bytes:
    return raw_frame(2, channel, struct.pack(">HHQH", 60, 0, body_size, flags) + props)


async def quiet_for(conn: _connection.AmqpConnection, seconds: float = 0.3) -> None:
    """Give the reader time to act on what the broker sent."""
    with anyio.move_on_after(seconds):
        await conn.wait_closed()


# -- 1. a channel close that crosses the broker's --------------------------------


async def test_crossed_channel_close_keeps_the_connection_open() -> None:
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


# -- 2. strings from the broker that are not UTF-8 --------------------------------


async def test_non_utf8_reply_text_in_channel_close_closes_only_the_channel() -> None:
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
    async def handle(stream: anyio.abc.SocketStream) -> None:
        peer = Peer(stream)
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
        await peer.aclose()

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


async def consuming(conn: Any, peer: Any, got: list[Delivery]) -> str:
    """Open channel 1 and consume from "q" into ``got``; the consumer tag."""
    ch = await open_channel(conn, peer)

    async def consume_ok() -> None:
        consume = await peer.expect(commands.Basic.Consume, 1)
        await peer.send((1, commands.Basic.ConsumeOk(consume.consumer_tag)))

    async with anyio.create_task_group() as tg:
        pending = spawn(tg, lambda: ch.basic_consume("q", got.append))
        await consume_ok()
        await pending.wait()
    tag: str = pending.result
    return tag


async def test_non_utf8_header_key_does_not_kill_the_connection() -> None:
    got: list[Delivery] = []
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            tag = await consuming(conn, peer, got)
            # headers = {b"\xff": "v"}: the table is a long size then key, type, value.
            entry = shortstr(b"\xff") + b"S" + struct.pack(">I", 1) + b"v"
            table = struct.pack(">I", len(entry)) + entry
            await peer.stream.send(
                raw_deliver(1, tag, 1) + raw_header(1, 1, 0x2000, table) + raw_frame(3, 1, b"x")
            )
            await quiet_for(conn)
            assert conn.is_open, conn.close_reason
    # The message still arrives; only its undecodable header table is dropped.
    assert [(d.body, d.properties.headers) for d in got] == [(b"x", None)]


async def test_non_utf8_short_string_properties_and_cluster_id_are_tolerated() -> None:
    got: list[Delivery] = []
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            tag = await consuming(conn, peer, got)
            # content-type (bad UTF-8), app-id and cluster-id, which brokers may set.
            props = shortstr(b"text/\xff") + shortstr(b"app") + shortstr(b"rabbit@node")
            flags = 0x8000 | 0x0008 | 0x0004
            await peer.stream.send(
                raw_deliver(1, tag, 7) + raw_header(1, 0, flags, props)  # empty body
            )
            await until(lambda: bool(got))
            assert conn.is_open
    (delivery,) = got
    assert delivery.body == b""
    assert delivery.delivery_tag == 7
    assert delivery.properties.app_id == "app"
    assert delivery.properties.content_type == "text/\ufffd"


# -- 3. a consume whose caller is cancelled in the read that brings consume-ok ------------------


async def test_consume_ok_and_a_cancel_in_one_read_the_call_still_returns_its_tag() -> None:
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


# -- 4. what was checked and holds --------------------------------------------------


async def test_on_delivery_that_raises_does_not_hurt_the_connection() -> None:
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
    with anyio.fail_after(10):
        async with session() as (conn, peer):
            ch = await open_channel(conn, peer)
            async with anyio.create_task_group() as tg:
                pending = spawn(
                    tg, lambda: ch.basic_consume("q", lambda _: tg.start_soon(ch.close))
                )
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


async def test_body_of_frame_max_minus_8_is_one_body_frame_and_one_more_byte_two() -> None:
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


def _opened_protocol(frame_max: int = 4096) -> p.AMQPClientProtocol:
    proto = p.AMQPClientProtocol()
    proto.receive_data(
        b"".join(
            raw
            for raw in (
                _marshal(0, commands.Connection.Start(mechanisms="PLAIN", locales="en_US")),
                _marshal(0, commands.Connection.Tune(0, frame_max, 0)),
                _marshal(0, commands.Connection.OpenOk()),
            )
        )
    )
    proto.open_channel(1)
    proto.receive_data(_marshal(1, commands.Channel.OpenOk()))
    proto.data_to_send()
    return proto


def _marshal(channel: int, value: commands.Frame) -> bytes:
    from pamqp import frame as pamqp_frame

    return pamqp_frame.marshal(value, channel)


def test_a_frame_of_exactly_frame_max_is_taken_and_one_byte_more_is_refused() -> None:
    proto = _opened_protocol(4096)
    wire = (
        _marshal(1, commands.Basic.Deliver("t", 1, False, "", "rk"))
        + _codec.encode_header(1, 4096 - 8, Properties())
        + raw_frame(3, 1, b"a" * (4096 - 8))
    )
    events = []
    for i in range(len(wire)):  # split at every byte
        events += proto.receive_data(wire[i : i + 1])
    (event,) = events
    assert isinstance(event, p.ContentReceived) and event.body == b"a" * 4088
    with pytest.raises(p.ProtocolError, match="frame_max"):
        proto.receive_data(raw_frame(3, 1, b"a" * (4096 - 7)))


def test_huge_header_table_round_trips() -> None:
    headers = {f"k{i}": "v" * 200 for i in range(2000)}  # ~ 400 kB of headers
    stamp = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    props = Properties(headers=headers, timestamp=stamp, delivery_mode=2)
    frame = _codec.encode_header(1, 3, props)
    size, decoded = _codec.decode_header(frame[7:-1])
    assert size == 3
    assert decoded.headers == headers
    assert decoded.delivery_mode == 2
    assert decoded.timestamp is not None
    assert decoded.timestamp.replace(tzinfo=None) == stamp.replace(tzinfo=None)


def test_truncated_content_header_is_a_protocol_error_not_an_index_error() -> None:
    proto = _opened_protocol()
    proto.receive_data(_marshal(1, commands.Basic.Deliver("t", 1, False, "", "rk")))
    # delivery-mode flag set, but the octet is missing.
    with pytest.raises(p.ProtocolError):
        proto.receive_data(raw_header(1, 1, 0x1000, b""))


def test_ascii_field_table_encode_sanity() -> None:
    # The fixture bytes above are what pamqp writes for {"k": "v"} with a
    # different key: keep the hand-built table honest.
    entry = shortstr(b"k") + b"S" + struct.pack(">I", 1) + b"v"
    assert struct.pack(">I", len(entry)) + entry == encode.field_table({"k": "v"})
    assert constants.FRAME_END == 0xCE
