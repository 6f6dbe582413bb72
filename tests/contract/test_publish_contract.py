"""Contract: publishing, mandatory returns, publisher confirms and message properties."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import pytest
from contract_helpers import Amqp, Inbox, assert_broker_closed, drain

from hare_py.errors import BrokerError, ConnectionLost
from hare_py.transport import Properties, ReturnedMessage
from hare_py.transport.base import Message

pytestmark = pytest.mark.anyio

ALL_PROPERTIES = Properties(
    content_type="application/json",
    content_encoding="utf-8",
    headers={
        "str": "v",
        "int": 42,
        "neg": -7,
        "bool": True,
        "nested": {"k": "v"},
        "list": [1, "a"],
    },
    delivery_mode=2,
    priority=5,
    correlation_id="corr-1",
    reply_to="replies",
    expiration="60000",
    message_id="msg-1",
    timestamp=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    type="greeting",
    user_id="guest",
    app_id="hare-contract",
)


async def test_every_basic_property_round_trips(amqp: Amqp) -> None:
    """All 13 basic properties and the body arrive exactly as published."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q = amqp.queue_name()
        await ch.queue_declare(q)
        await ch.basic_publish(b"\x00body\xff", routing_key=q, properties=ALL_PROPERTIES)
        [delivery] = await drain(ch, q)
        assert delivery.body == b"\x00body\xff"
        assert delivery.properties == ALL_PROPERTIES
        assert not delivery.redelivered


async def test_absent_properties_stay_absent(amqp: Amqp) -> None:
    """A message published without properties arrives with every property None."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q = amqp.queue_name()
        await ch.queue_declare(q)
        await ch.basic_publish(b"", routing_key=q)
        [delivery] = await drain(ch, q)
        assert delivery.body == b""
        assert delivery.properties == Properties()


async def test_large_body_round_trips(amqp: Amqp) -> None:
    """A body larger than one frame arrives whole."""
    with anyio.fail_after(10):
        ch = await amqp.channel(publisher_confirms=True)
        q = amqp.queue_name()
        await ch.queue_declare(q)
        body = bytes(range(256)) * 4096  # 1 MiB
        await ch.basic_publish(body, routing_key=q)
        [delivery] = await drain(ch, q)
        assert delivery.body == body


async def test_user_id_must_be_the_connection_user(amqp: Amqp) -> None:
    """Publishing with a user_id other than the authenticated user closes the channel (406)."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        with pytest.raises(BrokerError) as info:
            await ch.basic_publish(b"x", routing_key="q", properties=Properties(user_id="mallory"))
        assert info.value.code == 406
        assert "user_id" in info.value.text
        assert_broker_closed(await ch.wait_closed(), 406)


async def test_publish_to_missing_exchange_closes_channel_later(amqp: Amqp) -> None:
    """Without confirms, publishing to a missing exchange returns, then the channel closes (404)."""
    with anyio.fail_after(5):
        ch = await amqp.channel()
        x = amqp.exchange_name()
        await ch.basic_publish(b"x", exchange=x, routing_key="k")
        reason = await ch.wait_closed()
        assert_broker_closed(reason, 404)
        assert x in reason.text
        with pytest.raises(ConnectionLost):
            await ch.basic_publish(b"x", routing_key="k")


