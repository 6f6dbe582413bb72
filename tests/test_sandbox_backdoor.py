"""The sandbox broker's backdoor: history, introspection, scripts, outages, kills and faults."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from inbox import Inbox

from hare_py.errors import BrokerError, ConfigError, ConnectFailed, ConnectionLost
from hare_py.testing import SandboxBroker, SandboxMessage
from hare_py.transport import Channel, ConnectOptions, Properties, backend_for, parse_url
from hare_py.transport.base import TransportConnection
from hare_py.transport.sandbox import SandboxChannel, SandboxConnection

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def connect(url: str, name: str | None = None) -> AsyncIterator[SandboxConnection]:
    parsed = parse_url(url)
    async with backend_for(parsed).connect(parsed, ConnectOptions(name=name)) as conn:
        assert isinstance(conn, SandboxConnection)
        yield conn


async def channel(conn: TransportConnection, **kwargs: Any) -> SandboxChannel:
    ch = await conn.open_channel(**kwargs)
    assert isinstance(ch, SandboxChannel)
    return ch


@pytest.fixture
def broker() -> Iterator[SandboxBroker]:
    """A fresh broker, unregistered after the test."""
    with SandboxBroker() as b:
        yield b


# -- registry ---------------------------------------------------------------------


async def test_unknown_broker_name_fails_to_connect() -> None:
    """Connecting to a sandbox name nobody registered raises ConnectFailed saying what to do."""
    with anyio.fail_after(5), pytest.raises(ConnectFailed, match="SandboxBroker"):
        async with connect("sandbox://no-such-broker"):
            pass


async def test_closed_broker_unregisters_and_kills_connections() -> None:
    """close() force-closes the broker's connections and frees its name."""
    with anyio.fail_after(5):
        broker = SandboxBroker("backdoor-close-test")
        async with connect(broker.url) as conn:
            broker.close()
            reason = await conn.wait_closed()
            assert (reason.code, reason.by) == (320, "broker")
        with pytest.raises(ConnectFailed):
            async with connect(broker.url):
                pass
        SandboxBroker("backdoor-close-test").close()  # the name is free again


def test_broker_names_are_unique() -> None:
    """Two live brokers cannot share a name; generated names never clash."""
    with SandboxBroker("backdoor-unique") as a:
        assert a.url == "sandbox://backdoor-unique"
        with pytest.raises(ConfigError):
            SandboxBroker("backdoor-unique")
    with SandboxBroker() as b, SandboxBroker() as c:
        assert b.name != c.name


# -- history and introspection --------------------------------------------------------


async def test_history_records_operations(broker: SandboxBroker) -> None:
    """Each operation is recorded with its connection, channel and arguments."""
    with anyio.fail_after(5):
        async with connect(broker.url, name="recorded") as conn:
            ch = await channel(conn)
            await ch.queue_declare("jobs", durable=True)
            await ch.queue_bind("jobs", "amq.direct", "job")
            inbox = Inbox()
            tag = await ch.basic_consume("jobs", inbox)
            await ch.basic_publish(b"1", exchange="amq.direct", routing_key="job")
            delivery = await inbox.get()
            await ch.basic_ack(delivery.delivery_tag)
            await ch.basic_cancel(tag)
            await ch.close()
        names = [op.name for op in broker.history]
        assert names == [
            "connect",
            "open_channel",
            "queue_declare",
            "queue_bind",
            "basic_consume",
            "basic_publish",
            "basic_ack",
            "basic_cancel",
            "close_channel",
            "close_connection",
        ]
        [declare] = broker.ops("queue_declare", queue="jobs")
        assert (declare.connection, declare.channel) == (conn.id, ch.id)
        assert declare["durable"] is True
        assert broker.ops("connect")[0]["name"] == "recorded"
        assert broker.ops("basic_publish", routing_key="job")[0]["body"] == b"1"
        assert broker.ops("queue_declare", queue="other") == []


