"""Contract: connections, channels and their close events."""

from __future__ import annotations

import uuid

import anyio
import pytest
from contract_helpers import Amqp, ForceClose, Inbox

from hare_py.errors import ConnectionLost
from hare_py.transport import ConnectOptions, backend_for, parse_url

pytestmark = pytest.mark.anyio


async def test_channel_close_by_client(amqp: Amqp) -> None:
    """A channel we close reports 200 by "client"; wait_closed returns that reason."""
    with anyio.fail_after(5):
        ch = await amqp.channel()
        assert ch.is_open
        assert ch.close_reason is None
        await ch.close()
        reason = await ch.wait_closed()
        assert (reason.code, reason.by) == (200, "client")
        assert reason.is_normal
        assert ch.close_reason == reason
        assert not ch.is_open


async def test_channel_close_is_idempotent(amqp: Amqp) -> None:
    """Closing a channel twice changes nothing and never raises."""
    with anyio.fail_after(5):
        ch = await amqp.channel()
        await ch.close()
        first = await ch.wait_closed()
        await ch.close()
        assert ch.close_reason == first


async def test_operations_on_closed_channel_raise_connection_lost(amqp: Amqp) -> None:
    """Every operation on a closed channel raises ConnectionLost."""
    with anyio.fail_after(5):
        ch = await amqp.channel()
        await ch.close()
        with pytest.raises(ConnectionLost):
            await ch.queue_declare(amqp.queue_name())
        with pytest.raises(ConnectionLost):
            await ch.basic_publish(b"x", routing_key="nowhere")
        with pytest.raises(ConnectionLost):
            await ch.exchange_declare(amqp.exchange_name())


async def test_channels_are_independent(amqp: Amqp) -> None:
    """Closing one channel leaves the connection and its other channels open."""
    with anyio.fail_after(5):
        conn = await amqp.connect()
        a = await conn.open_channel()
        b = await conn.open_channel()
        assert a.number != b.number
        await a.close()
        assert conn.is_open
        assert b.is_open
        info = await b.queue_declare(amqp.queue_name())
        assert info.message_count == 0


async def test_connection_close_closes_its_channels(amqp: Amqp) -> None:
    """Closing a connection reports 200 by "client" and closes its channels by "connection"."""
    with anyio.fail_after(5):
        conn = await amqp.connect()
        ch = await conn.open_channel()
        await conn.close()
        reason = await conn.wait_closed()
        assert (reason.code, reason.by) == (200, "client")
        ch_reason = await ch.wait_closed()
        assert ch_reason.by == "connection"
        assert not conn.is_open
        assert not ch.is_open


async def test_operations_on_closed_connection_raise_connection_lost(amqp: Amqp) -> None:
    """Opening a channel on a closed connection, or using one of its channels, raises."""
    with anyio.fail_after(5):
        conn = await amqp.connect()
        ch = await conn.open_channel()
        await conn.close()
        await conn.close()  # idempotent
        with pytest.raises(ConnectionLost):
            await conn.open_channel()
        await ch.wait_closed()
        with pytest.raises(ConnectionLost):
            await ch.queue_declare(amqp.queue_name())


async def test_connection_name_does_not_matter_to_the_protocol(amqp: Amqp) -> None:
    """A connection with a client-provided name works like any other."""
    with anyio.fail_after(5):
        conn = await amqp.connect(name="contract-test")
        ch = await conn.open_channel()
        q = amqp.queue_name()
        assert (await ch.queue_declare(q)).name == q


async def test_broker_forced_close(amqp: Amqp, force_close: ForceClose) -> None:
    """A broker-forced close is 320 by "broker"; channels close by "connection"; unacked requeue."""
    with anyio.fail_after(30):
        name = f"forced-{uuid.uuid4().hex[:8]}"
        conn = await amqp.connect(name=name)
        ch = await conn.open_channel(publisher_confirms=True)
        q = amqp.queue_name()
        await ch.queue_declare(q)
        await ch.basic_publish(b"held", routing_key=q)
        inbox = Inbox()
        await ch.basic_consume(q, inbox)
        await inbox.get()
        await force_close(name, "contract test")
        reason = await conn.wait_closed()
        assert (reason.code, reason.by) == (320, "broker")
        assert reason.text == "CONNECTION_FORCED - contract test"
        ch_reason = await ch.wait_closed()
        assert (ch_reason.code, ch_reason.by) == (320, "connection")
        with pytest.raises(ConnectionLost):
            await conn.open_channel()
        again = Inbox()
        await (await amqp.channel()).basic_consume(q, again, no_ack=True)
        delivery = await again.get()
        assert (delivery.body, delivery.redelivered) == (b"held", True)


async def test_exception_in_connection_block_propagates_unchanged(broker_url: str) -> None:
    """An error raised inside ``async with connect()`` comes out as itself, not in a group."""
    url = parse_url(broker_url)
    with anyio.fail_after(5):
        with pytest.raises(KeyError):
            async with backend_for(url).connect(url, ConnectOptions()) as conn:
                await conn.open_channel()
                raise KeyError("from the block")
        assert not conn.is_open


async def test_cancelled_connection_block_closes_cleanly(broker_url: str) -> None:
    """Cancelling the block of ``async with connect()`` closes the connection, raising nothing."""
    url = parse_url(broker_url)
    with anyio.fail_after(5):
        with anyio.CancelScope() as scope:
            async with backend_for(url).connect(url, ConnectOptions()) as conn:
                await conn.open_channel()
                scope.cancel()  # not a timer: a slow connect must not be what is cancelled
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert not conn.is_open
