"""RPCClient and RPCServer against every broker kind (the sandbox and a real RabbitMQ)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from hare_py import (
    Backoff,
    BrokerError,
    Caller,
    ConnectedMeta,
    ConnectFailed,
    Connection,
    ConnectionLost,
    NoReply,
    RemoteError,
    Reply,
    Request,
    RequestTimeout,
    RPCClient,
    RPCServer,
    Unroutable,
)
from hare_py.testing import break_channel
from hare_py.transport import backend_for, parse_url
from hare_py.transport.base import ConnectOptions, Properties

from .conftest import Kind, Target

pytestmark = pytest.mark.anyio

FAST = Backoff(initial=0.01, maximum=0.2)


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


class Echo(RPCServer[set[bytes]]):
    """Echoes; b'never' is never answered; b'second*' only the second time; b'boom' raises."""

    async def init(self, arg: Any) -> set[bytes]:
        return set()

    async def handle_request(self, request: Request, caller: Caller, seen: set[bytes]) -> Any:
        if request.payload == b"boom":
            raise KeyError("no such thing")
        if request.payload == b"never":
            return NoReply(seen)
        if request.payload.startswith(b"second") and request.payload not in seen:
            return NoReply(seen | {request.payload})
        return Reply(request.payload, seen)


class Watching(RPCClient[list[ConnectedMeta]]):
    """Remembers every channel open and counts inits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inits = 0
        self.metas: list[ConnectedMeta] = []

    async def init(self, arg: Any) -> list[ConnectedMeta]:
        self.inits += 1
        return self.metas

    async def handle_connected(self, meta: ConnectedMeta, state: list[ConnectedMeta]) -> Any:
        state.append(meta)
        return NoReply(state)


@asynccontextmanager
async def serving(conn: Connection, **options: Any) -> AsyncIterator[Echo]:
    """An Echo server that is consuming its queue by the time the block starts."""
    async with Echo.start(conn, **options) as server:
        await wait_for(lambda: server.connected)
        yield server


async def wait_for(predicate: Any, seconds: float = 10.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.01)


async def test_round_trip_on_default_and_named_exchanges(target: Target) -> None:
    """Requests reach servers through the default exchange and a named topic exchange."""
    queue, exchange = unique("q"), unique("x")
    async with (
        Connection(target.url) as conn,
        serving(conn, queue=queue, auto_delete=True),
        serving(
            conn,
            queue=queue + ".t",
            exchange=exchange,
            exchange_type="topic",
            routing_keys=["svc.#"],
            auto_delete=True,
        ),
        RPCClient.start(conn) as direct,
        RPCClient.start(conn, exchange=exchange, exchange_type="topic") as topic,
    ):
        with anyio.fail_after(10):
            assert await direct.request(b"a", queue) == b"a"
            assert await topic.request(b"b", "svc.x.y") == b"b"


async def test_error_reply_and_unroutable(target: Target) -> None:
    """A raising handler gives RemoteError; a request nobody is bound for gives Unroutable."""
    queue = unique("q")
    async with (
        Connection(target.url) as conn,
        serving(conn, queue=queue, auto_delete=True),
        RPCClient.start(conn, timeout=30) as client,
    ):
        with anyio.fail_after(10):
            with pytest.raises(RemoteError) as info:
                await client.request(b"boom", queue)
            assert info.value.type == "KeyError"
            # Unroutable, not RequestTimeout at the 30 s deadline: the return failed it.
            with pytest.raises(Unroutable):
                await client.request(b"x", unique("nobody"))


async def test_timeout(target: Target) -> None:
    """A request that is never answered fails with RequestTimeout at its deadline."""
    queue = unique("q")
    async with (
        Connection(target.url) as conn,
        serving(conn, queue=queue, auto_delete=True),
        RPCClient.start(conn) as client,
    ):
        with anyio.fail_after(10):
            start = anyio.current_time()
            with pytest.raises(RequestTimeout):
                await client.request(b"never", queue, timeout=0.3)
            assert anyio.current_time() - start >= 0.3  # not before its deadline
            assert client.pending == 0


