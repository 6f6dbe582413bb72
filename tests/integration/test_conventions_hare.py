"""The hare conventions on every broker: exclusive, lasting and direct reply-to queues."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from hare_py import (
    BrokerError,
    Caller,
    ConnectedMeta,
    Connection,
    NoReply,
    RemoteError,
    Reply,
    Request,
    RPCClient,
    RPCServer,
)
from hare_py.conventions import direct_reply_to, hare
from hare_py.transport import backend_for, parse_url
from hare_py.transport.base import ConnectOptions

from .conftest import Target

pytestmark = pytest.mark.anyio


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


class Held(RPCServer[list[Caller]]):
    """Echoes, except b'hold': answered only when told to (``release``)."""

    async def init(self, arg: Any) -> list[Caller]:
        return []

    async def handle_request(self, request: Request, caller: Caller, held: list[Caller]) -> Any:
        if request.payload == b"hold":
            return NoReply([*held, caller])
        return Reply(request.payload, held)

    async def handle_cast(self, message: Any, held: list[Caller]) -> Any:
        for caller in held:
            self.reply(caller, b"released")
        return NoReply([])


class Counting(RPCClient[list[ConnectedMeta]]):
    async def init(self, arg: Any) -> list[ConnectedMeta]:
        self.metas: list[ConnectedMeta] = []
        return self.metas

    async def handle_connected(self, meta: ConnectedMeta, state: list[ConnectedMeta]) -> Any:
        state.append(meta)
        return NoReply(state)


async def wait_for(predicate: Any, seconds: float = 10.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.01)


@asynccontextmanager
async def held_server(conn: Connection, queue: str) -> AsyncIterator[Held]:
    async with Held.start(conn, queue=queue, auto_delete=True) as server:
        await wait_for(lambda: server.connected)
        yield server


async def test_lasting_reply_queue_survives_a_connection_loss(target: Target) -> None:
    """With a lasting reply queue, a request in flight across a connection kill gets its reply."""
    queue, reply_queue, name = unique("q"), unique("replies"), unique("conn")
    async with (
        Connection(target.url) as server_conn,
        held_server(server_conn, queue) as server,
        Connection(target.url, name=name) as conn,
        Counting.start(conn, convention=hare(lasting_queue=reply_queue), timeout=20) as client,
    ):
        with anyio.fail_after(30):
            await wait_for(lambda: client.connected)
            assert client.reply_queue == reply_queue
            results: list[bytes] = []
            async with anyio.create_task_group() as tg:

                async def ask() -> None:
                    results.append(await client.request(b"hold", queue))

                tg.start_soon(ask)
                await wait_for(lambda: server.pending == 1)
                await target.kill_connection(name)
                await wait_for(lambda: len(client.metas) == 2)
                assert client.pending == 1  # still waiting, not failed with ConnectionLost
                server.cast("release")
            assert results == [b"released"]
            assert client.reply_queue == reply_queue  # the same queue, redeclared


async def test_lasting_reply_queue_is_consumed_by_its_owner_only(target: Target) -> None:
    """Another consumer of a client's lasting reply queue is refused (exclusive consumer)."""
    queue, reply_queue = unique("q"), unique("replies")
    async with (
        Connection(target.url) as conn,
        held_server(conn, queue),
        Counting.start(conn, convention=hare(lasting_queue=reply_queue)) as client,
    ):
        with anyio.fail_after(10):
            assert await client.request(b"x", queue) == b"x"
            url = parse_url(target.url)
            async with backend_for(url).connect(url, ConnectOptions()) as other:
                channel = await other.open_channel()
                with pytest.raises(BrokerError) as info:
                    await channel.basic_consume(reply_queue, lambda d: None)
                assert info.value.code == 403
            assert await client.request(b"y", queue) == b"y"


async def test_direct_reply_to_round_trip(target: Target) -> None:
    """direct_reply_to: no reply queue is declared; replies, error replies included,
    come on amq.rabbitmq.reply-to."""
    queue = unique("q")

    class Failing(Held):
        async def handle_request(self, request: Request, caller: Caller, held: Any) -> Any:
            if request.payload == b"fail":
                raise KeyError("nope")
            return await super().handle_request(request, caller, held)

    before = set((await target.topology()).queues)
    async with (
        Connection(target.url) as conn,
        Failing.start(conn, queue=queue, auto_delete=True) as server,
        Counting.start(conn, convention=direct_reply_to()) as client,
    ):
        with anyio.fail_after(10):
            await wait_for(lambda: server.connected and client.connected)
            assert set((await target.topology()).queues) - before == {queue}
            with pytest.raises(RemoteError, match="KeyError"):
                await client.request(b"fail", queue)
            async with anyio.create_task_group() as tg:
                for i in range(50):

                    async def ask(i: int = i) -> None:
                        payload = f"{i}".encode()
                        assert await client.request(payload, queue) == payload

                    tg.start_soon(ask)
            assert client.reply_queue == "amq.rabbitmq.reply-to"
            assert client.metas[0].reply_queue == "amq.rabbitmq.reply-to"


async def test_conventions_refuse_bad_options(target: Target) -> None:
    """A lasting queue named amq.* and a server without a queue are configuration errors."""
    from hare_py import ConfigError

    with pytest.raises(ConfigError, match="amq"):
        hare(lasting_queue="amq.mine")
    with pytest.raises(ConfigError, match="queue"):
        RPCServer.start(target.url)


async def test_hare_topology_and_round_trip_with_error(target: Target) -> None:
    """hare on a named topic exchange: exact exchange, queues and bindings; a reply; an error."""
    exchange, queue, lasting = unique("x"), unique("q"), unique("replies")

    class Picky(RPCServer[None]):
        async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
            if request.payload == b"bad":
                raise LookupError("no such item")
            return Reply(b"ok:" + request.payload, state)

    async with (
        Connection(target.url) as conn,
        Picky.start(
            conn,
            queue=queue,
            exchange=exchange,
            exchange_type="topic",
            routing_keys=["items.*", "orders.#"],
            durable=True,
        ) as server,
        Counting.start(
            conn,
            exchange=exchange,
            exchange_type="topic",
            exchange_durable=True,
            convention=hare(lasting_queue=lasting, lasting_expires=30),
        ) as client,
    ):
        with anyio.fail_after(20):
            await wait_for(lambda: server.connected and client.connected)
            assert await client.request(b"a", "items.get") == b"ok:a"
            with pytest.raises(RemoteError) as info:
                await client.request(b"bad", "orders.x.y")
            assert (info.value.type, info.value.message) == ("LookupError", "no such item")
            topo = await target.topology()
            assert topo.exchanges[exchange] == ("topic", True)
            assert topo.queues[queue][:3] == (True, False, False)
            assert topo.queues[lasting] == (False, False, False, {"x-expires": 30000})
            bound = {(b[0], b[1], b[2]) for b in topo.bindings if b[1] == queue}
            assert bound == {(exchange, queue, "items.*"), (exchange, queue, "orders.#")}
            await server.stop()
        # the durable queue outlives the server: remove it
        url = parse_url(target.url)
        async with backend_for(url).connect(url, ConnectOptions()) as other:
            channel = await other.open_channel()
            await channel.queue_delete(queue)
            await channel.exchange_delete(exchange)
