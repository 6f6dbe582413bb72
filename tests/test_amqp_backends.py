"""Both AMQP 0-9-1 backends against a real RabbitMQ broker (the ``rabbitmq`` fixture).

Every test runs on three combinations (the ``amqp`` fixture):

- ``aiormq-asyncio``: aiormq (``?backend=aiormq``), on asyncio only;
- ``anyio-asyncio``: the anyio-native backend on asyncio (``?backend=anyio``);
- ``anyio-trio``: the anyio-native backend, the default on trio.

Tests build URLs from the broker's and let ``amqp.connect`` add the backend
choice, which also checks that the backend picked is the one meant. Network
faults go through a loopback proxy (``chaos.proxy.FaultProxy``), so no test
reaches into a backend's internals.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import structlog
from chaos.proxy import FaultProxy
from inbox import Inbox
from rabbitmq import (
    ExternalRabbitMQ,
    RabbitMQError,
    RabbitMQNode,
    unavailable,
    with_amqp_backend,
)

from hare_py.errors import BrokerError, ConfigError, ConnectFailed, ConnectionLost, HareError
from hare_py.transport import backend_for, parse_url
from hare_py.transport.aiormq_backend import AiormqConnection
from hare_py.transport.amqp import AmqpConnection
from hare_py.transport.base import (
    Channel,
    CloseReason,
    ConnectOptions,
    Delivery,
    Properties,
    ReturnedMessage,
    TLSOptions,
)

Broker = RabbitMQNode | ExternalRabbitMQ
Connection = AiormqConnection | AmqpConnection

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]


@dataclass(frozen=True)
class AmqpCombo:
    """An anyio backend and the AMQP backend a URL gets on it."""

    anyio_backend: str
    backend_param: str | None  # the URL's backend=; None: the loop's default
    expected: type[Connection]

    def url(self, url: str) -> str:
        """``url`` (the broker's, or one built from it) with this combination's backend=."""
        return with_amqp_backend(url, self.backend_param)

    @asynccontextmanager
    async def connect(self, url: str, **options: Any) -> AsyncIterator[Connection]:
        """Connect to ``url`` through this combination's backend, and check it is that one."""
        parsed = parse_url(self.url(url))
        async with backend_for(parsed).connect(parsed, ConnectOptions(**options)) as conn:
            assert isinstance(conn, self.expected), type(conn)
            yield conn


COMBOS = {
    "aiormq-asyncio": AmqpCombo("asyncio", "aiormq", AiormqConnection),
    "anyio-asyncio": AmqpCombo("asyncio", "anyio", AmqpConnection),
    "anyio-trio": AmqpCombo("trio", None, AmqpConnection),
}
ANYIO = ("anyio-asyncio", "anyio-trio")
# For tests of the anyio backend only: @pytest.mark.parametrize("amqp", ANYIO_ONLY, indirect=True)
ANYIO_ONLY = [pytest.param(COMBOS[name], id=name) for name in ANYIO]

# (amqp, auth=) pairs: aiormq knows PLAIN and EXTERNAL only, so AMQPLAIN is the anyio
# backend's alone (aiormq's backend refuses it with a ConfigError before connecting).
AUTH_CASES = [
    *(pytest.param(combo, None, id=f"{name}-default") for name, combo in COMBOS.items()),
    *(pytest.param(combo, "plain", id=f"{name}-plain") for name, combo in COMBOS.items()),
    *(pytest.param(COMBOS[name], "amqplain", id=f"{name}-amqplain") for name in ANYIO),
    *(pytest.param(COMBOS[name], "AMQPLAIN", id=f"{name}-AMQPLAIN") for name in ANYIO),
]


@pytest.fixture(params=list(COMBOS.values()), ids=list(COMBOS))
def amqp(request: pytest.FixtureRequest) -> AmqpCombo:
    """Which AMQP backend, on which anyio backend."""
    combo: AmqpCombo = request.param
    return combo


@pytest.fixture
def anyio_backend(amqp: AmqpCombo) -> str:
    return amqp.anyio_backend


def unique(prefix: str) -> str:
    return f"hare-test.{prefix}.{secrets.token_hex(4)}"


async def consume_into(channel: Channel, queue: str, **kwargs: Any) -> tuple[str, Inbox]:
    """Consume ``queue`` into an inbox: (consumer tag, inbox)."""
    inbox = Inbox()
    tag = await channel.basic_consume(queue, inbox, **kwargs)
    return tag, inbox


@asynccontextmanager
async def fault_proxy(broker_url: str) -> AsyncIterator[FaultProxy]:
    """A loopback proxy in front of the broker; ``proxy.url(broker_url)`` goes through it."""
    target = parse_url(broker_url)
    proxy = FaultProxy(target.port, target.host)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.run)
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()


