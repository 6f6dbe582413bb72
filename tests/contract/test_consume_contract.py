"""Contract: consumers, prefetch, acknowledgements, redelivery and broker cancels."""

from __future__ import annotations

import anyio
import pytest
from contract_helpers import Amqp, Inbox, assert_broker_closed, drain

from hare_py.transport import Channel, CloseReason, Delivery

pytestmark = pytest.mark.anyio


async def queue_with(amqp: Amqp, ch: Channel, count: int) -> str:
    """A fresh queue holding ``count`` messages b"0", b"1", ... (``ch`` has confirms)."""
    q = amqp.queue_name()
    await ch.queue_declare(q)
    for i in range(count):
        await ch.basic_publish(b"%d" % i, routing_key=q)
    return q


async def test_deliveries_arrive_in_order_with_their_fields(amqp: Amqp) -> None:
    """A consumer gets messages in queue order with increasing tags and its consumer tag."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q = await queue_with(amqp, ch, 3)
        inbox = Inbox()
        tag = await ch.basic_consume(q, inbox, consumer_tag="reader")
        assert tag == "reader"
        got: list[Delivery] = await inbox.take(3)
        assert [d.body for d in got] == [b"0", b"1", b"2"]
        assert [d.delivery_tag for d in got] == sorted({d.delivery_tag for d in got})
        assert {(d.consumer_tag, d.exchange, d.routing_key) for d in got} == {("reader", "", q)}
        assert not any(d.redelivered for d in got)


async def test_generated_consumer_tags_are_unique(amqp: Amqp) -> None:
    """basic_consume without a tag returns a fresh broker-made tag."""
    with anyio.fail_after(5):
        ch = await amqp.channel()
        q = amqp.queue_name()
        await ch.queue_declare(q)
        a = await ch.basic_consume(q, Inbox())
        b = await ch.basic_consume(q, Inbox())
        assert a
        assert b
        assert a != b


async def test_prefetch_limits_unacked_deliveries(amqp: Amqp) -> None:
    """With basic_qos(2) a consumer holds at most 2 unacked messages; an ack lets one more in."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q = await queue_with(amqp, ch, 5)
        await ch.basic_qos(2)
        inbox = Inbox()
        await ch.basic_consume(q, inbox)
        first = await inbox.take(2)
        assert await inbox.quiet(0.2) == []
        assert (await ch.queue_declare(q, passive=True)).message_count == 3
        await ch.basic_ack(first[0].delivery_tag)
        third = await inbox.get()
        assert third.body == b"2"
        assert await inbox.quiet(0.2) == []


async def test_global_prefetch_is_shared_by_the_channel(amqp: Amqp) -> None:
    """basic_qos(n, global_=True) limits all consumers of the channel together."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        a = await queue_with(amqp, ch, 3)
        b = await queue_with(amqp, ch, 3)
        await ch.basic_qos(1, global_=True)
        inbox = Inbox()
        await ch.basic_consume(a, inbox)
        await ch.basic_consume(b, inbox)
        await inbox.get()
        assert await inbox.quiet(0.2) == []


async def test_ack_multiple(amqp: Amqp) -> None:
    """basic_ack(tag, multiple=True) settles every delivery up to tag."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q = await queue_with(amqp, ch, 4)
        await ch.basic_qos(3)
        inbox = Inbox()
        await ch.basic_consume(q, inbox)
        got = await inbox.take(3)
        await ch.basic_ack(got[-1].delivery_tag, multiple=True)
        last = await inbox.get()
        assert last.body == b"3"
        await ch.basic_ack(last.delivery_tag)
        await ch.close()
        # Nothing was left unacked, so nothing comes back.
        assert (await (await amqp.channel()).queue_declare(q, passive=True)).message_count == 0


async def test_nack_and_reject_with_requeue_redeliver(amqp: Amqp) -> None:
    """nack/reject with requeue put the message back; it comes again with redelivered=True."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q = await queue_with(amqp, ch, 1)
        inbox = Inbox()
        await ch.basic_consume(q, inbox)
        first = await inbox.get()
        await ch.basic_nack(first.delivery_tag, requeue=True)
        second = await inbox.get()
        assert (second.body, second.redelivered) == (b"0", True)
        await ch.basic_reject(second.delivery_tag, requeue=True)
        third = await inbox.get()
        assert (third.body, third.redelivered) == (b"0", True)
        assert third.delivery_tag not in (first.delivery_tag, second.delivery_tag)
        await ch.basic_ack(third.delivery_tag)


async def test_nack_and_reject_without_requeue_discard(amqp: Amqp) -> None:
    """nack/reject with requeue=False drop the message."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q = await queue_with(amqp, ch, 2)
        inbox = Inbox()
        tag = await ch.basic_consume(q, inbox)
        a, b = await inbox.take(2)
        await ch.basic_nack(a.delivery_tag, requeue=False)
        await ch.basic_reject(b.delivery_tag, requeue=False)
        await ch.basic_cancel(tag)
        assert (await ch.queue_declare(q, passive=True)).message_count == 0
        assert await inbox.quiet(0.1) == []