async def test_broker_channel_close_is_recovered(target: Target) -> None:
    """A broker-side channel close: fresh channel, fresh reply queue, handle_connected again."""
    queue = unique("q")
    async with (
        Connection(target.url) as conn,
        serving(conn, queue=queue, auto_delete=True),
        Watching.start(conn) as client,
    ):
        with anyio.fail_after(10):
            assert await client.request(b"1", queue) == b"1"
            first = client.reply_queue
            assert await break_channel(client)
            await wait_for(lambda: len(client.metas) == 2)
            assert client.reply_queue != first
            assert await client.request(b"2", queue) == b"2"


async def test_reply_queue_deletion_is_recovered(target: Target) -> None:
    """The reply queue deleted from outside (consumer cancel): a new one, and calls go on."""
    queue = unique("q")
    async with (
        Connection(target.url) as conn,
        serving(conn, queue=queue, auto_delete=True),
        Watching.start(conn) as client,
    ):
        with anyio.fail_after(20):
            assert await client.request(b"1", queue) == b"1"
            first = client.reply_queue
            assert first is not None
            await target.delete_queue(first)
            await wait_for(lambda: len(client.metas) == 2)
            assert client.reply_queue != first
            assert await client.request(b"2", queue) == b"2"


async def test_connection_kill_fails_in_flight_and_republishes_idempotent(target: Target) -> None:
    """Connection closed by the broker: in-flight requests fail at once unless idempotent."""
    queue = unique("q")
    name = unique("client-conn")
    async with (
        Connection(target.url) as server_conn,
        serving(server_conn, queue=queue),
        Connection(target.url, name=name, backoff=FAST) as conn,
        Watching.start(conn, timeout=20) as client,
    ):
        with anyio.fail_after(20):
            await wait_for(lambda: client.connected)
            lost: list[BaseException] = []
            channels_when_lost: list[int] = []
            replies: list[bytes] = []
            async with anyio.create_task_group() as tg:

                async def plain() -> None:
                    with pytest.raises(ConnectionLost) as info:
                        await client.request(b"never", queue, timeout=30)
                    lost.append(info.value)
                    channels_when_lost.append(len(client.metas))

                async def idempotent() -> None:
                    replies.append(await client.request(b"second", queue, idempotent=True))

                tg.start_soon(plain)
                tg.start_soon(idempotent)
                await wait_for(lambda: client.pending == 2)
                await target.kill_connection(name)
                await wait_for(lambda: len(lost) == 1)
            # It failed at the loss, not at its deadline, and before the reconnect.
            assert channels_when_lost == [1]
            assert replies == [b"second"]
            assert len(client.metas) == 2
            assert client.inits == 1  # a reconnect is not a restart


async def test_client_started_while_the_broker_is_down(target: Target, kind: Kind) -> None:
    """start() returns while the broker is down; the client connects once it is back."""
    queue = unique("q")
    await target.stop()
    try:
        async with (
            Connection(target.url, backoff=FAST) as conn,
            Watching.start(conn, timeout=60) as client,
        ):
            await anyio.sleep(0.5)
            assert not client.connected
            await target.start()
            async with Echo.start(conn, queue=queue, auto_delete=True) as server:
                with anyio.fail_after(60):
                    await wait_for(lambda: server.connected, 60)
                    assert await client.request(b"hello", queue) == b"hello"
    finally:
        await target.start()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # amqp:// is aiormq, asyncio-only
async def test_unreachable_broker_gives_a_typed_error_at_the_deadline() -> None:
    """With no broker listening, a request fails with RequestTimeout at its deadline."""
    async with RPCClient.start("amqp://guest:guest@127.0.0.1:1/", timeout=0.5) as client:
        with anyio.fail_after(5), pytest.raises(RequestTimeout, match="waiting for a channel"):
            await client.request(b"x", "anything")


