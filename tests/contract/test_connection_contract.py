"""Contract: connections, channels and their close events."""

from __future__ import annotations

import anyio
import pytest
from contract_helpers import Amqp

from hare_py.errors import ConnectionLost

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