async def test_history_records_refusals(broker: SandboxBroker) -> None:
    """A refused operation is recorded with the BrokerError it raised."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            ch = await channel(conn)
            with pytest.raises(BrokerError):
                await ch.queue_declare("missing", passive=True)
        [op] = broker.ops("queue_declare")
        assert isinstance(op.error, BrokerError)
        assert op.error.code == 404


async def test_introspection(broker: SandboxBroker) -> None:
    """connections, channels, queues, exchanges, bindings, consumers and messages show state."""
    with anyio.fail_after(5):
        async with connect(broker.url, name="inspect") as conn:
            ch = await channel(conn, publisher_confirms=True)
            await ch.basic_qos(5)
            await ch.exchange_declare("events", "topic", durable=True)
            mine = await ch.queue_declare("", exclusive=True)
            await ch.queue_declare("work")
            await ch.queue_bind("work", "events", "order.*")
            await ch.basic_publish(b"queued", exchange="events", routing_key="order.new")
            tag = await ch.basic_consume(mine.name, Inbox())

            assert broker.connections[conn.id].name == "inspect"
            assert broker.connections[conn.id].channels == (ch.id,)
            info = broker.channels[ch.id]
            assert (info.connection, info.number, info.publisher_confirms) == (conn.id, 1, True)
            assert info.prefetch_count == 5
            assert info.consumers == (tag,)
            assert broker.queues[mine.name].exclusive_owner == conn.id
            assert broker.queues["work"].messages == 1
            assert not broker.queues["work"].exclusive
            assert broker.exchanges["events"].type == "topic"
            assert {"", "amq.direct", "amq.topic", "amq.match"} <= set(broker.exchanges)
            assert [(b.exchange, b.queue, b.routing_key) for b in broker.bindings] == [
                ("events", "work", "order.*")
            ]
            [consumer] = broker.consumers(mine.name)
            assert (consumer.tag, consumer.channel, consumer.connection) == (tag, ch.id, conn.id)
            [message] = broker.messages("work")
            assert (message.body, message.routing_key) == (b"queued", "order.new")
        assert broker.connections == {}
        assert broker.channels == {}
        assert mine.name not in broker.queues


async def test_unacked_counts(broker: SandboxBroker) -> None:
    """Queue details count delivered-but-unacked messages apart from ready ones."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            ch = await channel(conn)
            await ch.queue_declare("q")
            await ch.basic_qos(1)
            broker.publish("", "q", b"a")
            broker.publish("", "q", b"b")
            inbox = Inbox()
            await ch.basic_consume("q", inbox)
            await inbox.get()
            details = broker.queues["q"]
            assert (details.messages, details.unacked) == (1, 1)
            assert details.consumers[0].unacked == 1


# -- scripted results -----------------------------------------------------------------


async def test_scripted_connect_results(broker: SandboxBroker) -> None:
    """script_connect makes the next connects fail with the given errors, None succeeding."""
    with anyio.fail_after(5):
        refused = ConnectFailed("scripted refusal")
        broker.script_connect(refused, None, ConnectFailed("again"))
        with pytest.raises(ConnectFailed) as info:
            async with connect(broker.url):
                pass
        assert info.value is refused
        async with connect(broker.url) as conn:
            assert conn.is_open
        with pytest.raises(ConnectFailed, match="again"):
            async with connect(broker.url):
                pass
        async with connect(broker.url) as conn:  # the script is used up
            assert conn.is_open
        assert [op.error is None for op in broker.ops("connect")] == [False, True, False, True]


async def test_scripted_channel_open_results(broker: SandboxBroker) -> None:
    """script_channel_open makes the next channel opens fail, None succeeding."""
    with anyio.fail_after(5):
        broker.script_channel_open(None, ConnectionLost("no channel for you"))
        async with connect(broker.url) as conn:
            first = await channel(conn)
            with pytest.raises(ConnectionLost, match="no channel for you"):
                await conn.open_channel()
            second = await channel(conn)
            assert first.is_open
            assert second.is_open
            assert conn.is_open


# -- outages and kills ------------------------------------------------------------------


async def test_down_kills_connections_and_refuses_new_ones(broker: SandboxBroker) -> None:
    """down() closes every connection (320 by broker) and refuses connects until up()."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            ch = await channel(conn)
            broker.down()
            reason = await conn.wait_closed()
            assert (reason.code, reason.by) == (320, "broker")
            assert "shutdown" in reason.text
            ch_reason = await ch.wait_closed()
            assert (ch_reason.code, ch_reason.by) == (320, "connection")
            with pytest.raises(ConnectionLost):
                await ch.queue_declare("x")
        assert not broker.is_up
        with pytest.raises(ConnectFailed, match="down"):
            async with connect(broker.url):
                pass
        broker.up()
        async with connect(broker.url) as conn:
            assert conn.is_open


async def test_down_can_look_like_a_network_failure(broker: SandboxBroker) -> None:
    """down(by="network") reports the connection loss as a network failure."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            broker.down(by="network", code=0, text="connection reset")
            reason = await conn.wait_closed()
            assert (reason.code, reason.text, reason.by) == (0, "connection reset", "network")
        broker.up()