async def test_unknown_replies_are_dropped(target: Target) -> None:
    """Forged and id-less replies published into the reply queue reach nobody."""
    queue = unique("q")
    async with (
        Connection(target.url) as conn,
        serving(conn, queue=queue, auto_delete=True),
        RPCClient.start(conn) as client,
    ):
        with anyio.fail_after(10):
            await wait_for(lambda: client.connected)
            assert client.reply_queue is not None
            for props in (Properties(correlation_id="forged"), Properties()):
                await target.inject(client.reply_queue, b"junk", props)
            assert await client.request(b"real", queue) == b"real"


async def test_many_concurrent_requests(target: Target) -> None:
    """1,000 concurrent requests each get their own reply."""
    queue = unique("q")
    async with (
        Connection(target.url) as conn,
        serving(conn, queue=queue, auto_delete=True, prefetch=256),
        RPCClient.start(conn, timeout=30) as client,
    ):
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(1000):

                    async def ask(i: int = i) -> None:
                        payload = f"{i}".encode()
                        assert await client.request(payload, queue) == payload

                    tg.start_soon(ask)
            assert client.pending == 0


@pytest.mark.rabbitmq
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # aiormq is asyncio-only
async def test_password_never_logged(rabbitmq_url: str) -> None:
    """A wrong password shows up in no log event, repr or exception text."""
    secret = "Wr0ng-" + uuid.uuid4().hex
    url = rabbitmq_url.replace("guest:guest@", f"guest:{secret}@")
    assert secret in url
    with capture_logs() as logs:
        async with RPCClient.start(url, timeout=1.0) as client:
            with pytest.raises(RequestTimeout) as info:
                await client.request(b"x", "q")
            assert secret not in repr(client.connection)
            assert isinstance(client.connection.last_error, ConnectFailed)
            assert secret not in str(client.connection.last_error)
            assert secret not in repr(client.connection.last_error)
    assert secret not in str(info.value)
    assert any(e["event"] == "connection.failed" for e in logs)
    assert secret not in repr(logs)


async def test_publish_to_a_deleted_exchange_is_recovered(target: Target) -> None:
    """Another connection deletes the client's exchange: the next publish closes the channel
    (404), the client reopens and redeclares it, and calls succeed once the server rebinds."""
    queue, exchange = unique("q"), unique("x")
    async with (
        Connection(target.url) as conn,
        serving(conn, queue=queue, exchange=exchange, routing_keys=["k"], auto_delete=True) as srv,
        Watching.start(conn, exchange=exchange, timeout=5) as client,
    ):
        with anyio.fail_after(20):
            assert await client.request(b"1", "k") == b"1"
            url = parse_url(target.url)
            async with backend_for(url).connect(url, ConnectOptions()) as other:
                channel = await other.open_channel()
                await channel.exchange_delete(exchange)
            with pytest.raises((ConnectionLost, BrokerError)):
                await client.request(b"2", "k")  # its publish makes the broker close the channel
            await wait_for(lambda: len(client.metas) == 2)
            assert await break_channel(srv)  # the server redeclares its binding
            await wait_for(lambda: srv.connected)
            with anyio.fail_after(10):
                while True:
                    try:
                        assert await client.request(b"3", "k") == b"3"
                        break
                    except Unroutable:
                        await anyio.sleep(0.05)  # until the server's binding is back


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # amqp:// is aiormq, asyncio-only
@pytest.mark.rabbitmq
async def test_failover_to_the_next_broker_url(rabbitmq_url: str) -> None:
    """With a dead broker first in the list, the connection fails over to the live one."""
    queue = unique("q")
    dead = "amqp://guest:guest@127.0.0.1:1/"
    async with (
        Connection([dead, rabbitmq_url], backoff=FAST) as conn,
        serving(conn, queue=queue, auto_delete=True),
        RPCClient.start(conn) as client,
    ):
        with anyio.fail_after(10):
            assert await client.request(b"x", queue) == b"x"
        assert conn.url is not None
        assert conn.url.port != 1
