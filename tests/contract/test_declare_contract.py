"""Contract: declaring, deleting and the broker's refusals (and the channel closes they cause)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from contract_helpers import Amqp, Inbox, assert_broker_closed

from hare_py.errors import BrokerError
from hare_py.transport import Channel

pytestmark = pytest.mark.anyio

SYSTEM_EXCHANGES = [
    ("amq.direct", "direct"),
    ("amq.topic", "topic"),
    ("amq.fanout", "fanout"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
]


async def refused(
    amqp: Amqp, code: int, op: Callable[[Channel], Awaitable[Any]], channel: Channel | None = None
) -> BrokerError:
    """Run ``op`` on a fresh channel; it must raise BrokerError(code) and close the channel."""
    ch = channel or await amqp.channel()
    with pytest.raises(BrokerError) as info:
        await op(ch)
    assert info.value.code == code, info.value
    assert_broker_closed(await ch.wait_closed(), code)
    assert ch.close_reason is not None
    assert ch.close_reason.text == info.value.text
    return info.value


async def test_system_exchanges_exist(amqp: Amqp) -> None:
    """amq.direct, amq.topic, amq.fanout, amq.headers and amq.match are pre-declared, durable."""
    with anyio.fail_after(5):
        ch = await amqp.channel()
        for name, type_ in SYSTEM_EXCHANGES:
            await ch.exchange_declare(name, passive=True)
            await ch.exchange_declare(name, type_, durable=True)  # type: ignore[arg-type]
        assert ch.is_open


async def test_default_exchange_is_off_limits(amqp: Amqp) -> None:
    """Declaring, binding to or deleting the default exchange is 403 ACCESS_REFUSED."""
    with anyio.fail_after(5):
        q = amqp.queue_name()
        await (await amqp.channel()).queue_declare(q)
        err = await refused(amqp, 403, lambda ch: ch.exchange_declare(""))
        assert "default exchange" in err.text
        await refused(amqp, 403, lambda ch: ch.queue_bind(q, "", q))
        await refused(amqp, 403, lambda ch: ch.exchange_delete(""))


async def test_amq_prefix_is_reserved(amqp: Amqp) -> None:
    """New exchanges and queues named amq.* are 403; system exchanges cannot be deleted."""
    with anyio.fail_after(5):
        err = await refused(amqp, 403, lambda ch: ch.exchange_declare("amq.hare-contract"))
        assert "amq.hare-contract" in err.text
        await refused(amqp, 403, lambda ch: ch.queue_declare("amq.hare-contract"))
        await refused(amqp, 403, lambda ch: ch.exchange_delete("amq.direct"))


async def test_exchange_redeclare_with_other_settings_is_406(amqp: Amqp) -> None:
    """Redeclaring an exchange with another type, durability or auto-delete is 406."""
    with anyio.fail_after(5):
        x = amqp.exchange_name()
        ch = await amqp.channel()
        await ch.exchange_declare(x, "direct")
        await ch.exchange_declare(x, "direct")  # the same again is fine
        err = await refused(amqp, 406, lambda ch: ch.exchange_declare(x, "topic"))
        assert "inequivalent arg 'type'" in err.text
        await refused(amqp, 406, lambda ch: ch.exchange_declare(x, "direct", durable=True))
        await refused(amqp, 406, lambda ch: ch.exchange_declare(x, "direct", auto_delete=True))
        await refused(
            amqp,
            406,
            lambda ch: ch.exchange_declare(x, arguments={"alternate-exchange": "amq.fanout"}),
        )


async def test_queue_redeclare_with_other_settings_is_406(amqp: Amqp) -> None:
    """Redeclaring a queue with other durability, auto-delete or TTL is 406; same is fine."""
    with anyio.fail_after(5):
        q = amqp.queue_name()
        ch = await amqp.channel()
        await ch.queue_declare(q, arguments={"x-message-ttl": 60000})
        info = await ch.queue_declare(q, arguments={"x-message-ttl": 60000})
        assert info.name == q
        err = await refused(
            amqp,
            406,
            lambda ch: ch.queue_declare(q, durable=True, arguments={"x-message-ttl": 60000}),
        )
        assert "inequivalent arg 'durable'" in err.text
        await refused(
            amqp,
            406,
            lambda ch: ch.queue_declare(q, auto_delete=True, arguments={"x-message-ttl": 60000}),
        )
        err = await refused(amqp, 406, lambda ch: ch.queue_declare(q))
        assert "x-message-ttl" in err.text


async def test_passive_declare_of_missing_things_is_404(amqp: Amqp) -> None:
    """Passive declares of a missing queue or exchange are 404 NOT_FOUND naming it."""
    with anyio.fail_after(5):
        q, x = amqp.queue_name(), amqp.exchange_name()
        err = await refused(amqp, 404, lambda ch: ch.queue_declare(q, passive=True))
        assert err.text == f"NOT_FOUND - no queue '{q}' in vhost '/'"
        err = await refused(amqp, 404, lambda ch: ch.exchange_declare(x, passive=True))
        assert err.text == f"NOT_FOUND - no exchange '{x}' in vhost '/'"


async def test_binding_missing_things_is_404(amqp: Amqp) -> None:
    """Binding a missing queue or to a missing exchange is 404; consuming a missing queue too."""
    with anyio.fail_after(5):
        q, x = amqp.queue_name(), amqp.exchange_name()
        ch = await amqp.channel()
        await ch.queue_declare(q)
        await ch.exchange_declare(x)
        err = await refused(amqp, 404, lambda ch: ch.queue_bind(q, amqp.exchange_name(), "k"))
        assert "no exchange" in err.text
        err = await refused(amqp, 404, lambda ch: ch.queue_bind(amqp.queue_name(), x, "k"))
        assert "no queue" in err.text
        await refused(amqp, 404, lambda ch: ch.basic_consume(amqp.queue_name(), Inbox()))
        await refused(amqp, 404, lambda ch: ch.queue_purge(amqp.queue_name()))


async def test_deletes_are_idempotent(amqp: Amqp) -> None:
    """Deleting a missing queue or exchange, or unbinding what is not bound, succeeds."""
    with anyio.fail_after(5):
        ch = await amqp.channel()
        assert await ch.queue_delete(amqp.queue_name()) == 0
        await ch.exchange_delete(amqp.exchange_name())
        q, x = amqp.queue_name(), amqp.exchange_name()
        await ch.queue_declare(q)
        await ch.exchange_declare(x)
        await ch.queue_unbind(q, x, "never-bound")
        assert ch.is_open


async def test_conditional_deletes_are_406(amqp: Amqp) -> None:
    """queue_delete(if_unused/if_empty) and exchange_delete(if_unused) refuse with 406."""
    with anyio.fail_after(5):
        q, x = amqp.queue_name(), amqp.exchange_name()
        owner = await amqp.channel(publisher_confirms=True)
        await owner.queue_declare(q)
        await owner.exchange_declare(x)
        await owner.queue_bind(q, x, "k")
        await owner.basic_publish(b"m", routing_key=q)
        await refused(amqp, 406, lambda ch: ch.queue_delete(q, if_empty=True))
        await refused(amqp, 406, lambda ch: ch.exchange_delete(x, if_unused=True))
        await owner.basic_consume(q, Inbox())
        await refused(amqp, 406, lambda ch: ch.queue_delete(q, if_unused=True))


async def test_server_named_queue(amqp: Amqp) -> None:
    """queue_declare("") gets a fresh amq.gen-<22 url-safe chars> name, reserved to the broker."""
    with anyio.fail_after(5):
        ch = await amqp.channel()
        a = await ch.queue_declare("", exclusive=True)
        b = await ch.queue_declare("", exclusive=True)
        assert re.fullmatch(r"amq\.gen-[A-Za-z0-9_-]{22}", a.name), a.name
        assert a.name != b.name
        assert (a.message_count, a.consumer_count) == (0, 0)
        # A generated name can be declared passively, but not redeclared: amq.* is reserved.
        assert (await ch.queue_declare(a.name, passive=True)).name == a.name
        err = await refused(amqp, 403, lambda c: c.queue_declare(a.name, exclusive=True), ch)
        assert "reserved prefix" in err.text


async def test_exclusive_queue_is_locked_to_its_connection(amqp: Amqp) -> None:
    """Another connection gets 405 RESOURCE_LOCKED for every use of an exclusive queue."""
    with anyio.fail_after(5):
        q = amqp.queue_name()
        owner = await amqp.connect()
        await (await owner.open_channel()).queue_declare(q, exclusive=True)
        other = await amqp.connect()
        ops: list[Callable[[Channel], Awaitable[Any]]] = [
            lambda ch: ch.queue_declare(q, exclusive=True),
            lambda ch: ch.queue_declare(q, passive=True),
            lambda ch: ch.basic_consume(q, Inbox()),
            lambda ch: ch.queue_bind(q, "amq.direct", "k"),
            lambda ch: ch.queue_purge(q),
            lambda ch: ch.queue_delete(q),
        ]
        for op in ops:
            err = await refused(amqp, 405, op, await other.open_channel())
            assert "RESOURCE_LOCKED" in err.text
            assert q in err.text
        # The owner still uses it freely, also from another channel.
        ch = await owner.open_channel()
        assert (await ch.queue_declare(q, passive=True)).name == q
        await ch.basic_consume(q, Inbox())


async def test_exclusive_flag_must_match_on_redeclare(amqp: Amqp) -> None:
    """Redeclaring an exclusive queue without exclusive, even by its owner, is 405."""
    with anyio.fail_after(5):
        q = amqp.queue_name()
        conn = await amqp.connect()
        ch = await conn.open_channel()
        await ch.queue_declare(q, exclusive=True)
        await refused(amqp, 405, lambda ch: ch.queue_declare(q), await conn.open_channel())
        shared = amqp.queue_name()
        await (await conn.open_channel()).queue_declare(shared)
        await refused(
            amqp,
            405,
            lambda ch: ch.queue_declare(shared, exclusive=True),
            await conn.open_channel(),
        )


async def test_exclusive_queue_goes_with_its_connection(amqp: Amqp) -> None:
    """An exclusive queue is deleted when its connection closes."""
    with anyio.fail_after(5):
        conn = await amqp.connect()
        info = await (await conn.open_channel()).queue_declare("", exclusive=True)
        await conn.close()
        await conn.wait_closed()
        err = await refused(amqp, 404, lambda ch: ch.queue_declare(info.name, passive=True))
        assert info.name in err.text


async def test_auto_delete_queue_goes_with_its_last_consumer(amqp: Amqp) -> None:
    """An auto-delete queue lives until its last consumer is cancelled, then it is deleted."""
    with anyio.fail_after(5):
        q = amqp.queue_name()
        ch = await amqp.channel()
        await ch.queue_declare(q, auto_delete=True)
        first = await ch.basic_consume(q, Inbox())
        second = await ch.basic_consume(q, Inbox())
        await ch.basic_cancel(first)
        assert (await ch.queue_declare(q, passive=True)).consumer_count == 1
        await ch.basic_cancel(second)
        await refused(amqp, 404, lambda ch: ch.queue_declare(q, passive=True))


async def test_auto_delete_exchange_goes_with_its_last_binding(amqp: Amqp) -> None:
    """An auto-delete exchange is deleted when its last binding is removed."""
    with anyio.fail_after(5):
        q, x = amqp.queue_name(), amqp.exchange_name()
        ch = await amqp.channel()
        await ch.queue_declare(q)
        await ch.exchange_declare(x, "fanout", auto_delete=True)
        await ch.queue_bind(q, x)
        await ch.exchange_declare(x, passive=True)
        await ch.queue_unbind(q, x)
        await refused(amqp, 404, lambda ch: ch.exchange_declare(x, passive=True))


async def test_queue_declare_reports_counts(amqp: Amqp) -> None:
    """queue_declare returns the ready message count and the consumer count."""
    with anyio.fail_after(5):
        q = amqp.queue_name()
        ch = await amqp.channel(publisher_confirms=True)
        await ch.queue_declare(q)
        for i in range(3):
            await ch.basic_publish(b"%d" % i, routing_key=q)
        info = await ch.queue_declare(q, passive=True)
        assert (info.message_count, info.consumer_count) == (3, 0)
        assert await ch.queue_purge(q) == 3
        await ch.basic_publish(b"again", routing_key=q)
        await ch.basic_consume(q, Inbox(), no_ack=True, consumer_tag="c1")
        info = await ch.queue_declare(q, passive=True)
        assert (info.message_count, info.consumer_count) == (0, 1)


async def test_queue_delete_returns_ready_count(amqp: Amqp) -> None:
    """queue_delete returns how many ready messages the queue held."""
    with anyio.fail_after(5):
        q = amqp.queue_name()
        ch = await amqp.channel(publisher_confirms=True)
        await ch.queue_declare(q)
        await ch.basic_publish(b"a", routing_key=q)
        await ch.basic_publish(b"b", routing_key=q)
        assert await ch.queue_delete(q) == 2


async def test_exclusive_consumer(amqp: Amqp) -> None:
    """An exclusive consumer keeps others off its queue (403), and needs a consumer-free queue."""
    with anyio.fail_after(5):
        q = amqp.queue_name()
        ch = await amqp.channel()
        await ch.queue_declare(q)
        await ch.basic_consume(q, Inbox(), exclusive=True)
        err = await refused(amqp, 403, lambda ch: ch.basic_consume(q, Inbox()))
        assert "in exclusive use" in err.text
        other = amqp.queue_name()
        await ch.queue_declare(other)
        await ch.basic_consume(other, Inbox())
        await refused(amqp, 403, lambda ch: ch.basic_consume(other, Inbox(), exclusive=True))


async def test_reusing_a_consumer_tag_is_refused(amqp: Amqp) -> None:
    """A consumer tag reused on a channel is refused with 530; the channel and consumer go on."""
    with anyio.fail_after(5):
        q = amqp.queue_name()
        ch = await amqp.channel()
        await ch.queue_declare(q)
        await ch.basic_consume(q, Inbox(), consumer_tag="same")
        with pytest.raises(BrokerError) as info:
            await ch.basic_consume(q, Inbox(), consumer_tag="same")
        assert info.value.code == 530
        assert ch.is_open
        assert (await ch.queue_declare(q, passive=True)).consumer_count == 1