async def test_unknown_delivery_tag_closes_the_channel(amqp: Amqp) -> None:
    """Acking an unknown delivery tag closes the channel with 406 PRECONDITION_FAILED."""
    with anyio.fail_after(5):
        ch = await amqp.channel()
        await ch.basic_ack(12345)
        reason = await ch.wait_closed()
        assert_broker_closed(reason, 406)
        assert "unknown delivery tag 12345" in reason.text


async def test_double_ack_closes_the_channel(amqp: Amqp) -> None:
    """Acking the same delivery twice closes the channel with 406."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q = await queue_with(amqp, ch, 1)
        inbox = Inbox()
        await ch.basic_consume(q, inbox)
        delivery = await inbox.get()
        await ch.basic_ack(delivery.delivery_tag)
        await ch.basic_ack(delivery.delivery_tag)
        assert_broker_closed(await ch.wait_closed(), 406)


async def test_no_ack_consumer(amqp: Amqp) -> None:
    """A no_ack delivery is settled at once: acking it is 406, closing loses nothing to requeue."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q = await queue_with(amqp, ch, 2)
        await ch.basic_qos(1)  # does not limit no_ack consumers
        inbox = Inbox()
        await ch.basic_consume(q, inbox, no_ack=True)
        a, _ = await inbox.take(2)
        await ch.basic_ack(a.delivery_tag)
        assert_broker_closed(await ch.wait_closed(), 406)
        assert (await (await amqp.channel()).queue_declare(q, passive=True)).message_count == 0


@pytest.mark.parametrize("close", ["channel", "connection"])
async def test_unacked_messages_are_redelivered_when_the_consumer_goes(
    amqp: Amqp, close: str
) -> None:
    """Closing a consumer's channel or connection requeues its unacked messages, redelivered."""
    with anyio.fail_after(5):
        conn = await amqp.connect()
        ch = await conn.open_channel(publisher_confirms=True)
        q = await queue_with(amqp, ch, 3)
        inbox = Inbox()
        await ch.basic_consume(q, inbox)
        got = await inbox.take(3)
        await ch.basic_ack(got[1].delivery_tag)
        if close == "channel":
            await ch.close()
        else:
            await conn.close()
        other = await amqp.channel()
        again = Inbox()
        await other.basic_consume(q, again, no_ack=True)
        redelivered = await again.take(2)
        assert [(d.body, d.redelivered) for d in redelivered] == [(b"0", True), (b"2", True)]


async def test_basic_cancel_stops_deliveries(amqp: Amqp) -> None:
    """After basic_cancel returns the consumer gets nothing more; messages stay queued."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q = amqp.queue_name()
        await ch.queue_declare(q)
        inbox = Inbox()
        tag = await ch.basic_consume(q, inbox, no_ack=True)
        await ch.basic_publish(b"before", routing_key=q)
        assert (await inbox.get()).body == b"before"
        await ch.basic_cancel(tag)
        await ch.basic_publish(b"after", routing_key=q)
        assert await inbox.quiet(0.2) == []
        assert [d.body for d in await drain(ch, q)] == [b"after"]


async def test_cancelling_an_unknown_consumer_is_fine(amqp: Amqp) -> None:
    """basic_cancel of a tag that is not consuming succeeds and keeps the channel open."""
    with anyio.fail_after(5):
        ch = await amqp.channel()
        await ch.basic_cancel("no-such-consumer")
        assert ch.is_open


async def test_round_robin_between_consumers(amqp: Amqp) -> None:
    """Messages of one queue alternate between its consumers."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q = amqp.queue_name()
        await ch.queue_declare(q)
        a, b = Inbox(), Inbox()
        await ch.basic_consume(q, a, no_ack=True)
        await ch.basic_consume(q, b, no_ack=True)
        for i in range(4):
            await ch.basic_publish(b"%d" % i, routing_key=q)
        got_a, got_b = await a.take(2), await b.take(2)
        assert sorted(d.body for d in got_a + got_b) == [b"0", b"1", b"2", b"3"]


async def test_queue_delete_cancels_its_consumers(amqp: Amqp) -> None:
    """Deleting a queue cancels its consumers: on_cancel gets the tag and a by="broker" reason."""
    with anyio.fail_after(5):
        q = amqp.queue_name()
        consumer_ch = await amqp.channel()
        await consumer_ch.queue_declare(q)
        cancels = Inbox()
        tag = await consumer_ch.basic_consume(q, Inbox(), on_cancel=cancels)
        await (await amqp.channel()).queue_delete(q)
        cancelled_tag, reason = await cancels.get()
        assert cancelled_tag == tag
        assert isinstance(reason, CloseReason)
        assert reason.by == "broker"
        assert consumer_ch.is_open


async def test_own_basic_cancel_does_not_call_on_cancel(amqp: Amqp) -> None:
    """on_cancel is for broker cancels only, not for our basic_cancel."""
    with anyio.fail_after(5):
        ch = await amqp.channel()
        q = amqp.queue_name()
        await ch.queue_declare(q)
        cancels = Inbox()
        tag = await ch.basic_consume(q, Inbox(), on_cancel=cancels)
        await ch.basic_cancel(tag)
        await ch.queue_delete(q)
        assert await cancels.quiet(0.2) == []
