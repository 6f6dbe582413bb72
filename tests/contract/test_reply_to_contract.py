"""Contract: RabbitMQ's direct reply-to pseudo-queue, amq.rabbitmq.reply-to."""

from __future__ import annotations

import anyio
import pytest
from contract_helpers import Amqp, Inbox, assert_broker_closed

from hare_py.errors import BrokerError
from hare_py.transport import Channel, Delivery, Properties

pytestmark = pytest.mark.anyio

REPLY_TO = "amq.rabbitmq.reply-to"


async def serve_once(amqp: Amqp) -> tuple[str, Inbox, Channel]:
    """A server queue with a no_ack consumer collecting requests."""
    server = await amqp.channel(publisher_confirms=True)
    q = amqp.queue_name("server")
    await server.queue_declare(q)
    requests = Inbox()
    await server.basic_consume(q, requests, no_ack=True)
    return q, requests, server


async def test_pseudo_queue_can_be_declared(amqp: Amqp) -> None:
    """amq.rabbitmq.reply-to can be declared (passively or not) although it is no queue."""
    with anyio.fail_after(5):
        ch = await amqp.channel()
        assert (await ch.queue_declare(REPLY_TO, passive=True)).name == REPLY_TO
        await ch.queue_declare(REPLY_TO)
        assert ch.is_open


async def test_reply_consumer_must_be_no_ack_and_single(amqp: Amqp) -> None:
    """Consuming replies needs no_ack (else 406), and one reply consumer per channel (else 406)."""
    with anyio.fail_after(5):
        ch = await amqp.channel()
        with pytest.raises(BrokerError) as info:
            await ch.basic_consume(REPLY_TO, Inbox())
        assert info.value.code == 406
        assert "cannot acknowledge" in info.value.text
        ch = await amqp.channel()
        await ch.basic_consume(REPLY_TO, Inbox(), no_ack=True)
        with pytest.raises(BrokerError) as info:
            await ch.basic_consume(REPLY_TO, Inbox(), no_ack=True)
        assert info.value.code == 406
        assert "already set" in info.value.text


async def test_request_without_reply_consumer_is_406(amqp: Amqp) -> None:
    """Publishing with reply_to amq.rabbitmq.reply-to needs a reply consumer on that channel."""
    with anyio.fail_after(5):
        q, _, _ = await serve_once(amqp)
        ch = await amqp.channel()
        await ch.basic_publish(b"req", routing_key=q, properties=Properties(reply_to=REPLY_TO))
        reason = await ch.wait_closed()
        assert_broker_closed(reason, 406)
        assert "fast reply consumer does not exist" in reason.text


async def test_reply_reaches_the_requesting_channel(amqp: Amqp) -> None:
    """The broker rewrites reply_to to a channel address; a reply published there comes back."""
    with anyio.fail_after(5):
        q, requests, server = await serve_once(amqp)
        client = await amqp.channel()
        replies = Inbox()
        tag = await client.basic_consume(REPLY_TO, replies, no_ack=True)
        props = Properties(reply_to=REPLY_TO, correlation_id="c-1")
        await client.basic_publish(b"ping", routing_key=q, properties=props)
        request: Delivery = await requests.get()
        address = request.properties.reply_to
        assert address is not None
        assert address.startswith(REPLY_TO + ".")
        assert request.properties.correlation_id == "c-1"
        await server.basic_publish(
            b"pong", routing_key=address, properties=Properties(correlation_id="c-1")
        )
        reply: Delivery = await replies.get()
        assert (reply.body, reply.exchange, reply.routing_key) == (b"pong", "", address)
        assert reply.consumer_tag == tag
        assert reply.properties.correlation_id == "c-1"


async def test_replies_after_cancel_are_dropped(amqp: Amqp) -> None:
    """Once the reply consumer is cancelled, replies to its address go nowhere."""
    with anyio.fail_after(5):
        q, requests, server = await serve_once(amqp)
        client = await amqp.channel()
        replies = Inbox()
        tag = await client.basic_consume(REPLY_TO, replies, no_ack=True)
        await client.basic_publish(b"ping", routing_key=q, properties=Properties(reply_to=REPLY_TO))
        address = (await requests.get()).properties.reply_to
        await client.basic_cancel(tag)
        await server.basic_publish(b"late", routing_key=address)
        assert await replies.quiet(0.2) == []
        assert server.is_open


async def test_mandatory_replies_are_returned(amqp: Amqp) -> None:
    """Mandatory replies to reply-to addresses come back as NO_ROUTE, even when delivered (3.10)."""
    with anyio.fail_after(5):
        q, requests, _ = await serve_once(amqp)
        client = await amqp.channel()
        replies = Inbox()
        await client.basic_consume(REPLY_TO, replies, no_ack=True)
        await client.basic_publish(b"ping", routing_key=q, properties=Properties(reply_to=REPLY_TO))
        address = (await requests.get()).properties.reply_to
        assert address is not None
        returns = Inbox()
        server = await amqp.channel(on_return=returns, publisher_confirms=True)
        await server.basic_publish(b"pong", routing_key=address, mandatory=True)
        assert (await returns.get()).reply_code == 312
        assert (await replies.get()).body == b"pong"  # returned, yet delivered
        await server.basic_publish(b"bogus", routing_key=REPLY_TO + ".bogus", mandatory=True)
        assert (await returns.get()).body == b"bogus"