async def test_connect_publish_consume_close(amqp: AmqpCombo, rabbitmq_url: str) -> None:
    """A message published to a queue reaches its consumer; close() is a normal client close."""
    with anyio.fail_after(10):
        async with amqp.connect(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            queue = await channel.queue_declare("", exclusive=True)
            assert queue.name.startswith("amq.gen-")
            _, deliveries = await consume_into(channel, queue.name, no_ack=True)
            await channel.basic_publish(b"hello", routing_key=queue.name)
            delivery = await deliveries.get()
            assert (delivery.body, delivery.routing_key, delivery.exchange) == (
                b"hello",
                queue.name,
                "",
            )
            assert delivery.properties == Properties()  # nothing added on the way
            await channel.close()
            assert channel.close_reason == CloseReason(200, "Normal shutdown", "client")
            assert conn.is_open
        assert conn.close_reason is not None
        assert conn.close_reason.is_normal
        assert await conn.wait_closed() == conn.close_reason


async def test_connection_name_is_visible_to_the_broker(amqp: AmqpCombo, rabbitmq: Broker) -> None:
    """options.name arrives as the connection_name client property."""
    name = unique("named")
    with anyio.fail_after(30):
        async with amqp.connect(rabbitmq.url, name=name, client_properties={"team": "hare"}):
            rows = await anyio.to_thread.run_sync(rabbitmq.connections)
    [row] = [r for r in rows if r["client_properties"].get("connection_name") == name]
    assert row["client_properties"]["team"] == "hare"


async def test_heartbeat_is_negotiated_from_options_and_url(
    amqp: AmqpCombo, rabbitmq: Broker
) -> None:
    """The broker uses the heartbeat from the options, or from the URL's heartbeat= over them."""
    from_options, from_url = unique("hb-options"), unique("hb-url")
    with anyio.fail_after(30):
        async with (
            amqp.connect(rabbitmq.url, name=from_options, heartbeat=7) as a,
            amqp.connect(rabbitmq.url + "?heartbeat=11", name=from_url, heartbeat=7) as b,
        ):
            assert (a.heartbeat, b.heartbeat) == (7, 11)
            rows = await anyio.to_thread.run_sync(rabbitmq.connections)
    timeouts = {r["client_properties"].get("connection_name"): r["timeout"] for r in rows}
    assert (timeouts[from_options], timeouts[from_url]) == (7, 11)


@pytest.mark.parametrize(("amqp", "auth"), AUTH_CASES, indirect=["amqp"])
async def test_auth_picks_the_login_mechanism(
    amqp: AmqpCombo, rabbitmq: Broker, auth: str | None
) -> None:
    """``?auth=`` picks the SASL mechanism the broker sees (PLAIN without it); the login
    works with each."""
    name = unique("auth")
    query = f"?auth={auth}" if auth else ""
    with anyio.fail_after(30):
        async with amqp.connect(rabbitmq.url + query, name=name) as conn:
            channel = await conn.open_channel()
            await channel.queue_declare("", exclusive=True)
            out = await anyio.to_thread.run_sync(
                rabbitmq.ctl, "list_connections", "client_properties", "auth_mechanism"
            )
    [line] = [line for line in out.splitlines() if name in line]
    assert line.split()[-1] == (auth or "plain").upper()


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in seen:
        seen.append(link)
        link = link.__cause__ or link.__context__
    return seen


@pytest.mark.parametrize(("amqp", "auth"), AUTH_CASES, indirect=["amqp"])
async def test_wrong_password_fails_without_leaking_it(
    amqp: AmqpCombo, rabbitmq_url: str, auth: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused login raises ConnectFailed(403) whatever the SASL mechanism; its text, chain
    and logs hold no password."""
    password = "not-the-password-" + secrets.token_hex(8)
    url = parse_url(rabbitmq_url)
    bad = url.with_secret().replace(f":{url.password}@", f":{password}@")
    bad += f"?auth={auth}" if auth else ""
    caplog.set_level(logging.DEBUG)
    with (
        structlog.testing.capture_logs() as events,
        anyio.fail_after(10),
        pytest.raises(ConnectFailed) as info,
    ):
        async with amqp.connect(bad):
            pass
    assert info.value.code == 403
    for exc in _chain(info.value):
        assert password not in str(exc)
        assert password not in repr(exc)
        assert all(password not in str(arg) for arg in exc.args)
    assert password not in caplog.text
    assert password not in repr(events)
    assert password not in repr(parse_url(bad))
    assert password not in str(parse_url(bad))


async def test_an_unknown_vhost_is_connect_failed(amqp: AmqpCombo, rabbitmq_url: str) -> None:
    """Opening a virtual host the broker does not have raises ConnectFailed(530)."""
    with anyio.fail_after(10), pytest.raises(ConnectFailed) as info:
        async with amqp.connect(rabbitmq_url.rstrip("/") + "/" + unique("vhost")):
            pass
    assert info.value.code == 530


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connect_to_a_closed_port_fails_fast(amqp: AmqpCombo) -> None:
    """Nothing listening: ConnectFailed at once, not after the (30 s) connect timeout."""
    with anyio.fail_after(5), pytest.raises(ConnectFailed):
        async with amqp.connect(
            f"amqp://guest:guest@127.0.0.1:{closed_port()}/", connect_timeout=30
        ):
            pass


async def test_a_refused_connect_says_refused(amqp: AmqpCombo) -> None:
    """The ConnectFailed for a closed port says the connection was refused, so that it reads
    differently from a timeout or an unknown host."""
    with anyio.fail_after(5), pytest.raises(ConnectFailed) as info:
        async with amqp.connect(f"amqp://guest:guest@127.0.0.1:{closed_port()}/"):
            pass
    assert "refused" in str(info.value).lower()


async def test_connect_timeout_bounds_a_silent_peer(amqp: AmqpCombo) -> None:
    """A peer that accepts TCP but never speaks AMQP fails with ConnectFailed at the timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with anyio.fail_after(5), pytest.raises(ConnectFailed, match="did not answer") as info:
            async with amqp.connect(f"amqp://guest:guest@127.0.0.1:{port}/", connect_timeout=0.5):
                pass
    assert "within 0.5 s" in str(info.value)


async def test_publish_to_a_deleted_exchange_closes_the_channel_with_404(
    amqp: AmqpCombo, rabbitmq_url: str
) -> None:
    """The broker's channel.close surfaces as CloseReason(404, by broker); later calls raise."""
    exchange = unique("gone")
    with anyio.fail_after(10):
        async with amqp.connect(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            await channel.exchange_declare(exchange, "direct", auto_delete=False)
            await channel.exchange_delete(exchange)
            await channel.basic_publish(b"x", exchange=exchange, routing_key="k")
            reason = await channel.wait_closed()
            assert (reason.code, reason.by) == (404, "broker")
            assert exchange in reason.text
            assert channel.close_reason == reason
            assert not channel.is_open
            with pytest.raises(ConnectionLost) as info:
                await channel.queue_declare("", exclusive=True)
            assert info.value.code == 404
            assert conn.is_open  # only the channel died
            other = await conn.open_channel()
            await other.queue_declare("", exclusive=True)


async def test_close_right_after_a_refused_publish_keeps_the_connection(
    amqp: AmqpCombo, rabbitmq_url: str
) -> None:
    """A channel.close crossing the broker's own close of that channel closes only the channel."""
    with anyio.fail_after(20):
        async with amqp.connect(rabbitmq_url, heartbeat=0) as conn:
            ch = await conn.open_channel()
            # The publish and our channel.close leave in one write; the broker
            # closes the channel (404) before it reads our close.
            await ch.basic_publish(b"m", exchange=unique("missing"))
            await ch.close()
            with anyio.move_on_after(1):
                await conn.wait_closed()
            assert conn.is_open, conn.close_reason


async def test_a_refused_operation_raises_broker_error(amqp: AmqpCombo, rabbitmq_url: str) -> None:
    """A passive declare of a missing queue raises BrokerError(404) and closes the channel."""
    with anyio.fail_after(10):
        async with amqp.connect(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            with pytest.raises(BrokerError) as info:
                await channel.queue_declare(unique("missing"), passive=True)
            assert info.value.code == 404
            assert (await channel.wait_closed()).code == 404


async def test_exclusive_queue_of_another_connection_is_locked(
    amqp: AmqpCombo, rabbitmq_url: str
) -> None:
    """Using another connection's exclusive queue raises BrokerError(405 RESOURCE_LOCKED)."""
    with anyio.fail_after(10):
        async with amqp.connect(rabbitmq_url) as a, amqp.connect(rabbitmq_url) as b:
            queue = await (await a.open_channel()).queue_declare("", exclusive=True)
            with pytest.raises(BrokerError) as info:
                await (await b.open_channel()).queue_declare(queue.name, passive=True)
            assert info.value.code == 405


async def test_deleting_the_queue_cancels_the_consumer(amqp: AmqpCombo, rabbitmq: Broker) -> None:
    """rabbitmqctl delete_queue makes the broker send basic.cancel: on_cancel gets the tag."""
    queue = unique("cancel")
    cancelled: list[tuple[str, CloseReason]] = []
    called = anyio.Event()

    def on_cancel(tag: str, reason: CloseReason) -> None:
        cancelled.append((tag, reason))
        called.set()

    with anyio.fail_after(30):
        async with amqp.connect(rabbitmq.url) as conn:
            channel = await conn.open_channel()
            await channel.queue_declare(queue, auto_delete=False)
            tag = await channel.basic_consume(queue, lambda _: None, on_cancel=on_cancel)
            await anyio.to_thread.run_sync(rabbitmq.ctl, "delete_queue", queue)
            await called.wait()
            [(cancelled_tag, reason)] = cancelled
            assert cancelled_tag == tag
            assert reason.by == "broker"
            assert channel.is_open  # a consumer cancel does not close the channel
            await channel.queue_declare("", exclusive=True)


async def test_forced_connection_close_reports_320(amqp: AmqpCombo, rabbitmq: Broker) -> None:
    """rabbitmqctl close_connection: the connection closes with 320 by the broker, its channels
    by the connection, and operations raise ConnectionLost(code=320)."""
    name = unique("forced")
    with anyio.fail_after(30):
        async with amqp.connect(rabbitmq.url, name=name) as conn:
            channel = await conn.open_channel()
            await anyio.to_thread.run_sync(rabbitmq.close_connection, name, "test says bye")
            reason = await conn.wait_closed()
            assert (reason.code, reason.by) == (320, "broker")
            assert "test says bye" in reason.text
            channel_reason = await channel.wait_closed()
            assert (channel_reason.code, channel_reason.by) == (320, "connection")
            with pytest.raises(ConnectionLost) as info:
                await channel.basic_publish(b"x", routing_key="nowhere")
            assert info.value.code == 320
            with pytest.raises(ConnectionLost):
                await conn.open_channel()


async def test_unroutable_mandatory_message_is_returned(amqp: AmqpCombo, rabbitmq_url: str) -> None:
    """A mandatory message that matches no queue reaches on_return with 312 NO_ROUTE."""
    send, receive = anyio.create_memory_object_stream[ReturnedMessage](10)
    key = unique("nobody")
    with send, receive, anyio.fail_after(10):
        async with amqp.connect(rabbitmq_url) as conn:
            channel = await conn.open_channel(on_return=send.send_nowait)
            props = Properties(correlation_id="c-1", headers={"h": "v"})
            await channel.basic_publish(b"lost", routing_key=key, properties=props, mandatory=True)
            returned = await receive.receive()
    assert (returned.reply_code, returned.reply_text) == (312, "NO_ROUTE")
    assert (returned.body, returned.routing_key, returned.exchange) == (b"lost", key, "")
    assert returned.properties == props


async def test_confirmed_publish_reports_the_return_first(
    amqp: AmqpCombo, rabbitmq_url: str
) -> None:
    """With confirms, publish returns after the broker's ack, and a return arrives before it."""
    returns: list[ReturnedMessage] = []
    with anyio.fail_after(10):
        async with amqp.connect(rabbitmq_url) as conn:
            channel = await conn.open_channel(on_return=returns.append, publisher_confirms=True)
            queue = await channel.queue_declare("", exclusive=True)
            for i in range(20):
                await channel.basic_publish(str(i).encode(), routing_key=queue.name)
            assert (await channel.queue_declare(queue.name, passive=True)).message_count == 20
            await channel.basic_publish(b"r", routing_key=unique("nobody"), mandatory=True)
            assert [r.body for r in returns] == [b"r"]


async def test_confirmed_publish_refused_by_the_broker_is_broker_error(
    amqp: AmqpCombo, rabbitmq_url: str
) -> None:
    """A confirmed publish to a missing exchange raises BrokerError(404), not a hang."""
    with anyio.fail_after(10):
        async with amqp.connect(rabbitmq_url) as conn:
            channel = await conn.open_channel(publisher_confirms=True)
            with pytest.raises(BrokerError) as info:
                await channel.basic_publish(b"x", exchange=unique("missing"), routing_key="k")
            assert info.value.code == 404
            assert channel.close_reason is not None
            assert channel.close_reason.code == 404


async def test_a_nacked_publish_raises_broker_error(amqp: AmqpCombo, rabbitmq_url: str) -> None:
    """A publish the broker nacks (a full reject-publish queue) raises BrokerError; the channel
    stays open."""
    with anyio.fail_after(10):
        async with amqp.connect(rabbitmq_url) as conn:
            channel = await conn.open_channel(publisher_confirms=True)
            args = {"x-max-length": 1, "x-overflow": "reject-publish"}
            queue = await channel.queue_declare("", exclusive=True, arguments=args)
            await channel.basic_publish(b"fits", routing_key=queue.name)
            with pytest.raises(BrokerError, match="nack"):
                await channel.basic_publish(b"overflows", routing_key=queue.name)
            assert channel.is_open
            assert (await channel.queue_declare(queue.name, passive=True)).message_count == 1


async def test_all_basic_properties_round_trip(amqp: AmqpCombo, rabbitmq_url: str) -> None:
    """All 13 basic properties arrive as sent (timestamps in whole seconds, UTC)."""
    props = Properties(
        content_type="application/json",
        content_encoding="utf-8",
        headers={"x-int": 7, "x-str": "s", "x-nested": {"a": [1, "b"]}, "x-bool": True},
        delivery_mode=2,
        priority=5,
        correlation_id="corr",
        reply_to="reply.queue",
        expiration="60000",
        message_id="mid",
        timestamp=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
        type="kind",
        user_id="guest",
        app_id="hare-test",
    )
    with anyio.fail_after(10):
        async with amqp.connect(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            queue = await channel.queue_declare("", exclusive=True)
            _, deliveries = await consume_into(channel, queue.name)
            await channel.basic_publish(b"{}", routing_key=queue.name, properties=props)
            delivery = await deliveries.get()
            await channel.basic_ack(delivery.delivery_tag)
    assert delivery.properties == props
    assert type(delivery.properties.headers) is dict


async def test_ack_nack_reject_and_qos(amqp: AmqpCombo, rabbitmq_url: str) -> None:
    """Prefetch limits unacked deliveries; nack/reject with requeue redeliver, without drop."""
    with anyio.fail_after(10):
        async with amqp.connect(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            queue = await channel.queue_declare("", exclusive=True)
            await channel.basic_qos(1)
            for body in (b"a", b"b"):
                await channel.basic_publish(body, routing_key=queue.name)
            _, deliveries = await consume_into(channel, queue.name)
            first = await deliveries.get()
            with anyio.move_on_after(0.3):
                await deliveries.get()
                pytest.fail("prefetch 1 let a second unacked delivery through")
            await channel.basic_nack(first.delivery_tag, requeue=True)
            again = await deliveries.get()
            assert (again.body, again.redelivered) == (first.body, True)
            await channel.basic_reject(again.delivery_tag, requeue=False)
            second = await deliveries.get()
            await channel.basic_ack(second.delivery_tag)
            assert {first.body, second.body} == {b"a", b"b"}
            assert await channel.queue_purge(queue.name) == 0


async def test_a_failing_callback_does_not_stop_the_channel(
    amqp: AmqpCombo, rabbitmq_url: str
) -> None:
    """An on_delivery that raises is logged; later deliveries still arrive, in order."""
    seen: list[bytes] = []
    done = anyio.Event()

    def on_delivery(delivery: Delivery) -> None:
        seen.append(delivery.body)
        if delivery.body == b"boom":
            raise RuntimeError("callback failed")
        if len(seen) == 3:
            done.set()

    with structlog.testing.capture_logs() as events, anyio.fail_after(10):
        async with amqp.connect(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            queue = await channel.queue_declare("", exclusive=True)
            await channel.basic_consume(queue.name, on_delivery, no_ack=True)
            for body in (b"a", b"boom", b"c"):
                await channel.basic_publish(body, routing_key=queue.name)
            await done.wait()
            assert channel.is_open
    assert seen == [b"a", b"boom", b"c"]
    assert any(
        e["event"] == "amqp.callback_failed" and e["callback"] == "on_delivery" for e in events
    )


async def test_cancelled_consumer_gets_nothing_more(amqp: AmqpCombo, rabbitmq_url: str) -> None:
    """After basic_cancel no delivery reaches the callback and on_cancel is not called."""
    cancels: list[str] = []
    with anyio.fail_after(10):
        send, receive = anyio.create_memory_object_stream[Delivery](10)
        with send, receive:
            async with amqp.connect(rabbitmq_url) as conn:
                channel = await conn.open_channel()
                queue = await channel.queue_declare("", exclusive=True)
                tag = await channel.basic_consume(
                    queue.name,
                    send.send_nowait,
                    no_ack=True,
                    on_cancel=lambda t, _: cancels.append(t),
                )
                await channel.basic_cancel(tag)
                await channel.basic_publish(b"x", routing_key=queue.name)
                assert await channel.queue_declare(queue.name, passive=True) is not None
                await anyio.sleep(0.2)
                assert receive.statistics().current_buffer_used == 0
                assert cancels == []
                assert await channel.queue_delete(queue.name) == 1


async def test_exchange_bindings_route_by_type(amqp: AmqpCombo, rabbitmq_url: str) -> None:
    """topic/fanout/headers bindings route as the broker defines; unbind stops routing."""
    with anyio.fail_after(10):
        async with amqp.connect(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            topic = unique("topic")
            await channel.exchange_declare(topic, "topic")
            queue = await channel.queue_declare("", exclusive=True)
            await channel.queue_bind(queue.name, topic, "rpc.*.call")
            _, deliveries = await consume_into(channel, queue.name, no_ack=True)
            await channel.basic_publish(b"1", exchange=topic, routing_key="rpc.svc.call")
            assert (await deliveries.get()).routing_key == "rpc.svc.call"
            await channel.queue_unbind(queue.name, topic, "rpc.*.call")
            returns: list[ReturnedMessage] = []
            other = await conn.open_channel(on_return=returns.append, publisher_confirms=True)
            await other.basic_publish(
                b"2", exchange=topic, routing_key="rpc.svc.call", mandatory=True
            )
            assert len(returns) == 1
            headers = unique("headers")
            await channel.exchange_declare(headers, "headers")
            await channel.queue_bind(queue.name, headers, "", {"x-match": "all", "svc": "a"})
            await channel.basic_publish(
                b"3", exchange=headers, properties=Properties(headers={"svc": "a"})
            )
            assert (await deliveries.get()).body == b"3"
            for exchange in (topic, headers):
                await channel.exchange_delete(exchange)


async def test_stop_app_closes_connections_and_start_app_accepts_again(
    amqp: AmqpCombo, rabbitmq: Broker
) -> None:
    """A broker shutdown closes the connection by the broker (320); after start_app we reconnect."""
    with anyio.fail_after(60):
        async with amqp.connect(rabbitmq.url) as conn:
            await anyio.to_thread.run_sync(rabbitmq.stop_app)
            try:
                reason = await conn.wait_closed()
            finally:
                await anyio.to_thread.run_sync(rabbitmq.start_app)
            assert reason.by in ("broker", "network")
            if reason.by == "broker":
                assert reason.code == 320
        async with amqp.connect(rabbitmq.url) as again:
            assert again.is_open


async def test_operation_errors_are_hare_errors(amqp: AmqpCombo, rabbitmq_url: str) -> None:
    """Bad arguments raise hare_py errors, never aiormq or pamqp ones."""
    with anyio.fail_after(10):
        async with amqp.connect(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            with pytest.raises(HareError):
                await channel.basic_publish(b"x", properties=Properties(delivery_mode=3))
            with pytest.raises(HareError):
                await channel.basic_publish(b"x", routing_key="k" * 256)
            assert channel.is_open


# -- TLS ----------------------------------------------------------------------


def tls_broker(rabbitmq: Broker) -> tuple[str, str]:
    if not rabbitmq.tls_url or not rabbitmq.ca_file:
        unavailable(
            "the broker has no TLS listener (openssl missing, or HARE_TEST_AMQPS_URL unset)"
        )
    return rabbitmq.tls_url, rabbitmq.ca_file


async def test_amqps_verifies_the_broker_certificate(amqp: AmqpCombo, rabbitmq: Broker) -> None:
    """amqps:// connects when the CA is trusted and fails with ConnectFailed when it is not."""
    url, ca_file = tls_broker(rabbitmq)
    with anyio.fail_after(10):
        async with amqp.connect(url, tls=TLSOptions(ca_file=ca_file)) as conn:
            channel = await conn.open_channel()
            await channel.queue_declare("", exclusive=True)
        with pytest.raises(ConnectFailed, match=r"(?i)certificate"):
            async with amqp.connect(url):  # system CAs only
                pass
        async with amqp.connect(url, tls=TLSOptions(verify=False)):
            pass


async def test_amqps_checks_the_host_name(amqp: AmqpCombo, rabbitmq: Broker) -> None:
    """A certificate for another host name is refused unless server_hostname names it."""
    url, ca_file = tls_broker(rabbitmq)
    by_ip = url.replace("@localhost:", "@127.0.0.1:")
    with anyio.fail_after(10):
        async with amqp.connect(by_ip, tls=TLSOptions(ca_file=ca_file)):
            pass  # the certificate lists IP 127.0.0.1 too
        with pytest.raises(ConnectFailed):
            async with amqp.connect(
                url, tls=TLSOptions(ca_file=ca_file, server_hostname="not-the-broker")
            ):
                pass


async def test_amqps_presents_the_client_certificate(amqp: AmqpCombo, rabbitmq: Broker) -> None:
    """cert_file/key_file are presented to the broker, which sees the client's subject."""
    url, ca_file = tls_broker(rabbitmq)
    if not rabbitmq.client_cert or not rabbitmq.client_key:
        unavailable("no client certificate for this broker")
    name = unique("client-cert")
    tls = TLSOptions(ca_file=ca_file, cert_file=rabbitmq.client_cert, key_file=rabbitmq.client_key)
    with anyio.fail_after(30):
        async with amqp.connect(url, tls=tls, name=name):
            out = await anyio.to_thread.run_sync(
                rabbitmq.ctl, "list_connections", "client_properties", "peer_cert_subject"
            )
    [line] = [line for line in out.splitlines() if name in line]
    assert "hare-test-client" in line


async def test_tls_files_that_do_not_load_are_a_config_error(
    amqp: AmqpCombo, rabbitmq: Broker
) -> None:
    """A missing CA file is a ConfigError; TLS options do not apply to amqp:// URLs."""
    with anyio.fail_after(5):
        with pytest.raises(ConfigError, match="TLS"):
            async with amqp.connect(
                rabbitmq.url.replace("amqp://", "amqps://"),
                tls=TLSOptions(ca_file="/nonexistent/ca.pem"),
            ):
                pass
        async with amqp.connect(rabbitmq.url, tls=TLSOptions(ca_file="/nonexistent/ca.pem")):
            pass


# -- Network failures, through a proxy ------------------------------------------


def backend_tasks() -> list[str]:
    """Running tasks of hare_py's or aiormq's code (asyncio or trio).

    anyio names a task group's tasks after their function (``hare_py.transport...``);
    aiormq's asyncio tasks show their code's file.
    """
    found = []
    for task in anyio.get_running_tasks():
        code = getattr(task.coro, "cr_code", None)
        where = f"{task.name} {code.co_filename if code is not None else ''}"
        if (task.name or "").startswith("hare_py.") or "/aiormq/" in where:
            found.append(where)
    return found


@pytest.mark.parametrize("fault", ["reset", "half_close"])
async def test_a_cut_socket_closes_the_connection_by_network(
    amqp: AmqpCombo, rabbitmq_url: str, fault: str
) -> None:
    """A dropped TCP connection (RST, or FIN from the peer) gives CloseReason(by network);
    channels follow by connection; no task of the connection outlives its block."""
    with anyio.fail_after(10):
        async with fault_proxy(rabbitmq_url) as proxy:
            async with amqp.connect(proxy.url(rabbitmq_url)) as conn:
                channel = await conn.open_channel()
                assert backend_tasks(), "no task of a live connection found: the filter is off"
                cut = await proxy.reset() if fault == "reset" else proxy.half_close()
                assert cut == 1
                reason = await conn.wait_closed()
                assert reason.by == "network"
                channel_reason = await channel.wait_closed()
                assert channel_reason.by == "connection"
                with pytest.raises(ConnectionLost):
                    await channel.queue_declare("", exclusive=True)
            assert backend_tasks() == []


async def test_missed_heartbeats_close_the_connection_and_fail_waiting_calls(
    amqp: AmqpCombo, rabbitmq_url: str
) -> None:
    """A silent broker is detected by heartbeats (by network); a confirm waiting on it fails
    with ConnectionLost, not a cancellation."""
    failures: list[BaseException] = []

    async def publish(channel: Channel) -> None:
        try:
            await channel.basic_publish(b"x", routing_key=unique("nobody"))
        except ConnectionLost as exc:
            failures.append(exc)

    with anyio.fail_after(20):
        async with (
            fault_proxy(rabbitmq_url) as proxy,
            amqp.connect(proxy.url(rabbitmq_url), heartbeat=1) as conn,
        ):
            assert conn.heartbeat == 1
            channel = await conn.open_channel(publisher_confirms=True)
            proxy.stall()
            stalled_at = anyio.current_time()
            async with anyio.create_task_group() as tg:
                tg.start_soon(publish, channel)
                reason = await conn.wait_closed()
            # Two silent intervals mean a dead peer (AMQP 0-9-1, 4.2.7), checked often.
            assert anyio.current_time() - stalled_at < 2 * 1 + 1.5
            assert reason.by == "network"
            assert "heartbeat" in reason.text
            assert len(failures) == 1


async def test_a_secret_password_never_shows_in_a_connection_life(
    amqp: AmqpCombo, rabbitmq: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """Connect, work, get closed by the broker: no repr, error or log holds the password."""
    user, password = unique("user"), "s3cret-" + secrets.token_hex(8)
    try:
        await anyio.to_thread.run_sync(rabbitmq.ctl, "add_user", user, password)
    except RabbitMQError as exc:
        unavailable(f"cannot add a user: {exc}")
    name = unique("secret")
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    try:
        await anyio.to_thread.run_sync(rabbitmq.ctl, "set_permissions", user, ".*", ".*", ".*")
        url = parse_url(rabbitmq.url)
        secret_url = url.with_secret().replace(f"{url.username}:{url.password}@", "")
        secret_url = secret_url.replace("://", f"://{user}:{password}@")
        with structlog.testing.capture_logs() as events, anyio.fail_after(30):
            async with amqp.connect(secret_url, name=name) as conn:
                channel = await conn.open_channel()
                seen += [repr(conn), str(conn), repr(channel)]
                await anyio.to_thread.run_sync(rabbitmq.close_connection, name)
                seen.append(str(await conn.wait_closed()))
                with pytest.raises(ConnectionLost) as info:
                    await channel.queue_declare("", exclusive=True)
                seen += [str(e) + repr(e) for e in _chain(info.value)]
        seen += [repr(events), caplog.text]
    finally:
        await anyio.to_thread.run_sync(rabbitmq.ctl, "delete_user", user)
    assert all(password not in text for text in seen)


# -- Backend choice and URL options ---------------------------------------------


async def connect_once(url: str) -> type:
    parsed = parse_url(url)
    async with backend_for(parsed).connect(parsed, ConnectOptions()) as conn:
        return type(conn)


@pytest.mark.parametrize(
    ("anyio_backend", "query", "expected"),
    [
        ("asyncio", "", AmqpConnection),
        ("asyncio", "?backend=aiormq", AiormqConnection),
        ("asyncio", "?backend=anyio", AmqpConnection),
        ("trio", "", AmqpConnection),
        ("trio", "?backend=anyio", AmqpConnection),
    ],
)
async def test_backend_param_picks_the_backend(
    rabbitmq_url: str, query: str, expected: type
) -> None:
    """Without backend= both loops get the anyio backend; backend=aiormq picks aiormq."""
    with anyio.fail_after(10):
        assert await connect_once(rabbitmq_url + query) is expected


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("query", ["?backend=bogus", "?backend=pika", "?heartbeat=soon"])
async def test_a_bad_backend_param_is_a_config_error(rabbitmq_url: str, query: str) -> None:
    """An unknown backend= (or a bad value of another parameter) is a ConfigError, on both
    loops, and its text holds no password."""
    url = parse_url(rabbitmq_url)
    password = "s3cret-" + secrets.token_hex(8)
    secret_url = url.with_secret().replace(f":{url.password}@", f":{password}@")
    with anyio.fail_after(10), pytest.raises(ConfigError) as info:
        await connect_once(secret_url + query)
    assert all(password not in str(e) + repr(e) for e in _chain(info.value))


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_aiormq_on_trio_is_a_config_error(rabbitmq_url: str) -> None:
    """backend=aiormq runs on asyncio only: on trio it is a ConfigError, not a crash."""
    with anyio.fail_after(10), pytest.raises(ConfigError, match="asyncio"):
        await connect_once(rabbitmq_url + "?backend=aiormq")


async def test_an_unknown_auth_mechanism_is_a_config_error(
    amqp: AmqpCombo, rabbitmq_url: str
) -> None:
    """auth= must name a mechanism the backend knows; anything else is a ConfigError."""
    with anyio.fail_after(10), pytest.raises(ConfigError, match="auth"):
        async with amqp.connect(rabbitmq_url + "?auth=bogus"):
            pass


@pytest.mark.parametrize("amqp", [pytest.param(COMBOS["aiormq-asyncio"])], indirect=True)
async def test_amqplain_on_aiormq_is_a_config_error_naming_the_way_out(
    amqp: AmqpCombo, rabbitmq_url: str
) -> None:
    """aiormq cannot log in with AMQPLAIN: say so before connecting, and name the way out."""
    with anyio.fail_after(10), pytest.raises(ConfigError, match="leave backend=aiormq out"):
        async with amqp.connect(rabbitmq_url + "?auth=amqplain"):
            pass


# -- Flow control and big messages ----------------------------------------------


async def connection_state(rabbitmq: Broker, name: str) -> str:
    out = await anyio.to_thread.run_sync(
        rabbitmq.ctl, "list_connections", "client_properties", "state", "--silent"
    )
    [line] = [line for line in out.splitlines() if name in line]
    return line.split()[-1]


async def test_a_blocked_connection_survives_until_unblocked(
    amqp: AmqpCombo, rabbitmq: Broker
) -> None:
    """A memory alarm blocks a publishing connection (connection.blocked); once it clears
    (connection.unblocked) publishing goes on, on the same connection."""
    name = unique("blocked")
    try:
        await anyio.to_thread.run_sync(rabbitmq.ctl, "status")
    except RabbitMQError as exc:
        unavailable(f"no rabbitmqctl: {exc}")
    with structlog.testing.capture_logs() as events, anyio.fail_after(60):
        async with amqp.connect(rabbitmq.url, name=name) as conn:
            channel = await conn.open_channel(publisher_confirms=True)
            queue = await channel.queue_declare("", exclusive=True)
            await channel.basic_publish(b"before", routing_key=queue.name)
            try:
                await anyio.to_thread.run_sync(
                    rabbitmq.ctl, "set_vm_memory_high_watermark", "0.000001"
                )
                async with anyio.create_task_group() as tg:
                    # The broker blocks a connection when it publishes during the alarm.
                    tg.start_soon(partial(channel.basic_publish, b"during", routing_key=queue.name))
                    while await connection_state(rabbitmq, name) != "blocked":
                        await anyio.sleep(0.2)
                    if isinstance(conn, AmqpConnection):
                        while not conn.blocked:
                            await anyio.sleep(0.05)
                    assert conn.is_open
                    await anyio.to_thread.run_sync(
                        rabbitmq.ctl, "set_vm_memory_high_watermark", "0.4"
                    )
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(
                        rabbitmq.ctl, "set_vm_memory_high_watermark", "0.4"
                    )
            await channel.basic_publish(b"after", routing_key=queue.name)
            assert (await channel.queue_declare(queue.name, passive=True)).message_count == 3
            if isinstance(conn, AmqpConnection):
                while conn.blocked:
                    await anyio.sleep(0.05)
            assert conn.is_open
    if amqp.expected is AmqpConnection:
        logged = [e["event"] for e in events]
        assert "amqp.blocked" in logged
        assert "amqp.unblocked" in logged


FRAME_MAX = 131072  # RabbitMQ's default; a body frame carries at most FRAME_MAX - 8 bytes


@pytest.mark.parametrize("confirms", [False, True], ids=["no-confirms", "confirms"])
async def test_bodies_of_every_size_round_trip(
    amqp: AmqpCombo, rabbitmq_url: str, confirms: bool
) -> None:
    """Empty, one-frame, frame-boundary and 1 MiB bodies (many frames) arrive whole, in order,
    with their properties."""
    sizes = [0, 1, FRAME_MAX - 8, FRAME_MAX - 7, 2 * (FRAME_MAX - 8), 1024 * 1024 + 7]
    bodies = [secrets.token_bytes(size) for size in sizes]
    with anyio.fail_after(30):
        async with amqp.connect(rabbitmq_url) as conn:
            channel = await conn.open_channel(publisher_confirms=confirms)
            queue = await channel.queue_declare("", exclusive=True)
            _, deliveries = await consume_into(channel, queue.name, no_ack=True)
            for i, body in enumerate(bodies):
                props = Properties(correlation_id=str(i), headers={"size": len(body)})
                await channel.basic_publish(body, routing_key=queue.name, properties=props)
            got = [await deliveries.get() for _ in bodies]
    assert [len(d.body) for d in got] == sizes
    assert [d.body for d in got] == bodies
    assert [d.properties.correlation_id for d in got] == [str(i) for i in range(len(sizes))]
    assert [d.properties.headers for d in got] == [{"size": size} for size in sizes]


@pytest.mark.parametrize("amqp", ANYIO_ONLY, indirect=True)
async def test_body_of_frame_max_minus_8_and_empty_body_round_trip(
    amqp: AmqpCombo, rabbitmq_url: str
) -> None:
    """Bodies at the negotiated frame_max's boundaries, and an empty one, arrive whole."""
    got: list[bytes] = []
    with anyio.fail_after(30):
        async with amqp.connect(rabbitmq_url, heartbeat=0) as conn:
            assert isinstance(conn, AmqpConnection)
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


# -- Concurrency on one channel ---------------------------------------------------


async def test_concurrent_calls_on_one_channel_get_their_own_replies(
    amqp: AmqpCombo, rabbitmq_url: str
) -> None:
    """Many synchronous calls in flight on one channel each get the reply meant for them."""
    names = [unique(f"q{i}") for i in range(30)]
    results: dict[str, str] = {}
    with anyio.fail_after(20):
        async with amqp.connect(rabbitmq_url) as conn:
            channel = await conn.open_channel()

            async def declare(name: str) -> None:
                results[name] = (await channel.queue_declare(name, exclusive=True)).name

            async with anyio.create_task_group() as tg:
                for name in names:
                    tg.start_soon(declare, name)
            assert results == {name: name for name in names}
            assert channel.is_open


async def test_a_cancelled_call_does_not_shift_later_replies(
    amqp: AmqpCombo, rabbitmq_url: str
) -> None:
    """A call given up while its reply is on the way leaves the channel usable: the next call
    gets its own reply, not the abandoned one's."""
    abandoned, wanted = unique("abandoned"), unique("wanted")
    with anyio.fail_after(20):
        async with amqp.connect(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(channel.queue_declare, abandoned, exclusive=True))
                await anyio.lowlevel.checkpoint()  # the declare is out; its reply is not in
                tg.cancel_scope.cancel()
            # aiormq may close the channel to stay in step, or not have sent the declare yet;
            # the anyio backend sent it at once, keeps the channel and swallows the late reply.
            if isinstance(conn, AmqpConnection):
                assert channel.is_open
            elif not channel.is_open:
                channel = await conn.open_channel()
            info = await channel.queue_declare(wanted, exclusive=True)
            assert info.name == wanted
            assert (await channel.queue_declare(wanted, passive=True)).name == wanted
            if isinstance(conn, AmqpConnection):
                # The abandoned declare did reach the broker: its reply was the late one.
                assert (await channel.queue_declare(abandoned, passive=True)).name == abandoned


async def test_names_amqp_refuses_are_config_errors(amqp: AmqpCombo, rabbitmq_url: str) -> None:
    """A name pamqp will not put on the wire is a ConfigError, not a pamqp ValueError."""
    with anyio.fail_after(10):
        async with amqp.connect(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            with pytest.raises(ConfigError):
                await channel.exchange_declare("bad*name")
            with pytest.raises(ConfigError):
                await channel.queue_declare("q" * 300)
