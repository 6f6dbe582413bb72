"""A poison request reaches RPCServer as a delivery it rejects for good; nothing else dies.

A foreign publisher (pika, through RabbitMQ) sends requests whose properties
no client can decode: a timestamp past any ``datetime``, headers nested
hundreds deep. The server rejects each without requeue, so the queue's
dead-letter exchange keeps it; its connection stays up and it serves on.
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

import anyio
import anyio.to_thread
import pika
import pytest
from rabbitmq import with_amqp_backend

from hare_py import (
    Caller,
    ConnectedMeta,
    Connection,
    NoReply,
    Reply,
    Request,
    RequestTimeout,
    RPCClient,
    RPCServer,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]

COMBOS = {
    "aiormq-asyncio": ("asyncio", "aiormq"),
    "anyio-asyncio": ("asyncio", "anyio"),
    "anyio-trio": ("trio", None),
}


@pytest.fixture(params=list(COMBOS.values()), ids=list(COMBOS))
def combo(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    value: tuple[str, str | None] = request.param
    return value


@pytest.fixture
def anyio_backend(combo: tuple[str, str | None]) -> str:
    return combo[0]


class Counting(RPCServer[None]):
    """Counts its channel opens: a reconnect would show as a second one."""

    opens = 0

    async def handle_connected(self, meta: ConnectedMeta, state: None) -> Any:
        self.opens += 1
        return NoReply(state)


def _nested(depth: int) -> dict[str, Any]:
    table: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        table = {"n": table}
    return table


POISONS: dict[str, Any] = {
    "timestamp past datetime": pika.BasicProperties(timestamp=2**63 - 1, reply_to="x"),
    "headers nested 500 deep": pika.BasicProperties(headers=_nested(500), reply_to="x"),
}


def _publish_and_count(url: str, queue: str, dead: str, poisons: list[Any]) -> None:
    """Publish the poisons with pika, then wait until the dead-letter queue holds them all."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))  # pika's encoder recurses per level
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    finally:
        sys.setrecursionlimit(limit)
    try:
        channel = connection.channel()
        for properties in poisons:
            sys.setrecursionlimit(max(limit, 10_000))
            try:
                channel.basic_publish("", queue, b"poison", properties)
            finally:
                sys.setrecursionlimit(limit)
        for _ in range(200):
            if channel.queue_declare(dead, passive=True).method.message_count == len(poisons):
                return
            connection.sleep(0.05)
        raise AssertionError("the poisons never reached the dead-letter queue")
    finally:
        connection.close()


async def test_poison_requests_are_dead_lettered_and_the_server_serves_on(
    rabbitmq: Any, rabbitmq_url: str, combo: tuple[str, str | None]
) -> None:
    """Each poison is rejected without requeue into the DLX; no reconnect; calls still work."""
    url = with_amqp_backend(rabbitmq_url, combo[1])
    tag = uuid.uuid4().hex[:8]
    queue, dlx, dead = f"poison.{tag}", f"poison.dlx.{tag}", f"poison.dead.{tag}"
    rabbitmq.ctl(
        "set_policy", f"poison-{tag}", f"^poison\\.{tag}$",
        f'{{"dead-letter-exchange":"{dlx}"}}', "--apply-to", "queues",
    )  # fmt: skip
    setup = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        ch = setup.channel()
        ch.exchange_declare(dlx, "fanout", auto_delete=True)
        ch.queue_declare(dead, auto_delete=False)
        ch.queue_bind(dead, dlx)
    finally:
        setup.close()
    try:
        with anyio.fail_after(30):
            async with Counting.start(url, queue=queue, auto_delete=True) as server:
                while not server.connected:
                    await anyio.sleep(0.01)
                await anyio.to_thread.run_sync(
                    _publish_and_count, rabbitmq_url, queue, dead, list(POISONS.values())
                )
                async with RPCClient.start(url) as client:
                    assert await client.request(b"after", queue) == b"after"
                assert server.opens == 1  # the connection and channel stayed up
                assert server.running
    finally:
        cleanup = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
        try:
            cleanup.channel().queue_delete(dead)
        finally:
            cleanup.close()
        rabbitmq.ctl("clear_policy", f"poison-{tag}")


async def test_delivery_limit_drops_a_request_that_keeps_killing_its_server(
    rabbitmq: Any, combo: tuple[str, str | None]
) -> None:
    """A request whose handling kills the server's connection every time is delivered
    delivery_limit + 1 times on a quorum queue, then dropped; the server serves on.
    (RabbitMQ only: the sandbox does not model delivery limits.)"""
    url = with_amqp_backend(rabbitmq.url, combo[1])
    queue = f"poison.{uuid.uuid4().hex[:10]}"
    name = f"server.{uuid.uuid4().hex[:10]}"
    runs: list[bytes] = []

    class Crashing(RPCServer[None]):
        async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
            runs.append(request.payload)
            if request.payload == b"poison":  # dies before answering, as a crash would
                await anyio.to_thread.run_sync(rabbitmq.close_connection, name)
                return NoReply(state)
            return Reply(request.payload, state)

    async def call_poison(client: RPCClient[None]) -> None:
        with pytest.raises(RequestTimeout):
            await client.request(b"poison", queue, timeout=60)

    try:
        async with (
            Connection(url, name=name) as server_conn,
            Connection(url) as client_conn,
            Crashing.start(server_conn, queue=queue, queue_type="quorum", delivery_limit=2) as s,
            RPCClient.start(client_conn) as client,
        ):
            with anyio.fail_after(60):
                while not (s.connected and client.connected):
                    await anyio.sleep(0.01)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call_poison, client)
                    while runs.count(b"poison") < 3:
                        await anyio.sleep(0.05)
                    while not s.connected:
                        await anyio.sleep(0.01)
                    assert await client.request(b"fine", queue) == b"fine"
                    await anyio.sleep(1.5)  # a fourth delivery would come within this
                    tg.cancel_scope.cancel()
        assert runs.count(b"poison") == 3
    finally:
        await anyio.to_thread.run_sync(rabbitmq.ctl, "delete_queue", queue)