async def test_publish_to_missing_exchange_with_confirms_raises(amqp: Amqp) -> None:
    """With confirms, publishing to a missing exchange raises BrokerError(404)."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        x = amqp.exchange_name()
        with pytest.raises(BrokerError) as info:
            await ch.basic_publish(b"x", exchange=x, routing_key="k")
        assert info.value.code == 404
        assert x in info.value.text
        assert_broker_closed(await ch.wait_closed(), 404)


async def test_publish_to_internal_exchange_is_403(amqp: Amqp) -> None:
    """Publishing to an internal exchange closes the channel with 403."""
    with anyio.fail_after(5):
        x = amqp.exchange_name()
        await (await amqp.channel()).exchange_declare(x, "fanout", internal=True)
        ch = await amqp.channel(publisher_confirms=True)
        with pytest.raises(BrokerError) as info:
            await ch.basic_publish(b"x", exchange=x)
        assert info.value.code == 403
        assert_broker_closed(await ch.wait_closed(), 403)


@pytest.mark.parametrize("confirms", [False, True], ids=["no-confirms", "confirms"])
async def test_unroutable_mandatory_message_is_returned(amqp: Amqp, confirms: bool) -> None:
    """An unroutable mandatory message comes back to on_return with 312 NO_ROUTE, intact."""
    with anyio.fail_after(5):
        returns = Inbox()
        ch = await amqp.channel(on_return=returns, publisher_confirms=confirms)
        x = amqp.exchange_name()
        await ch.exchange_declare(x, "direct")
        props = Properties(correlation_id="c-1", headers={"h": "v"})
        await ch.basic_publish(
            b"lost", exchange=x, routing_key="nobody", properties=props, mandatory=True
        )
        if confirms:  # the return comes before the confirm
            assert len(returns.pending()) == 1
        else:
            await returns.get()
        assert ch.is_open


async def test_returned_message_fields(amqp: Amqp) -> None:
    """A returned message carries body, properties, exchange, routing key, 312 and NO_ROUTE."""
    with anyio.fail_after(5):
        returns = Inbox()
        ch = await amqp.channel(on_return=returns, publisher_confirms=True)
        props = Properties(correlation_id="c-2", message_id="m-2")
        key = amqp.queue_name()  # no such queue
        await ch.basic_publish(b"body", routing_key=key, properties=props, mandatory=True)
        returned: ReturnedMessage = await returns.get()
        assert returned == ReturnedMessage(b"body", props, "", key, 312, "NO_ROUTE")


async def test_routable_mandatory_and_unroutable_plain_messages_are_not_returned(
    amqp: Amqp,
) -> None:
    """Only mandatory messages that match no queue come back."""
    with anyio.fail_after(5):
        returns = Inbox()
        ch = await amqp.channel(on_return=returns, publisher_confirms=True)
        q = amqp.queue_name()
        await ch.queue_declare(q)
        await ch.basic_publish(b"routable", routing_key=q, mandatory=True)
        await ch.basic_publish(b"dropped", routing_key=amqp.queue_name(), mandatory=False)
        assert await returns.quiet(0.2) == []
        assert [d.body for d in await drain(ch, q)] == [b"routable"]


async def test_confirmed_publish_is_enqueued(amqp: Amqp) -> None:
    """Once a confirmed publish returns, the message is in the queue."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q = amqp.queue_name()
        await ch.queue_declare(q)
        for i in range(5):
            await ch.basic_publish(b"%d" % i, routing_key=q)
        assert (await ch.queue_declare(q, passive=True)).message_count == 5


async def test_expiration_zero_is_dropped_without_a_ready_consumer(amqp: Amqp) -> None:
    """A message with expiration "0" is delivered only if a consumer can take it at once."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q = amqp.queue_name()
        await ch.queue_declare(q)
        await ch.basic_publish(
            b"now-or-never", routing_key=q, properties=Properties(expiration="0")
        )
        assert (await ch.queue_declare(q, passive=True)).message_count == 0
        inbox = Inbox()
        await ch.basic_consume(q, inbox, no_ack=True)
        await ch.basic_publish(b"taken", routing_key=q, properties=Properties(expiration="0"))
        delivery = await inbox.get()
        assert delivery.body == b"taken"


async def test_message_expires_after_its_ttl(amqp: Amqp) -> None:
    """A queued message with an expiration is gone once it has passed."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q = amqp.queue_name()
        await ch.queue_declare(q)
        await ch.basic_publish(b"short", routing_key=q, properties=Properties(expiration="100"))
        await ch.basic_publish(b"long", routing_key=q, properties=Properties(expiration="60000"))
        assert (await ch.queue_declare(q, passive=True)).message_count == 2
        await anyio.sleep(0.3)
        assert [d.body for d in await drain(ch, q)] == [b"long"]


async def test_queue_message_ttl(amqp: Amqp) -> None:
    """A queue's x-message-ttl expires its messages."""
    with anyio.fail_after(5):
        ch = await amqp.channel(publisher_confirms=True)
        q = amqp.queue_name()
        await ch.queue_declare(q, arguments={"x-message-ttl": 100})
        await ch.basic_publish(b"short", routing_key=q)
        await anyio.sleep(0.3)
        assert (await ch.queue_declare(q, passive=True)).message_count == 0


async def test_publish_many_keeps_order_bodies_and_properties(amqp: Amqp) -> None:
    """basic_publish_many delivers every message, in order, with its own properties,
    including bodies larger than one frame."""
    with anyio.fail_after(10):
        ch = await amqp.channel()
        q = amqp.queue_name()
        await ch.queue_declare(q)
        big = bytes(range(256)) * 1024  # 256 KiB: several body frames
        messages = [
            Message("", q, b"first", Properties(correlation_id="1")),
            Message("", q, big, Properties(correlation_id="2", headers={"k": "v"})),
            Message("", q, b"", Properties(correlation_id="3")),
        ] + [Message("", q, f"m{i}".encode(), Properties(message_id=str(i))) for i in range(50)]
        await ch.basic_publish_many(messages)
        confirm = await amqp.channel(publisher_confirms=True)
        await confirm.basic_publish(b"last", routing_key=q)  # enqueued after the batch
        got = await drain(confirm, q)
        assert [d.body for d in got] == [m.body for m in messages] + [b"last"]
        assert [d.properties for d in got[:53]] == [m.properties for m in messages]


async def test_publish_many_on_a_closed_channel_is_connection_lost(amqp: Amqp) -> None:
    """A batch published on a closed channel raises ConnectionLost."""
    with anyio.fail_after(5):
        ch = await amqp.channel()
        await ch.close()
        with pytest.raises(ConnectionLost):
            await ch.basic_publish_many([Message("", "q", b"a"), Message("", "q", b"b")])
