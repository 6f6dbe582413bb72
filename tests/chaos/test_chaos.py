"""Chaos against the real RabbitMQ: faults under load, nothing lost, nothing hung.

Each test runs 32 callers in a loop against an echo server in another
process, injects a fault, and checks: every call ends within its deadline
plus a small grace with the right reply or a typed HareError; no reply
reaches the wrong caller; the client recovers by itself (a new reply queue,
the old one gone, ``handle_connected`` once per reconnect, no ``init`` for a
pure reconnect); calls succeed after the fault; nothing leaks (pending
requests, tasks, channels, consumers).
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import pytest

from hare_py import (
    Backoff,
    Caller,
    Connection,
    Forward,
    HareError,
    Request,
    Response,
    RestartIntensityExceeded,
)
from hare_py.testing import break_channel
from hare_py.transport import backend_for, parse_url
from hare_py.transport.base import ConnectOptions, Properties

from .harness import Load, Watched, connection_resources, queue_names
from .proxy import FaultProxy

pytestmark = [pytest.mark.chaos, pytest.mark.rabbitmq, pytest.mark.anyio]

TIMEOUT = 2.0  # each call's deadline
HEARTBEAT = 2.0  # seconds, for the connections under test
FAST = Backoff(initial=0.05, maximum=1.0)


async def wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    with anyio.move_on_after(seconds):
        while not predicate():
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def client_tasks() -> int:
    """Running tasks, not counting the fault proxy's (which end when they see EOF)."""
    return sum("chaos.proxy" not in (task.name or "") for task in anyio.get_running_tasks())


@asynccontextmanager
async def client_under_load(
    url: str, queue: str, *, cls: type[Watched] = Watched, **options: Any
) -> AsyncIterator[tuple[Watched, Load, str]]:
    """A named client connection, a client, and 32 callers running against ``queue``."""
    name = f"chaos-client-{uuid.uuid4().hex[:8]}"
    tasks_before = client_tasks()
    async with (
        Connection(url, name=name, heartbeat=HEARTBEAT, backoff=FAST) as conn,
        cls.start(conn, timeout=TIMEOUT, backoff=FAST, **options) as client,
    ):
        await wait_for(lambda: client.connected, 30, "the first channel")
        load = Load(client, queue, callers=32, timeout=TIMEOUT)
        async with anyio.create_task_group() as tg:
            tg.start_soon(load.run)
            await wait_for(lambda: load.ok >= 100, 30, "load to warm up")
            try:
                yield client, load, name
            finally:
                load.stop()
    # Everything the client started has ended with its block.
    assert client_tasks() == tasks_before


async def recover(load: Load, fault_at: float, within: float = 30.0) -> float:
    """Wait for a call started after the fault to succeed; the recovery time."""
    await wait_for(lambda: load.recovery_after(fault_at) is not None, within, "recovery")
    recovery = load.recovery_after(fault_at)
    assert recovery is not None
    # After the fault, calls keep succeeding.
    settled = anyio.current_time()
    await wait_for(lambda: load.ok_after(settled) >= 200, within, "calls to succeed again")
    return round(recovery, 3)


async def check_recovered(rabbitmq: Any, client: Watched, name: str, reconnects: int) -> None:
    assert len(client.metas) == 1 + reconnects, [m.reply_queue for m in client.metas]
    assert client.inits == 1, "a reconnect must not rerun init"
    assert client.reply_queue == client.metas[-1].reply_queue
    old = {m.reply_queue for m in client.metas[:-1]}

    def settled() -> bool:
        # The broker deletes a dead connection's exclusive queues and channels
        # asynchronously; give it a moment.
        gone = not old & queue_names(rabbitmq)
        return gone and connection_resources(rabbitmq, name) == (1, 1)

    await wait_for_broker(settled, 10, "old reply queues, channels and consumers to go")


