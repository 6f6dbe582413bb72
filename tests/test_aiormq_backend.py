"""The aiormq backend against a real RabbitMQ broker (the ``rabbitmq`` fixture)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
import structlog
from rabbitmq import ExternalRabbitMQ, RabbitMQError, RabbitMQNode

from hare_py.errors import BrokerError, ConfigError, ConnectFailed, ConnectionLost, HareError
from hare_py.transport import BrokerURL, parse_url
from hare_py.transport.aiormq_backend import AiormqBackend, AiormqConnection
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

# aiormq runs on asyncio only; the trio AMQP backend is a separate issue.
pytestmark = [
    pytest.mark.rabbitmq,
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),
]


def unique(prefix: str) -> str:
    return f"hare-test.{prefix}.{secrets.token_hex(4)}"


@asynccontextmanager
async def connected(url: str, **options: Any) -> AsyncIterator[AiormqConnection]:
    async with AiormqBackend().connect(parse_url(url), ConnectOptions(**options)) as conn:
        assert isinstance(conn, AiormqConnection)
        yield conn


async def consume_into(
    channel: Channel, queue: str, **kwargs: Any
) -> tuple[str, anyio.abc.ObjectReceiveStream[Delivery]]:
    send, receive = anyio.create_memory_object_stream[Delivery](100)
    tag = await channel.basic_consume(queue, send.send_nowait, **kwargs)
    return tag, receive


async def test_connect_publish_consume_close(rabbitmq_url: str) -> None:
    """A message published to a queue reaches its consumer; close() is a normal client close."""
    with anyio.fail_after(10):
        async with connected(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            queue = await channel.queue_declare("", exclusive=True)
            assert queue.name.startswith("amq.gen-")
            _, deliveries = await consume_into(channel, queue.name, no_ack=True)
            await channel.basic_publish(b"hello", routing_key=queue.name)
            delivery = await deliveries.receive()
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


async def test_connection_name_is_visible_to_the_broker(rabbitmq: Broker) -> None:
    """options.name arrives as the connection_name client property."""
    name = unique("named")
    with anyio.fail_after(30):
        async with connected(rabbitmq.url, name=name, client_properties={"team": "hare"}):
            rows = await anyio.to_thread.run_sync(rabbitmq.connections)
    [row] = [r for r in rows if r["client_properties"].get("connection_name") == name]
    assert row["client_properties"]["team"] == "hare"


async def test_heartbeat_is_negotiated_from_options_and_url(rabbitmq: Broker) -> None:
    """The broker uses the heartbeat from the options, or from the URL's heartbeat= over them."""
    from_options, from_url = unique("hb-options"), unique("hb-url")
    with anyio.fail_after(30):
        async with (
            connected(rabbitmq.url, name=from_options, heartbeat=7) as a,
            connected(rabbitmq.url + "?heartbeat=11", name=from_url, heartbeat=7) as b,
        ):
            assert (a.heartbeat, b.heartbeat) == (7, 11)
            rows = await anyio.to_thread.run_sync(rabbitmq.connections)
    timeouts = {r["client_properties"].get("connection_name"): r["timeout"] for r in rows}
    assert (timeouts[from_options], timeouts[from_url]) == (7, 11)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in seen:
        seen.append(link)
        link = link.__cause__ or link.__context__
    return seen


