"""Quorum request queues and answers to redelivered requests, on the sandbox and RabbitMQ."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest

from hare_py import Caller, Connection, Reply, Request, RPCClient, RPCServer
from hare_py.transport.base import Delivery, Session

from .conftest import Target

pytestmark = pytest.mark.anyio


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


class Counting(RPCServer[None]):
    """Echoes, counting the handler's runs per correlation id."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs: dict[str, int] = {}

    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        cid = request.correlation_id
        self.runs[cid] = self.runs.get(cid, 0) + 1
        return Reply(request.payload, state)


async def connected(*actors: Any) -> None:
    with anyio.fail_after(15):
        while not all(a.connected for a in actors):
            await anyio.sleep(0.01)


async def test_quorum_server_declares_a_durable_quorum_queue(target: Target) -> None:
    """queue_type="quorum" declares the request queue durable with x-queue-type quorum
    and x-delivery-limit, and serves on it."""
    queue = unique("quorum")
    try:
        async with (
            Connection(target.url) as conn,
            Counting.start(conn, queue=queue, queue_type="quorum", delivery_limit=3) as server,
            RPCClient.start(conn) as client,
        ):
            await connected(server, client)
            with anyio.fail_after(10):
                assert await client.request(b"hi", queue) == b"hi"
            durable, exclusive, auto_delete, arguments = (await target.topology()).queues[queue]
        assert (durable, exclusive, auto_delete) == (True, False, False)
        assert arguments == {"x-queue-type": "quorum", "x-delivery-limit": 3}
    finally:
        await target.delete_queue(queue)


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_request_redelivered_after_its_reply_is_answered_from_the_cache(
    target: Target, queue_type: Any
) -> None:
    """The server's connection dies after the reply went out and before the ack: the
    broker redelivers the request, and the server answers it again without handling it."""
    queue = unique(f"redelivered-{queue_type}")
    name = unique("server")
    lost_acks: list[str] = []
    acked: list[str] = []
    try:
        async with (
            Connection(target.url, name=name) as server_conn,
            Connection(target.url) as client_conn,
            Counting.start(server_conn, queue=queue, queue_type=queue_type) as server,
            RPCClient.start(client_conn) as client,
        ):
            await connected(server, client)
            settle = server._settle

            async def lose_the_first_ack(
                session: Session, delivery: Delivery, *, reject: bool = False
            ) -> None:
                if not lost_acks:
                    lost_acks.append(delivery.properties.correlation_id or "")
                    await target.kill_connection(name)  # the reply has been sent
                    return
                await settle(session, delivery, reject=reject)
                acked.append(delivery.properties.correlation_id or "")

            server._settle = lose_the_first_ack  # type: ignore[method-assign]
            with anyio.fail_after(20):
                assert await client.request(b"once", queue) == b"once"
                while lost_acks[0] not in acked:  # the redelivery, answered from the cache
                    await anyio.sleep(0.02)
                assert await client.request(b"next", queue) == b"next"
            assert lost_acks and server.runs[lost_acks[0]] == 1
            assert sorted(server.runs.values()) == [1, 1]
        assert queue in (await target.topology()).queues
    finally:
        await target.delete_queue(queue)