async def test_restart_keeps_durable_things_only(broker: SandboxBroker) -> None:
    """A down/up keeps durable exchanges, queues, bindings and persistent messages only."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            ch = await channel(conn)
            await ch.exchange_declare("durable-x", "direct", durable=True)
            await ch.exchange_declare("transient-x", "direct")
            await ch.queue_declare("durable-q", durable=True)
            await ch.queue_declare("transient-q")
            await ch.queue_declare("excl-q", durable=True, exclusive=True)
            await ch.queue_bind("durable-q", "durable-x", "k")
            persistent = Properties(delivery_mode=2)
            await ch.basic_publish(b"kept", routing_key="durable-q", properties=persistent)
            await ch.basic_publish(b"lost", routing_key="durable-q")
            broker.down()
            broker.up()
        assert "durable-x" in broker.exchanges
        assert "transient-x" not in broker.exchanges
        assert set(broker.queues) == {"durable-q"}
        assert [(b.exchange, b.queue) for b in broker.bindings] == [("durable-x", "durable-q")]
        assert [m.body for m in broker.messages("durable-q")] == [b"kept"]


async def test_kill_channel(broker: SandboxBroker) -> None:
    """kill_channel closes one channel with the given code; its unacked messages are requeued."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            ch = await channel(conn)
            other = await channel(conn)
            await ch.queue_declare("q")
            broker.publish("", "q", b"m")
            inbox = Inbox()
            await ch.basic_consume("q", inbox)
            await inbox.get()
            broker.kill_channel(ch.id, 406, "PRECONDITION_FAILED - scripted")
            reason = await ch.wait_closed()
            assert (reason.code, reason.text, reason.by) == (
                406,
                "PRECONDITION_FAILED - scripted",
                "broker",
            )
            assert other.is_open
            assert conn.is_open
            [message] = broker.messages("q")
            assert message.redelivered
        with pytest.raises(ConfigError):
            broker.kill_channel(12345)


async def test_kill_connection(broker: SandboxBroker) -> None:
    """kill_connection closes a connection (default 320 by broker) and only that one."""
    with anyio.fail_after(5):
        async with connect(broker.url) as a, connect(broker.url) as b:
            ch = await channel(a)
            await ch.queue_declare("owned", exclusive=True)
            broker.kill_connection(a.id)
            reason = await a.wait_closed()
            assert (reason.code, reason.by) == (320, "broker")
            assert (await ch.wait_closed()).by == "connection"
            assert b.is_open
            assert "owned" not in broker.queues
            with pytest.raises(ConnectionLost):
                await a.open_channel()


async def test_kill_all_connections(broker: SandboxBroker) -> None:
    """kill_all_connections closes every open connection with the given code and text."""
    with anyio.fail_after(5):
        async with connect(broker.url) as a, connect(broker.url) as b:
            broker.kill_all_connections(320, "CONNECTION_FORCED - test", by="network")
            for conn in (a, b):
                reason = await conn.wait_closed()
                assert (reason.code, reason.text, reason.by) == (
                    320,
                    "CONNECTION_FORCED - test",
                    "network",
                )
        assert broker.connections == {}


async def test_cancel_consumer(broker: SandboxBroker) -> None:
    """cancel_consumer calls the consumer's on_cancel; later messages stay in the queue."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            ch = await channel(conn)
            await ch.queue_declare("q")
            cancels, inbox = Inbox(), Inbox()
            tag = await ch.basic_consume("q", inbox, on_cancel=cancels)
            broker.cancel_consumer(tag)
            cancelled, reason = await cancels.get()
            assert cancelled == tag
            assert reason.by == "broker"
            broker.publish("", "q", b"after")
            assert await inbox.quiet(0.1) == []
            assert broker.queues["q"].messages == 1
            assert ch.is_open
        with pytest.raises(ConfigError):
            broker.cancel_consumer("nobody")


async def test_delete_queue(broker: SandboxBroker) -> None:
    """delete_queue deletes any queue, exclusive ones included, cancelling its consumers."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            ch = await channel(conn)
            q = await ch.queue_declare("", exclusive=True)
            cancels = Inbox()
            consumer = await ch.basic_consume(q.name, Inbox(), on_cancel=cancels)
            assert broker.delete_queue(q.name) == 0
            tag, reason = await cancels.get()
            assert tag == consumer
            assert reason.by == "broker"
            assert q.name not in broker.queues
            assert broker.delete_queue(q.name) == 0  # already gone