async def wait_for_broker(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """Like wait_for, for predicates that run rabbitmqctl: in a thread, so that the
    event loop (and the load on it) never stalls behind a subprocess."""
    with anyio.move_on_after(seconds):
        while not await anyio.to_thread.run_sync(predicate):
            await anyio.sleep(0.1)
        return
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


async def test_broker_closes_the_channel(rabbitmq: Any, echo_queue: str, report: Any) -> None:
    """A broker-side channel close (404 on the client's own channel), three times over."""
    recoveries = []
    async with client_under_load(rabbitmq.url, echo_queue) as (client, load, name):
        for n in range(1, 4):
            fault_at = anyio.current_time()
            assert await break_channel(client)
            await wait_for(partial(lambda n: len(client.metas) == n + 1, n), 10, "a new channel")
            recoveries.append(await recover(load, fault_at))
        await check_recovered(rabbitmq, client, name, reconnects=3)
    load.check()
    report({"fault": "channel closed by broker", "recovery_s": max(recoveries), **load.summary()})


async def test_broker_cancels_the_reply_consumer(
    rabbitmq: Any, echo_queue: str, report: Any
) -> None:
    """rabbitmqctl delete_queue <reply queue>: a consumer cancel, recovered with a fresh queue."""
    recoveries = []
    async with client_under_load(rabbitmq.url, echo_queue) as (client, load, name):
        for n in range(1, 3):
            fault_at = anyio.current_time()
            await anyio.to_thread.run_sync(rabbitmq.ctl, "delete_queue", client.reply_queue)
            await wait_for(partial(lambda n: len(client.metas) == n + 1, n), 10, "a new channel")
            recoveries.append(await recover(load, fault_at))
        await check_recovered(rabbitmq, client, name, reconnects=2)
    load.check()
    report({"fault": "reply consumer cancelled", "recovery_s": max(recoveries), **load.summary()})


async def test_broker_closes_the_connection(rabbitmq: Any, echo_queue: str, report: Any) -> None:
    """rabbitmqctl close_connection, then close_all_connections (the server's too)."""
    recoveries = []
    async with client_under_load(rabbitmq.url, echo_queue) as (client, load, name):
        fault_at = anyio.current_time()
        await anyio.to_thread.run_sync(rabbitmq.close_connection, name)
        await wait_for(lambda: len(client.metas) == 2, 15, "a new connection")
        recoveries.append(await recover(load, fault_at))
        fault_at = anyio.current_time()
        await anyio.to_thread.run_sync(rabbitmq.close_all_connections)
        await wait_for(lambda: len(client.metas) == 3, 15, "a new connection")
        recoveries.append(await recover(load, fault_at))
        await check_recovered(rabbitmq, client, name, reconnects=2)
    load.check()
    report(
        {"fault": "connection closed by broker", "recovery_s": max(recoveries), **load.summary()}
    )


@asynccontextmanager
async def proxied(rabbitmq: Any) -> AsyncIterator[tuple[FaultProxy, str]]:
    port = parse_url(rabbitmq.url).port
    proxy = FaultProxy(port)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.run)
        try:
            yield proxy, proxy.url(rabbitmq.url)
        finally:
            tg.cancel_scope.cancel()


@pytest.mark.parametrize("cut", ["reset", "half_close"])
async def test_tcp_connection_cut(rabbitmq: Any, echo_queue: str, report: Any, cut: str) -> None:
    """The TCP connection is reset (RST) or half-closed (FIN) by the network."""
    async with (
        proxied(rabbitmq) as (proxy, url),
        client_under_load(url, echo_queue) as (client, load, name),
    ):
        fault_at = anyio.current_time()
        if cut == "reset":
            assert await proxy.reset() == 1
        else:
            assert proxy.half_close() == 1
        await wait_for(lambda: len(client.metas) == 2, 4 * HEARTBEAT + 5, "a new connection")
        recovery = await recover(load, fault_at)
        await check_recovered(rabbitmq, client, name, reconnects=1)
    load.check()
    report({"fault": f"tcp {cut}", "recovery_s": recovery, **load.summary()})