async def test_wrong_password_fails_without_leaking_it(
    rabbitmq_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused login raises ConnectFailed(403); its text, chain and logs hold no password."""
    password = "not-the-password-" + secrets.token_hex(8)
    url = parse_url(rabbitmq_url)
    bad = url.with_secret().replace(f":{url.password}@", f":{password}@")
    caplog.set_level(logging.DEBUG)
    with (
        structlog.testing.capture_logs() as events,
        anyio.fail_after(10),
        pytest.raises(ConnectFailed) as info,
    ):
        async with connected(bad):
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


async def test_an_unknown_vhost_is_connect_failed(rabbitmq_url: str) -> None:
    """Opening a virtual host the broker does not have raises ConnectFailed(530)."""
    with anyio.fail_after(10), pytest.raises(ConnectFailed) as info:
        async with connected(rabbitmq_url.rstrip("/") + "/" + unique("vhost")):
            pass
    assert info.value.code == 530


async def test_connect_to_a_closed_port_fails_fast() -> None:
    """Nothing listening: ConnectFailed at once, not after the connect timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with anyio.fail_after(5), pytest.raises(ConnectFailed) as info:
        async with connected(f"amqp://guest:guest@127.0.0.1:{port}/", connect_timeout=30):
            pass
    assert time.monotonic() - started < 2
    assert "refused" in str(info.value).lower()


async def test_connect_timeout_bounds_a_silent_peer() -> None:
    """A peer that accepts TCP but never speaks AMQP fails with ConnectFailed at the timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        started = time.monotonic()
        with anyio.fail_after(5), pytest.raises(ConnectFailed, match="in time"):
            async with connected(f"amqp://guest:guest@127.0.0.1:{port}/", connect_timeout=0.5):
                pass
        assert time.monotonic() - started < 3


async def test_publish_to_a_deleted_exchange_closes_the_channel_with_404(rabbitmq_url: str) -> None:
    """The broker's channel.close surfaces as CloseReason(404, by broker); later calls raise."""
    exchange = unique("gone")
    with anyio.fail_after(10):
        async with connected(rabbitmq_url) as conn:
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


async def test_a_refused_operation_raises_broker_error(rabbitmq_url: str) -> None:
    """A passive declare of a missing queue raises BrokerError(404) and closes the channel."""
    with anyio.fail_after(10):
        async with connected(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            with pytest.raises(BrokerError) as info:
                await channel.queue_declare(unique("missing"), passive=True)
            assert info.value.code == 404
            assert (await channel.wait_closed()).code == 404


async def test_exclusive_queue_of_another_connection_is_locked(rabbitmq_url: str) -> None:
    """Using another connection's exclusive queue raises BrokerError(405 RESOURCE_LOCKED)."""
    with anyio.fail_after(10):
        async with connected(rabbitmq_url) as a, connected(rabbitmq_url) as b:
            queue = await (await a.open_channel()).queue_declare("", exclusive=True)
            with pytest.raises(BrokerError) as info:
                await (await b.open_channel()).queue_declare(queue.name, passive=True)
            assert info.value.code == 405


async def test_deleting_the_queue_cancels_the_consumer(rabbitmq: Broker) -> None:
    """rabbitmqctl delete_queue makes the broker send basic.cancel: on_cancel gets the tag."""
    queue = unique("cancel")
    cancelled: list[tuple[str, CloseReason]] = []
    called = anyio.Event()

    def on_cancel(tag: str, reason: CloseReason) -> None:
        cancelled.append((tag, reason))
        called.set()

    with anyio.fail_after(30):
        async with connected(rabbitmq.url) as conn:
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


async def test_forced_connection_close_reports_320(rabbitmq: Broker) -> None:
    """rabbitmqctl close_connection: the connection closes with 320 by the broker, its channels
    by the connection, and operations raise ConnectionLost(code=320)."""
    name = unique("forced")
    with anyio.fail_after(30):
        async with connected(rabbitmq.url, name=name) as conn:
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


async def test_unroutable_mandatory_message_is_returned(rabbitmq_url: str) -> None:
    """A mandatory message that matches no queue reaches on_return with 312 NO_ROUTE."""
    send, receive = anyio.create_memory_object_stream[ReturnedMessage](10)
    key = unique("nobody")
    with anyio.fail_after(10):
        async with connected(rabbitmq_url) as conn:
            channel = await conn.open_channel(on_return=send.send_nowait)
            props = Properties(correlation_id="c-1", headers={"h": "v"})
            await channel.basic_publish(b"lost", routing_key=key, properties=props, mandatory=True)
            returned = await receive.receive()
    assert (returned.reply_code, returned.reply_text) == (312, "NO_ROUTE")
    assert (returned.body, returned.routing_key, returned.exchange) == (b"lost", key, "")
    assert returned.properties == props


async def test_confirmed_publish_reports_the_return_first(rabbitmq_url: str) -> None:
    """With confirms, publish returns after the broker's ack, and a return arrives before it."""
    returns: list[ReturnedMessage] = []
    with anyio.fail_after(10):
        async with connected(rabbitmq_url) as conn:
            channel = await conn.open_channel(on_return=returns.append, publisher_confirms=True)
            queue = await channel.queue_declare("", exclusive=True)
            for i in range(20):
                await channel.basic_publish(str(i).encode(), routing_key=queue.name)
            assert (await channel.queue_declare(queue.name, passive=True)).message_count == 20
            await channel.basic_publish(b"r", routing_key=unique("nobody"), mandatory=True)
            assert [r.body for r in returns] == [b"r"]


async def test_confirmed_publish_refused_by_the_broker_is_broker_error(rabbitmq_url: str) -> None:
    """A confirmed publish to a missing exchange raises BrokerError(404), not a hang."""
    with anyio.fail_after(10):
        async with connected(rabbitmq_url) as conn:
            channel = await conn.open_channel(publisher_confirms=True)
            with pytest.raises(BrokerError) as info:
                await channel.basic_publish(b"x", exchange=unique("missing"), routing_key="k")
            assert info.value.code == 404
            assert channel.close_reason is not None
            assert channel.close_reason.code == 404


async def test_a_nacked_publish_raises_broker_error(rabbitmq_url: str) -> None:
    """A publish the broker nacks (a full reject-publish queue) raises BrokerError; the channel
    stays open."""
    with anyio.fail_after(10):
        async with connected(rabbitmq_url) as conn:
            channel = await conn.open_channel(publisher_confirms=True)
            args = {"x-max-length": 1, "x-overflow": "reject-publish"}
            queue = await channel.queue_declare("", exclusive=True, arguments=args)
            await channel.basic_publish(b"fits", routing_key=queue.name)
            with pytest.raises(BrokerError, match="nack"):
                await channel.basic_publish(b"overflows", routing_key=queue.name)
            assert channel.is_open
            assert (await channel.queue_declare(queue.name, passive=True)).message_count == 1


async def test_all_basic_properties_round_trip(rabbitmq_url: str) -> None:
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
        async with connected(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            queue = await channel.queue_declare("", exclusive=True)
            _, deliveries = await consume_into(channel, queue.name)
            await channel.basic_publish(b"{}", routing_key=queue.name, properties=props)
            delivery = await deliveries.receive()
            await channel.basic_ack(delivery.delivery_tag)
    assert delivery.properties == props
    assert type(delivery.properties.headers) is dict


async def test_ack_nack_reject_and_qos(rabbitmq_url: str) -> None:
    """Prefetch limits unacked deliveries; nack/reject with requeue redeliver, without drop."""
    with anyio.fail_after(10):
        async with connected(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            queue = await channel.queue_declare("", exclusive=True)
            await channel.basic_qos(1)
            for body in (b"a", b"b"):
                await channel.basic_publish(body, routing_key=queue.name)
            _, deliveries = await consume_into(channel, queue.name)
            first = await deliveries.receive()
            with anyio.move_on_after(0.3):
                await deliveries.receive()
                pytest.fail("prefetch 1 let a second unacked delivery through")
            await channel.basic_nack(first.delivery_tag, requeue=True)
            again = await deliveries.receive()
            assert (again.body, again.redelivered) == (first.body, True)
            await channel.basic_reject(again.delivery_tag, requeue=False)
            second = await deliveries.receive()
            await channel.basic_ack(second.delivery_tag)
            assert {first.body, second.body} == {b"a", b"b"}
            assert await channel.queue_purge(queue.name) == 0


async def test_a_failing_callback_does_not_stop_the_channel(rabbitmq_url: str) -> None:
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
        async with connected(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            queue = await channel.queue_declare("", exclusive=True)
            await channel.basic_consume(queue.name, on_delivery, no_ack=True)
            for body in (b"a", b"boom", b"c"):
                await channel.basic_publish(body, routing_key=queue.name)
            await done.wait()
            assert channel.is_open
    assert seen == [b"a", b"boom", b"c"]
    assert any(e["event"] == "on_delivery callback failed" for e in events)


async def test_cancelled_consumer_gets_nothing_more(rabbitmq_url: str) -> None:
    """After basic_cancel no delivery reaches the callback and on_cancel is not called."""
    cancels: list[str] = []
    with anyio.fail_after(10):
        async with connected(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            queue = await channel.queue_declare("", exclusive=True)
            send, receive = anyio.create_memory_object_stream[Delivery](10)
            tag = await channel.basic_consume(
                queue.name, send.send_nowait, no_ack=True, on_cancel=lambda t, _: cancels.append(t)
            )
            await channel.basic_cancel(tag)
            await channel.basic_publish(b"x", routing_key=queue.name)
            assert await channel.queue_declare(queue.name, passive=True) is not None
            await anyio.sleep(0.2)
            assert receive.statistics().current_buffer_used == 0
            assert cancels == []
            assert await channel.queue_delete(queue.name) == 1


async def test_exchange_bindings_route_by_type(rabbitmq_url: str) -> None:
    """topic/fanout/headers bindings route as the broker defines; unbind stops routing."""
    with anyio.fail_after(10):
        async with connected(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            topic = unique("topic")
            await channel.exchange_declare(topic, "topic")
            queue = await channel.queue_declare("", exclusive=True)
            await channel.queue_bind(queue.name, topic, "rpc.*.call")
            _, deliveries = await consume_into(channel, queue.name, no_ack=True)
            await channel.basic_publish(b"1", exchange=topic, routing_key="rpc.svc.call")
            assert (await deliveries.receive()).routing_key == "rpc.svc.call"
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
            assert (await deliveries.receive()).body == b"3"
            for exchange in (topic, headers):
                await channel.exchange_delete(exchange)


async def test_stop_app_closes_connections_and_start_app_accepts_again(rabbitmq: Broker) -> None:
    """A broker shutdown closes the connection by the broker (320); after start_app we reconnect."""
    with anyio.fail_after(60):
        async with connected(rabbitmq.url) as conn:
            await anyio.to_thread.run_sync(rabbitmq.stop_app)
            try:
                reason = await conn.wait_closed()
            finally:
                await anyio.to_thread.run_sync(rabbitmq.start_app)
            assert reason.by in ("broker", "network")
            if reason.by == "broker":
                assert reason.code == 320
        async with connected(rabbitmq.url) as again:
            assert again.is_open


async def test_operation_errors_are_hare_errors(rabbitmq_url: str) -> None:
    """Bad arguments raise hare_py errors, never aiormq or pamqp ones."""
    with anyio.fail_after(10):
        async with connected(rabbitmq_url) as conn:
            channel = await conn.open_channel()
            with pytest.raises(HareError):
                await channel.basic_publish(b"x", properties=Properties(delivery_mode=3))
            with pytest.raises(HareError):
                await channel.basic_publish(b"x", routing_key="k" * 256)
            assert channel.is_open


# -- TLS ----------------------------------------------------------------------


def tls_broker(rabbitmq: Broker) -> tuple[str, str]:
    if not rabbitmq.tls_url or not rabbitmq.ca_file:
        pytest.skip(
            "the broker has no TLS listener (openssl missing, or HARE_TEST_AMQPS_URL unset)"
        )
    return rabbitmq.tls_url, rabbitmq.ca_file


async def test_amqps_verifies_the_broker_certificate(rabbitmq: Broker) -> None:
    """amqps:// connects when the CA is trusted and fails with ConnectFailed when it is not."""
    url, ca_file = tls_broker(rabbitmq)
    with anyio.fail_after(10):
        async with connected(url, tls=TLSOptions(ca_file=ca_file)) as conn:
            channel = await conn.open_channel()
            await channel.queue_declare("", exclusive=True)
        with pytest.raises(ConnectFailed, match=r"(?i)certificate"):
            async with connected(url):  # system CAs only
                pass
        async with connected(url, tls=TLSOptions(verify=False)):
            pass


async def test_amqps_checks_the_host_name(rabbitmq: Broker) -> None:
    """A certificate for another host name is refused unless server_hostname names it."""
    url, ca_file = tls_broker(rabbitmq)
    by_ip = url.replace("@localhost:", "@127.0.0.1:")
    with anyio.fail_after(10):
        async with connected(by_ip, tls=TLSOptions(ca_file=ca_file)):
            pass  # the certificate lists IP 127.0.0.1 too
        with pytest.raises(ConnectFailed):
            async with connected(
                url, tls=TLSOptions(ca_file=ca_file, server_hostname="not-the-broker")
            ):
                pass


async def test_amqps_presents_the_client_certificate(rabbitmq: Broker) -> None:
    """cert_file/key_file are presented to the broker, which sees the client's subject."""
    url, ca_file = tls_broker(rabbitmq)
    if not rabbitmq.client_cert or not rabbitmq.client_key:
        pytest.skip("no client certificate for this broker")
    name = unique("client-cert")
    tls = TLSOptions(ca_file=ca_file, cert_file=rabbitmq.client_cert, key_file=rabbitmq.client_key)
    with anyio.fail_after(30):
        async with connected(url, tls=tls, name=name):
            out = await anyio.to_thread.run_sync(
                rabbitmq.ctl, "list_connections", "client_properties", "peer_cert_subject"
            )
    [line] = [line for line in out.splitlines() if name in line]
    assert "hare-test-client" in line


async def test_tls_files_that_do_not_load_are_a_config_error(rabbitmq: Broker) -> None:
    """A missing CA file is a ConfigError; TLS options do not apply to amqp:// URLs."""
    with anyio.fail_after(5):
        with pytest.raises(ConfigError, match="TLS"):
            async with connected(
                rabbitmq.url.replace("amqp://", "amqps://"),
                tls=TLSOptions(ca_file="/nonexistent/ca.pem"),
            ):
                pass
        async with connected(rabbitmq.url, tls=TLSOptions(ca_file="/nonexistent/ca.pem")):
            pass


# -- Network failures, through a proxy ------------------------------------------


def backend_tasks() -> list[asyncio.Task[Any]]:
    """Tasks running code of aiormq or hare_py."""
    return [t for t in asyncio.all_tasks() if "/aiormq/" in repr(t) or "/hare_py/" in repr(t)]


class Proxy:
    """A TCP proxy in front of the broker that can stall or cut every connection."""

    def __init__(self, target: BrokerURL) -> None:
        self.target = target
        self.port = 0
        self._flowing = anyio.Event()
        self._flowing.set()
        self._scope = anyio.CancelScope()

    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def stall(self) -> None:
        """Hold all traffic, sockets open: as a dead peer behind a live network looks."""
        self._flowing = anyio.Event()

    def cut(self) -> None:
        """Close every proxied connection at once."""
        self._scope.cancel()

    async def _pump(self, source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream) -> None:
        async for chunk in source:
            await self._flowing.wait()
            await sink.send(chunk)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        with self._scope:
            async with (
                client,
                await anyio.connect_tcp(self.target.host, self.target.port) as upstream,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(self._pump, client, upstream)
                tg.start_soon(self._pump, upstream, client)

    @classmethod
    @asynccontextmanager
    async def running(cls, target: str) -> AsyncIterator[Proxy]:
        proxy = cls(parse_url(target))
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        proxy.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, proxy._handle)
            yield proxy
            tg.cancel_scope.cancel()


async def test_a_cut_socket_closes_the_connection_by_network(rabbitmq_url: str) -> None:
    """A dropped TCP connection gives CloseReason(by network); channels follow by connection;
    no task of the connection outlives its block."""
    with anyio.fail_after(10):
        async with Proxy.running(rabbitmq_url) as proxy:
            async with connected(proxy.url()) as conn:
                channel = await conn.open_channel()
                proxy.cut()
                reason = await conn.wait_closed()
                assert reason.by == "network"
                channel_reason = await channel.wait_closed()
                assert channel_reason.by == "connection"
                with pytest.raises(ConnectionLost):
                    await channel.queue_declare("", exclusive=True)
            assert backend_tasks() == []


async def test_missed_heartbeats_close_the_connection_and_fail_waiting_calls(
    rabbitmq_url: str,
) -> None:
    """A silent broker is detected by heartbeats (by network); a confirm waiting on it fails
    with ConnectionLost, not CancelledError."""
    failures: list[BaseException] = []

    async def publish(channel: Channel) -> None:
        try:
            await channel.basic_publish(b"x", routing_key=unique("nobody"))
        except ConnectionLost as exc:
            failures.append(exc)

    with anyio.fail_after(20):
        async with (
            Proxy.running(rabbitmq_url) as proxy,
            connected(proxy.url(), heartbeat=1) as conn,
        ):
            channel = await conn.open_channel(publisher_confirms=True)
            proxy.stall()
            stalled_at = anyio.current_time()
            async with anyio.create_task_group() as tg:
                tg.start_soon(publish, channel)
                reason = await conn.wait_closed()
            # Two silent intervals mean a dead peer (AMQP 0-9-1), checked each second.
            assert anyio.current_time() - stalled_at < 2 * 1 + 1.5
            assert reason.by == "network"
            assert "heartbeat" in reason.text
            assert len(failures) == 1


async def test_a_secret_password_never_shows_in_a_connection_life(
    rabbitmq: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """Connect, work, get closed by the broker: no repr, error or log holds the password."""
    user, password = unique("user"), "s3cret-" + secrets.token_hex(8)
    try:
        await anyio.to_thread.run_sync(rabbitmq.ctl, "add_user", user, password)
    except RabbitMQError as exc:
        pytest.skip(f"cannot add a user: {exc}")
    name = unique("secret")
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    try:
        await anyio.to_thread.run_sync(rabbitmq.ctl, "set_permissions", user, ".*", ".*", ".*")
        url = parse_url(rabbitmq.url)
        secret_url = url.with_secret().replace(f"{url.username}:{url.password}@", "")
        secret_url = secret_url.replace("://", f"://{user}:{password}@")
        with structlog.testing.capture_logs() as events, anyio.fail_after(30):
            async with connected(secret_url, name=name) as conn:
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