async def test_backdoor_publish(broker: SandboxBroker) -> None:
    """publish() injects a message as if a peer sent it; a missing exchange is a BrokerError."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            ch = await channel(conn)
            await ch.queue_declare("replies")
            inbox = Inbox()
            await ch.basic_consume("replies", inbox, no_ack=True)
            broker.publish("", "replies", b"late", Properties(correlation_id="unknown"))
            delivery = await inbox.get()
            assert delivery.body == b"late"
            assert delivery.properties.correlation_id == "unknown"
        with pytest.raises(BrokerError) as info:
            broker.publish("missing", "k", b"x")
        assert info.value.code == 404


async def test_backdoor_publish_sends_only_what_a_client_could(broker: SandboxBroker) -> None:
    """publish() refuses what AMQP cannot carry and delivers headers as the wire decodes them."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            ch = await channel(conn)
            await ch.queue_declare("q")
            with pytest.raises(ConfigError, match="headers"):
                broker.publish("", "q", b"x", Properties(headers={"x": object()}))
            with pytest.raises(ConfigError, match="routing key"):
                broker.publish("", "k" * 256, b"x")
            broker.publish("", "q", b"ok", Properties(headers={"t": (1, 2)}))
            [message] = broker.messages("q")
            assert message.body == b"ok"
            assert message.properties.headers == {"t": [1, 2]}


async def test_broker_limits_can_be_lowered() -> None:
    """frame_max, max_message_size and channel_max are the broker's settings, as on RabbitMQ."""
    with (
        anyio.fail_after(5),
        SandboxBroker(frame_max=4096, max_message_size=10, channel_max=2) as broker,
    ):
        async with connect(broker.url) as conn:
            ch = await channel(conn, publisher_confirms=True)
            await ch.queue_declare("q")
            with pytest.raises(ConfigError, match="frame_max of 4096"):
                await ch.basic_publish(
                    b"x", routing_key="q", properties=Properties(headers={"h": "v" * 4096})
                )
            await ch.basic_publish(b"0123456789", routing_key="q")
            await channel(conn)
            with pytest.raises(BrokerError) as info:
                await channel(conn)
            assert info.value.code == 530
            with pytest.raises(BrokerError) as info:
                await ch.basic_publish(b"0123456789!", routing_key="q")
            assert info.value.code == 406
            assert "larger than configured max size 10" in info.value.text
            assert conn.close_reason is None
            assert [m.body for m in broker.messages("q")] == [b"0123456789"]
    with pytest.raises(ConfigError, match="frame_max"):
        SandboxBroker(frame_max=4095)


class TestOnTheLoopsClock:
    """Message TTLs follow the event loop's clock, so trio's MockClock moves them too."""

    @pytest.fixture
    def anyio_backend(self, fast_clock_backend: object) -> object:
        return fast_clock_backend

    async def test_message_ttl_follows_the_event_loops_clock(self, broker: SandboxBroker) -> None:
        """A message's expiration and a queue's x-message-ttl pass with the loop's time."""
        with anyio.fail_after(5):
            async with connect(broker.url) as conn:
                ch = await channel(conn, publisher_confirms=True)
                await ch.queue_declare("q")
                await ch.queue_declare("short", arguments={"x-message-ttl": 100})
                await ch.basic_publish(
                    b"short", routing_key="q", properties=Properties(expiration="100")
                )
                await ch.basic_publish(
                    b"long", routing_key="q", properties=Properties(expiration="600000")
                )
                await ch.basic_publish(b"queue-ttl", routing_key="short")
                await anyio.sleep(0.2)
                assert [m.body for m in broker.messages("q")] == [b"long"]
                assert (await ch.queue_declare("short", passive=True)).message_count == 0


# -- delivery faults ---------------------------------------------------------------------


async def consuming(conn: TransportConnection, queue: str) -> tuple[Channel, Inbox]:
    ch = await conn.open_channel()
    await ch.queue_declare(queue)
    inbox = Inbox()
    await ch.basic_consume(queue, inbox, no_ack=True)
    return ch, inbox