async def test_silent_network_stall_is_detected_by_heartbeats(
    rabbitmq: Any, echo_queue: str, report: Any
) -> None:
    """The proxy stops forwarding without closing: heartbeats notice within ~2 intervals."""
    async with (
        proxied(rabbitmq) as (proxy, url),
        client_under_load(url, echo_queue) as (client, load, name),
    ):
        fault_at = anyio.current_time()
        proxy.stall()
        await wait_for(lambda: not client.connected, 4 * HEARTBEAT, "heartbeats to notice")
        detected = round(anyio.current_time() - fault_at, 3)
        assert detected <= 3 * HEARTBEAT
        proxy.resume()
        recovery = await recover(load, fault_at)
        await check_recovered(rabbitmq, client, name, reconnects=1)
    load.check()
    report(
        {
            "fault": "network stall",
            "heartbeat_s": HEARTBEAT,
            "detected_s": detected,
            "recovery_s": recovery,
            **load.summary(),
        }
    )


async def test_broker_restart(rabbitmq: Any, echo_queue: str, report: Any) -> None:
    """rabbitmqctl stop_app / start_app under load: the client reconnects once it is back."""
    async with client_under_load(rabbitmq.url, echo_queue) as (client, load, name):
        fault_at = anyio.current_time()
        await anyio.to_thread.run_sync(rabbitmq.stop_app)
        try:
            await wait_for(lambda: not client.connected, 10, "the loss to be seen")
            await anyio.sleep(1.0)
        finally:
            await anyio.to_thread.run_sync(rabbitmq.start_app)
        back_at = anyio.current_time()
        await wait_for(lambda: len(client.metas) == 2, 30, "a new connection")
        recovery = await recover(load, back_at, within=60)
        await check_recovered(rabbitmq, client, name, reconnects=1)
    load.check()
    report(
        {
            "fault": "broker restart",
            "outage_s": round(back_at - fault_at, 3),
            "recovery_after_up_s": recovery,
            **load.summary(),
        }
    )


async def test_broker_down_when_the_client_starts(rabbitmq: Any, echo_queue: str) -> None:
    """A client started while the broker is down fails calls by deadline, then connects."""
    await anyio.to_thread.run_sync(rabbitmq.stop_app)
    try:
        async with (
            Connection(rabbitmq.url, heartbeat=HEARTBEAT, backoff=FAST) as conn,
            Watched.start(conn, timeout=TIMEOUT) as client,
        ):
            load = Load(client, echo_queue, callers=32, timeout=TIMEOUT)
            async with anyio.create_task_group() as tg:
                tg.start_soon(load.run)
                await anyio.sleep(TIMEOUT + 1)
                assert load.ok == 0
                assert load.errors["RequestTimeout"] >= 32
                await anyio.to_thread.run_sync(rabbitmq.start_app)
                up_at = anyio.current_time()
                await recover(load, up_at, within=60)
                load.stop()
            assert client.inits == 1
    finally:
        await anyio.to_thread.run_sync(rabbitmq.start_app)
    load.check()


class Crashy(Watched):
    """Crashes at random points (request and response callbacks) while ``crash_rate`` > 0."""

    crash_rate = 0.0

    async def handle_request(self, request: Request, caller: Caller, state: Any) -> Any:
        if secrets.randbelow(10_000) < self.crash_rate * 10_000:
            raise RuntimeError("injected crash in handle_request")
        return Forward(state)

    async def handle_response(self, response: Response, caller: Caller, state: Any) -> Any:
        if secrets.randbelow(10_000) < self.crash_rate * 10_000:
            raise RuntimeError("injected crash in handle_response")
        return await super().handle_response(response, caller, state)


