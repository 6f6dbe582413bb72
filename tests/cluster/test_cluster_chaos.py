"""Chaos on a 3-node RabbitMQ cluster under 32 concurrent callers, on a quorum queue.

Two server instances and a client, each connected to another node with every
node's URL to fail over to. A node dies (SIGKILL) or restarts while the
callers call: nothing hangs, nothing is misdelivered, no server instance
handles a request twice, and calls succeed again within seconds.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import anyio.to_thread
import chaos_report
import pytest
from chaos.harness import Load
from rabbitmq import RabbitMQCluster, RabbitMQNode

from hare_py import Caller, Connection, Reply, Request, RPCClient, RPCServer

pytestmark = pytest.mark.anyio


class Counting(RPCServer[None]):
    """Echoes, counting the handler's runs per correlation id."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs: dict[str, int] = {}

    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        cid = request.correlation_id
        self.runs[cid] = self.runs.get(cid, 0) + 1
        return Reply(request.payload, state)


def _victim(
    cluster: RabbitMQCluster, fault: str, queue: str, names: dict[str, str]
) -> RabbitMQNode:
    if fault == "server-node":
        return cluster.node_of_connection(names["server-a"])
    if fault == "leader-node":
        return cluster.leader_of(queue)
    if fault == "client-node":
        return cluster.node_of_connection(names["client"])
    return cluster.nodes[1]  # restart-node: a node the first server prefers second


@pytest.mark.parametrize(
    ("fault", "anyio_backend"),
    [
        ("server-node", "asyncio"),
        ("leader-node", "asyncio"),
        ("client-node", "asyncio"),
        ("restart-node", "asyncio"),
        # One fault on trio: the failover path is the same code on both loops, and each
        # scenario costs a node restart (~10 s) of CI time.
        ("client-node", "trio"),
    ],
)
async def test_node_loss_under_load(
    cluster: RabbitMQCluster, fault: str, anyio_backend: str
) -> None:
    """A node killed (or restarted) under load: no hang, no misdelivery, no request
    handled twice by one server, and recovery on the other nodes."""
    queue = f"cluster.{uuid.uuid4().hex[:10]}"
    names = {role: f"{role}.{uuid.uuid4().hex[:8]}" for role in ("server-a", "server-b", "client")}
    async with (
        Connection(cluster.urls(0), name=names["server-a"], connect_timeout=5) as conn_a,
        Connection(cluster.urls(1), name=names["server-b"], connect_timeout=5) as conn_b,
        Connection(cluster.urls(2), name=names["client"], connect_timeout=5) as conn_c,
        Counting.start(conn_a, queue=queue, queue_type="quorum", prefetch=16) as server_a,
        Counting.start(conn_b, queue=queue, queue_type="quorum", prefetch=16) as server_b,
        RPCClient.start(conn_c) as client,
    ):
        with anyio.fail_after(30):
            while not (server_a.connected and server_b.connected and client.connected):
                await anyio.sleep(0.02)
        load = Load(client, queue, callers=32, timeout=5.0)
        victim = await anyio.to_thread.run_sync(_victim, cluster, fault, queue, names)
        async with anyio.create_task_group() as tg:
            tg.start_soon(load.run)
            await anyio.sleep(1.0)
            before = load.ok
            struck = anyio.current_time()
            if fault == "restart-node":
                await anyio.to_thread.run_sync(victim.stop_app)
                await anyio.to_thread.run_sync(victim.start_app)
            else:
                await anyio.to_thread.run_sync(victim.kill)
            with anyio.fail_after(30):
                while load.ok_after(struck) < 100:
                    await anyio.sleep(0.05)
            recovery = load.recovery_after(struck)
            await anyio.sleep(0.5)
            load.stop()
        if fault != "restart-node":
            await anyio.to_thread.run_sync(victim.respawn)
    load.check()
    twice = [cid for s in (server_a, server_b) for cid, n in s.runs.items() if n > 1]
    assert twice == [], f"{len(twice)} requests handled twice by the same server"
    across = len(set(server_a.runs) & set(server_b.runs))
    chaos_report.ROWS.append(
        {
            "backend": f"cluster/{anyio_backend}",
            "fault": fault,
            "ok_before": before,
            **load.summary(),
            "recovery_s": round(recovery, 2) if recovery is not None else None,
            "handled_by_both_instances": across,
        }
    )
    assert recovery is not None
    await anyio.to_thread.run_sync(cluster.running().ctl, "delete_queue", queue)
