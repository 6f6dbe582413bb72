"""Chaos on AMQP 1.0, under 32 concurrent callers, on asyncio and trio.

Each test runs ``Load``'s 32 callers (tests/chaos/harness.py) through a
hare_py ``amqp10()`` client against an echo ``RPCServer`` in another
process, on proton's example broker, RabbitMQ's AMQP 1.0 plugin, or a
listening echo server (peer to peer), injects a fault, and checks: every call
ends within its deadline plus a small grace with its own reply or a typed
HareError; no reply reaches the wrong caller; calls succeed again after the
fault by themselves; nothing is left pending.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import chaos_report
import pytest
from amqp10.peers import ProtonBroker, free_port
from chaos.harness import Load, Watched
from chaos.proxy import FaultProxy
from chaos.test_chaos import client_tasks, recover, wait_for
from processes import start_ready, stop_ready

from hare_py import Backoff, Connection
from hare_py.conventions import amqp10

pytestmark = pytest.mark.anyio

ECHO = Path(__file__).resolve().parent.parent / "chaos" / "echo_server.py"
TIMEOUT = 2.0  # each call's deadline
HEARTBEAT = 1.0  # the idle-timeout the client announces and expects the peer to keep
FAST = Backoff(initial=0.05, maximum=0.5)


def report(anyio_backend: str, peer: str, fault: str, load: Load, **figures: Any) -> None:
    chaos_report.ROWS.append(
        {"backend": f"amqp10/{anyio_backend}", "peer": peer, "fault": fault, **load.summary(),
         **figures}
    )  # fmt: skip


def echo(url: str, address: str) -> Any:
    return start_ready([sys.executable, str(ECHO), url, address, "amqp10"])


@asynccontextmanager
async def proxied(port: int) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(port)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.run)
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def client_under_load(url: str, address: str) -> AsyncIterator[tuple[Watched, Load]]:
    """An amqp10() client on ``url`` and 32 callers running against ``address``."""
    tasks_before = client_tasks()
    sep = "&" if "?" in url else "?"
    async with (
        Connection(f"{url}{sep}heartbeat={HEARTBEAT:g}", backoff=FAST) as conn,
        Watched.start(conn, timeout=TIMEOUT, backoff=FAST, convention=amqp10()) as client,
    ):
        await wait_for(lambda: client.connected, 30, "the first session")
        load = Load(client, address, callers=32, timeout=TIMEOUT)
        async with anyio.create_task_group() as tg:
            tg.start_soon(load.run)
            await wait_for(lambda: load.ok >= 100, 30, "load to warm up")
            try:
                yield client, load
            finally:
                load.stop()
    assert client_tasks() == tasks_before


@pytest.fixture
def address() -> str:
    return f"chaos-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def proton() -> Any:
    broker = ProtonBroker()
    yield broker
    broker.stop()


@pytest.fixture(params=["proton-broker", "listener", "rabbitmq"])
def peer(request: pytest.FixtureRequest, address: str) -> Any:
    """(name, the URL clients dial, the echo server's process): each AMQP 1.0 peer."""
    name = request.param
    if name == "proton-broker":
        url = request.getfixturevalue("proton").url
        served, dialled = address, url
    elif name == "listener":
        port = free_port()
        dialled = f"amqp://127.0.0.1:{port}/?protocol=1.0"
        url, served = f"{dialled}&listen=1", address
    else:
        node = request.getfixturevalue("rabbitmq")
        url = dialled = f"{node.url.rstrip('/')}/?protocol=1.0"
        served = f"/queue/{address}"
    process = echo(url, served)
    yield name, dialled, served, process
    stop_ready(process)


def port_of(url: str) -> int:
    return int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


async def test_tcp_reset(peer: Any, anyio_backend: str) -> None:
    """The client's TCP connection aborted (RST), twice: in-flight calls fail at once,
    the client reconnects and calls succeed again."""
    name, dialled, served, _ = peer
    async with proxied(port_of(dialled)) as proxy:
        url = dialled.replace(f":{port_of(dialled)}/", f":{proxy.port}/")
        async with client_under_load(url, served) as (client, load):
            recoveries = []
            for _ in range(2):
                struck = anyio.current_time()
                assert await proxy.reset() >= 1
                recoveries.append(await recover(load, struck))
        load.check()
        assert load.errors.keys() <= {"ConnectionLost", "RequestTimeout"}
    assert len(client.metas) >= 3 and client.inits == 1  # two reconnects, no restart
    report(anyio_backend, name, "TCP reset x2", load, recovery_s=max(recoveries))


async def test_peer_stalled_is_detected_by_idle_timeout(
    proton: ProtonBroker, address: str, anyio_backend: str
) -> None:
    """A peer that goes silent (nothing forwarded, nothing closed) is declared dead by the
    idle-timeout; calls then succeed on a new connection."""
    process = echo(proton.url, address)
    try:
        async with proxied(proton.port) as proxy:
            url = proton.url.replace(f":{proton.port}/", f":{proxy.port}/")
            async with client_under_load(url, address) as (client, load):
                stalled = anyio.current_time()
                reconnects = len(client.metas)
                proxy.stall()
                await wait_for(lambda: not client.connected, 10, "the idle-timeout")
                detected = anyio.current_time() - stalled
                proxy.resume()
                recovery = await recover(load, stalled)
                assert len(client.metas) == reconnects + 1
            load.check()
    finally:
        stop_ready(process)
    assert HEARTBEAT <= detected < 4 * HEARTBEAT + 1
    report(anyio_backend, "proton-broker", "peer stalled", load,
           detected_s=round(detected, 2), recovery_s=recovery)  # fmt: skip


async def test_listener_peer_killed(address: str, anyio_backend: str) -> None:
    """The listening server killed (SIGKILL) and started again on its port: in-flight
    calls fail at once, calls made meanwhile fail by their deadlines, then succeed."""
    port = free_port()
    dialled = f"amqp://127.0.0.1:{port}/?protocol=1.0"
    process = echo(f"{dialled}&listen=1", address)
    try:
        async with client_under_load(dialled, address) as (client, load):
            process.kill()
            process.wait(10)
            await wait_for(lambda: not client.connected, 5, "the connection loss")
            await anyio.sleep(0.5)  # down for a while: calls fail, none hangs
            stop_ready(process)
            process = echo(f"{dialled}&listen=1", address)
            recovery = await recover(load, anyio.current_time())  # from when it is back
        load.check()
        assert load.errors["ConnectionLost"] >= 1
    finally:
        stop_ready(process)
    report(anyio_backend, "listener", "listener killed", load, recovery_s=recovery)


async def test_broker_restarted(rabbitmq: Any, address: str, anyio_backend: str) -> None:
    """RabbitMQ's application stopped and started again: calls fail typed while it is
    away, and succeed again once it is back and the server has re-attached."""
    url = f"{rabbitmq.url.rstrip('/')}/?protocol=1.0"
    process = echo(url, f"/queue/{address}")
    try:
        async with client_under_load(url, f"/queue/{address}") as (_client, load):
            await anyio.to_thread.run_sync(rabbitmq.stop_app)
            await anyio.sleep(1.0)
            await anyio.to_thread.run_sync(rabbitmq.start_app)
            recovery = await recover(load, anyio.current_time())  # from when it is back
        load.check()
        assert load.errors["ConnectionLost"] >= 1  # the outage was felt
    finally:
        stop_ready(process)
    report(anyio_backend, "rabbitmq", "broker restart", load, recovery_s=recovery)


async def test_link_detached_by_the_broker(rabbitmq: Any, address: str, anyio_backend: str) -> None:
    """RabbitMQ detaches the client's reply link (its reply queue deleted): the calls
    waiting on it fail at once, the client attaches a new one, calls succeed again."""
    url = f"{rabbitmq.url.rstrip('/')}/?protocol=1.0"
    process = echo(url, f"/queue/{address}")
    try:
        async with client_under_load(url, f"/queue/{address}") as (client, load):
            reply_queue = client.reply_queue
            assert reply_queue is not None and reply_queue.startswith("/queue/"), reply_queue
            sessions = len(client.metas)
            struck = anyio.current_time()
            await anyio.to_thread.run_sync(
                rabbitmq.ctl, "delete_queue", reply_queue.removeprefix("/queue/")
            )
            recovery = await recover(load, struck)
            assert len(client.metas) == sessions + 1
        load.check()
    finally:
        stop_ready(process)
    report(anyio_backend, "rabbitmq", "reply link detached", load, recovery_s=recovery)