async def test_random_callback_crashes(rabbitmq: Any, echo_queue: str, report: Any) -> None:
    """Callbacks raising at random: callers get ClientCrashed, the actor restarts, calls go on."""
    async with client_under_load(
        rabbitmq.url, echo_queue, cls=Crashy, max_restarts=10_000, within=1.0
    ) as (client, load, name):
        assert isinstance(client, Crashy)
        client.crash_rate = 0.002
        await wait_for(lambda: client.inits >= 5, 30, "several crashes")
        client.crash_rate = 0.0
        calm_at = anyio.current_time()
        recovery = await recover(load, calm_at)
        await wait_for_broker(
            lambda: connection_resources(rabbitmq, name) == (1, 1), 10, "old channels"
        )
        assert load.errors["ClientCrashed"] > 0
    load.check()
    report({"fault": "callback crashes", "restarts": client.inits - 1, **load.summary()})
    assert recovery is not None  # recover() bounds the wait itself


async def test_restart_intensity_exceeded_under_load(rabbitmq: Any, echo_queue: str) -> None:
    """Crashing faster than the intensity allows: one clear error, and no caller hangs."""
    load: Load | None = None
    with anyio.fail_after(60):
        with pytest.raises(RestartIntensityExceeded):
            async with (
                Connection(rabbitmq.url, heartbeat=HEARTBEAT) as conn,
                Crashy.start(conn, timeout=TIMEOUT, max_restarts=3, within=10) as client,
            ):
                load = Load(client, echo_queue, callers=32, timeout=TIMEOUT)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(load.run)
                    await wait_for(lambda: load is not None and load.ok > 50, 30, "warm-up")
                    client.crash_rate = 0.05
                    await anyio.sleep_forever()
    assert load is not None
    assert load.wrong == 0
    assert load.unexpected == []
    assert load.overruns == []
    assert set(load.errors) <= {"ClientCrashed", "ClientStopped", "RequestTimeout"}
    assert client.pending == 0
    with pytest.raises(HareError):
        await client.request(b"after", echo_queue)


async def test_reply_floods(rabbitmq: Any, echo_queue: str, report: Any) -> None:
    """Late, duplicate, unknown-id and malformed replies flood the reply queue: all dropped."""

    class Recording(Watched):
        """Remembers the correlation ids of replies already delivered."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.answered: list[str] = []

        async def handle_response(self, response: Response, caller: Caller, state: Any) -> Any:
            self.answered.append(response.correlation_id)
            return await super().handle_response(response, caller, state)

    url = parse_url(rabbitmq.url)
    flooded = 0
    async with client_under_load(rabbitmq.url, echo_queue, cls=Recording) as (client, load, name):
        assert isinstance(client, Recording)
        async with backend_for(url).connect(url, ConnectOptions(name="flooder")) as conn:
            channel = await conn.open_channel()
            for _ in range(20):
                queue = client.reply_queue
                assert queue is not None
                done = client.answered[-200:]  # these callers have their replies
                for cid in done:
                    props = Properties(correlation_id=cid)
                    await channel.basic_publish(b"duplicate", routing_key=queue, properties=props)
                for _ in range(100):
                    props = Properties(correlation_id=secrets.token_urlsafe(16))
                    await channel.basic_publish(b"unknown", routing_key=queue, properties=props)
                    await channel.basic_publish(os.urandom(64), routing_key=queue)
                    await channel.basic_publish(
                        b"",
                        routing_key=queue,
                        properties=Properties(headers={"x-error-type": 12}, correlation_id="x"),
                    )
                flooded += len(done) + 300
                await anyio.sleep(0.05)
            await channel.close()
        settled = anyio.current_time()
        await wait_for(lambda: load.ok_after(settled) >= 200, 30, "calls after the flood")
        assert client.inits == 1
        assert len(client.metas) == 1
        assert await anyio.to_thread.run_sync(connection_resources, rabbitmq, name) == (1, 1)
    load.check()
    report({"fault": "reply floods", "flooded": flooded, **load.summary()})