async def test_drop_fault(broker: SandboxBroker) -> None:
    """drop(times=1) loses the first matching delivery only."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            _, inbox = await consuming(conn, "q")
            fault = broker.drop(queue="q", times=1)
            broker.publish("", "q", b"1")
            broker.publish("", "q", b"2")
            assert (await inbox.get()).body == b"2"
            assert fault.hits == 1
            assert not fault.active
            assert broker.faults == []


async def test_drop_fault_matches_messages(broker: SandboxBroker) -> None:
    """A fault with a predicate only hits the messages it matches, until removed."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            _, inbox = await consuming(conn, "q")

            def is_reply(m: SandboxMessage) -> bool:
                return m.properties.correlation_id == "drop-me"

            fault = broker.drop(match=is_reply)
            broker.publish("", "q", b"a", Properties(correlation_id="drop-me"))
            broker.publish("", "q", b"b", Properties(correlation_id="keep"))
            broker.publish("", "q", b"c", Properties(correlation_id="drop-me"))
            assert (await inbox.get()).body == b"b"
            assert fault.hits == 2
            fault.remove()
            broker.publish("", "q", b"d", Properties(correlation_id="drop-me"))
            assert (await inbox.get()).body == b"d"


async def test_fault_limited_to_a_queue(broker: SandboxBroker) -> None:
    """A fault for one queue leaves other queues alone."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            _, a = await consuming(conn, "a")
            _, b = await consuming(conn, "b")
            broker.drop(queue="a")
            broker.publish("", "a", b"lost")
            broker.publish("", "b", b"kept")
            assert (await b.get()).body == b"kept"
            assert await a.quiet(0.1) == []
            broker.clear_faults()
            broker.publish("", "a", b"now")
            assert (await a.get()).body == b"now"


async def test_delay_fault(broker: SandboxBroker) -> None:
    """A delayed delivery arrives late and is overtaken by later ones."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            _, inbox = await consuming(conn, "q")
            broker.delay(0.2, queue="q", times=1)
            start = anyio.current_time()
            broker.publish("", "q", b"slow")
            broker.publish("", "q", b"fast")
            assert (await inbox.get()).body == b"fast"
            assert (await inbox.get()).body == b"slow"
            assert anyio.current_time() - start >= 0.2


async def test_delayed_delivery_to_a_closed_channel_is_requeued(broker: SandboxBroker) -> None:
    """A delivery delayed past its channel's close is not delivered but requeued."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            ch = await channel(conn)
            await ch.queue_declare("q")
            inbox = Inbox()
            await ch.basic_consume("q", inbox)
            broker.delay(0.1, queue="q", times=1)
            broker.publish("", "q", b"m")
            await ch.close()
            assert await inbox.quiet(0.2) == []
            [message] = broker.messages("q")
            assert message.redelivered


async def test_duplicate_fault(broker: SandboxBroker) -> None:
    """A duplicated delivery arrives twice, each copy with its own delivery tag."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            ch = await channel(conn)
            await ch.queue_declare("q")
            inbox = Inbox()
            await ch.basic_consume("q", inbox)
            broker.duplicate(queue="q", times=1)
            broker.publish("", "q", b"twice")
            first, second = await inbox.get(), await inbox.get()
            assert first.body == second.body == b"twice"
            assert first.delivery_tag != second.delivery_tag
            await ch.basic_ack(first.delivery_tag)
            await ch.basic_ack(second.delivery_tag)
            broker.publish("", "q", b"once")
            assert (await inbox.get()).body == b"once"
            assert await inbox.quiet(0.1) == []
            assert ch.is_open


def test_fault_arguments_are_checked() -> None:
    """times must be positive and delays non-negative."""
    with SandboxBroker() as broker:
        with pytest.raises(ConfigError):
            broker.drop(times=0)
        with pytest.raises(ConfigError):
            broker.delay(-1)


async def test_failing_callback_is_logged_not_fatal(broker: SandboxBroker) -> None:
    """A callback that raises is logged; the channel and later deliveries go on."""
    with anyio.fail_after(5):
        seen: list[bytes] = []

        def flaky(delivery: Any) -> None:
            seen.append(delivery.body)
            if delivery.body == b"boom":
                raise RuntimeError("callback bug")

        async with connect(broker.url) as conn:
            ch = await channel(conn)
            await ch.queue_declare("q")
            await ch.basic_consume("q", flaky, no_ack=True)
            broker.publish("", "q", b"boom")
            broker.publish("", "q", b"fine")
            while len(seen) < 2:
                await anyio.sleep(0.01)
            assert seen == [b"boom", b"fine"]
            assert ch.is_open
