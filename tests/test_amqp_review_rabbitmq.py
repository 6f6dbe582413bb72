"""Review tests for the anyio AMQP backend against a real RabbitMQ.

A close right after a refused publish crossed the broker's own close and
used to take the whole connection down (505); it now closes only the channel.
"""

from __future__ import annotations

import uuid

import anyio
import pytest
from rabbitmq import with_amqp_backend

from hare_py.transport.amqp._connection import connect
from hare_py.transport.base import ConnectOptions
from hare_py.transport.url import parse_url

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq]


def _url(rabbitmq_url: str) -> str:
    return with_amqp_backend(rabbitmq_url, "anyio")


async def test_close_right_after_a_refused_publish_keeps_the_connection(
    rabbitmq_url: str,
) -> None:
    with anyio.fail_after(20):
        async with connect(parse_url(_url(rabbitmq_url)), ConnectOptions(heartbeat=0)) as conn:
            ch = await conn.open_channel()
            # The publish and our channel.close leave in one write; the broker
            # closes the channel (404) before it reads our close.
            await ch.basic_publish(b"m", exchange=f"missing-{uuid.uuid4().hex}")
            await ch.close()
            with anyio.move_on_after(1):
                await conn.wait_closed()
            assert conn.is_open, conn.close_reason


async def test_body_of_frame_max_minus_8_and_empty_body_round_trip(rabbitmq_url: str) -> None:
    got: list[bytes] = []
    with anyio.fail_after(30):
        async with connect(parse_url(_url(rabbitmq_url)), ConnectOptions(heartbeat=0)) as conn:
            ch = await conn.open_channel(publisher_confirms=True)
            frame_max = conn.protocol.frame_max
            queue = (await ch.queue_declare("", exclusive=True)).name
            bodies = [b"", b"x" * (frame_max - 8), b"y" * (frame_max - 7), b"z" * 3 * frame_max]
            for body in bodies:
                await ch.basic_publish(body, routing_key=queue)
            await ch.basic_consume(queue, lambda d: got.append(d.body), no_ack=True)
            while len(got) < len(bodies):
                await anyio.sleep(0.01)
            assert got == bodies
            assert conn.is_open
