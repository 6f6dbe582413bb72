"""Several broker URLs: after losing a node, a connection tries the next node first."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
from chaos.proxy import FaultProxy
from rabbitmq import with_amqp_backend

from hare_py import Caller, Connection, Reply, Request, RPCClient, RPCServer

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


class Echo(RPCServer[None]):
    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        return Reply(request.payload, state)


async def test_after_losing_a_node_the_next_url_is_tried_first(
    rabbitmq: Any, combo: tuple[str, str | None]
) -> None:
    """A connection lost on its first URL reconnects through the second at once; the lost
    node, which now accepts TCP and never answers (as an unreachable host costs a whole
    connect_timeout), is not tried first."""
    url = with_amqp_backend(rabbitmq.url, combo[1])
    queue = f"failover.{uuid.uuid4().hex[:10]}"
    proxy = FaultProxy(rabbitmq.amqp_port)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.run)
        conn = Connection([proxy.url(url), url], connect_timeout=10)
        async with (
            Connection(url) as server_conn,
            Echo.start(server_conn, queue=queue, auto_delete=True) as server,
            conn,
            RPCClient.start(conn) as client,
        ):
            with anyio.fail_after(15):
                while not (server.connected and client.connected):
                    await anyio.sleep(0.01)
                assert await client.request(b"before", queue) == b"before"
            assert (conn.connects, proxy.accepted) == (1, 1)
            proxy.stall()  # from now on it accepts and never answers
            await proxy.reset()
            with anyio.fail_after(5):  # well under connect_timeout
                while conn.connects < 2:
                    await anyio.sleep(0.01)
                while not client.connected:
                    await anyio.sleep(0.01)
                assert await client.request(b"after", queue) == b"after"
            assert proxy.accepted == 1  # the hanging node was not tried
        tg.cancel_scope.cancel()
