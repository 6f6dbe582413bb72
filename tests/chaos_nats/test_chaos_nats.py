"""Chaos against a real nats-server: faults under load, nothing lost, nothing hung.

Each test runs 32 callers in a loop (tests/chaos/harness.py's ``Load``) on
the loom convention against an echo ``RPCServer`` in another process, through
private nats-servers that the test starts (and kills), injects a fault, and
checks: every call ends within its deadline plus a small grace with the right
reply or a typed HareError; no reply reaches the wrong caller (each payload
carries its caller's id); the client recovers by itself (one inbox for its
life, subscribed anew on each session, ``handle_connected`` once per
reconnect, no ``init`` for a pure reconnect); calls succeed after the fault;
nothing leaks (pending requests, tasks, and on the server exactly one
connection of the client's name with exactly one subscription, its inbox).
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.abc
import pytest
from chaos.harness import Load, Watched
from chaos.proxy import FaultProxy
from chaos.test_chaos import Crashy, client_tasks, recover, wait_for

from hare_py import Backoff, Caller, Connection, Response
from hare_py.conventions import loom
from hare_py.errors import ConfigError
from hare_py.transport import backend_for, parse_url
from hare_py.transport.base import ConnectOptions, Message, NatsSession, Properties

from .conftest import Node, cluster_args, free_port

pytestmark = [pytest.mark.chaos, pytest.mark.nats, pytest.mark.anyio]

TIMEOUT = 2.0  # each call's deadline
HEARTBEAT = 1.0  # seconds between the client's PINGs; two unanswered and the server is dead
FAST = Backoff(initial=0.05, maximum=0.5)
INSTANCE = "i1"
ROUTE = "any.echo"  # any instance of the service, through its queue group
# A server in lame duck mode waits this long before it closes its clients
# (spread over lame_duck_duration, which nats-server will not take below 30 s).
LDM_CONFIG = 'lame_duck_duration: "30s"\nlame_duck_grace_period: "2s"\n'


class TextAsJSON:
    """Load's payloads (ASCII bytes) as JSON strings, which Loom's envelopes carry."""

    content_type: str | None = "application/json"

    def check(self, payload: Any) -> None:
        if not isinstance(payload, bytes):
            raise ConfigError(f"payload must be bytes, got {type(payload).__name__}")

    def encode(self, payload: Any) -> bytes:
        return json.dumps(payload.decode("ascii")).encode()

    def decode(self, body: bytes, content_type: str | None) -> Any:
        value = json.loads(body)
        if not isinstance(value, str):
            raise ValueError(f"not a JSON string: {body[:60]!r}")
        return value.encode("ascii")


@pytest.fixture
def service() -> str:
    return f"chaos-{secrets.token_hex(4)}"


@asynccontextmanager
async def client_under_load(
    urls: str | Sequence[str], service: str, *, cls: type[Watched] = Watched, **options: Any
) -> AsyncIterator[tuple[Watched, Load, str, Connection]]:
    """A named client connection, a loom client, and 32 callers running against the
    echo service."""
    name = f"chaos-client-{uuid.uuid4().hex[:8]}"
    tasks_before = client_tasks()
    async with (
        Connection(urls, name=name, heartbeat=HEARTBEAT, backoff=FAST) as conn,
        cls.start(
            conn,
            timeout=TIMEOUT,
            backoff=FAST,
            codec=TextAsJSON(),
            convention=loom(service),
            **options,
        ) as client,
    ):
        await wait_for(lambda: client.connected, 30, "the first session")
        load = Load(client, ROUTE, callers=32, timeout=TIMEOUT)
        async with anyio.create_task_group() as tg:
            tg.start_soon(load.run)
            await wait_for(lambda: load.ok >= 100, 30, "load to warm up")
            try:
                yield client, load, name, conn
            finally:
                load.stop()
    # Everything the client started has ended with its block.
    assert client_tasks() == tasks_before


def check_reconnects(client: Watched, reconnects: int) -> None:
    assert len(client.metas) == 1 + reconnects, [m.reply_queue for m in client.metas]
    assert client.inits == 1, "a reconnect must not rerun init"
    assert client.reply_queue == client.metas[-1].reply_queue
    # One inbox for the client's life (subscribed anew on each session), so that the
    # replies to what a draining session sent reach its successor.
    inboxes = {m.reply_queue for m in client.metas}
    assert len(inboxes) == 1, inboxes


async def wait_server_holds_one_inbox(node: Node, name: str, client: Watched) -> None:
    """The server sees one connection named ``name``, subscribed to the client's current
    inbox and nothing else (old sessions' subscriptions gone)."""
    expected = [[f"{client.reply_queue}.*"]]
    seen: list[list[str]] = []

    def settled() -> bool:
        nonlocal seen
        seen = node.subscriptions_of(name)
        return seen == expected

    with anyio.move_on_after(10):
        while not await anyio.to_thread.run_sync(settled):
            await anyio.sleep(0.1)
        return
    raise AssertionError(f"the server holds {seen} for {name}, expected {expected}")


@asynccontextmanager
async def proxied(node: Node) -> AsyncIterator[tuple[FaultProxy, str]]:
    proxy = FaultProxy(node.port)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.run)
        try:
            yield proxy, proxy.url(node.url)
        finally:
            tg.cancel_scope.cancel()


async def test_server_killed_and_restarted(
    nodes: Callable[..., Node], echo_server: Any, service: str, report: Any
) -> None:
    """Server SIGKILLed and restarted on its port, twice: typed failures, then calls succeed."""
    node = nodes()
    echo_server([node.url], service, INSTANCE)
    outages, recoveries = [], []
    async with client_under_load(node.url, service) as (client, load, name, _):
        for n in range(1, 3):
            fault_at = anyio.current_time()
            node.kill()
            await wait_for(lambda: not client.connected, 5, "the loss to be seen")
            await anyio.sleep(1.0)
            await anyio.to_thread.run_sync(node.start)
            back_at = anyio.current_time()
            outages.append(round(back_at - fault_at, 3))
            await wait_for(partial(lambda n: len(client.metas) == n + 1, n), 15, "a new session")
            recoveries.append(await recover(load, back_at))
        check_reconnects(client, reconnects=2)
        await wait_server_holds_one_inbox(node, name, client)
    load.check()
    assert load.errors["ConnectionLost"] + load.errors["RequestTimeout"] > 0  # it was felt
    report(
        {
            "fault": "server killed and restarted",
            "outage_s": max(outages),
            "recovery_after_up_s": max(recoveries),
            **load.summary(),
        }
    )


@pytest.mark.parametrize("cut", ["reset", "half_close"])
async def test_tcp_connection_cut(
    nodes: Callable[..., Node], echo_server: Any, service: str, report: Any, cut: str
) -> None:
    """The client's TCP connection is reset (RST) or half-closed (FIN) by the network."""
    node = nodes()
    echo_server([node.url], service, INSTANCE)
    async with (
        proxied(node) as (proxy, url),
        client_under_load(url, service) as (client, load, name, _),
    ):
        fault_at = anyio.current_time()
        if cut == "reset":
            assert await proxy.reset() == 1
        else:
            assert proxy.half_close() == 1
        await wait_for(lambda: len(client.metas) == 2, 4 * HEARTBEAT + 5, "a new session")
        recovery = await recover(load, fault_at)
        check_reconnects(client, reconnects=1)
        await wait_server_holds_one_inbox(node, name, client)
    load.check()
    report({"fault": f"tcp {cut}", "recovery_s": recovery, **load.summary()})


async def test_silent_stall_is_detected_by_pings(
    nodes: Callable[..., Node], echo_server: Any, service: str, report: Any
) -> None:
    """A silent stall is declared dead by unanswered PINGs within ~3 heartbeats; calls resume."""
    node = nodes()
    echo_server([node.url], service, INSTANCE)
    async with (
        proxied(node) as (proxy, url),
        client_under_load(url, service) as (client, load, name, _),
    ):
        fault_at = anyio.current_time()
        proxy.stall()
        await wait_for(lambda: not client.connected, 5 * HEARTBEAT, "PINGs to notice")
        detected = round(anyio.current_time() - fault_at, 3)
        assert detected <= 3 * HEARTBEAT + 0.5
        proxy.resume()
        recovery = await recover(load, fault_at)
        check_reconnects(client, reconnects=1)
        await wait_server_holds_one_inbox(node, name, client)
    load.check()
    assert load.errors["RequestTimeout"] > 0  # the stalled calls waited out their deadlines
    report(
        {
            "fault": "silent stall",
            "heartbeat_s": HEARTBEAT,
            "detected_s": detected,
            "recovery_s": recovery,
            **load.summary(),
        }
    )


@pytest.mark.parametrize("echo_on", ["other", "lame_duck"])
async def test_lame_duck_mode(
    nodes: Callable[..., Node], echo_server: Any, service: str, report: Any, echo_on: str
) -> None:
    """The client's server in lame duck mode: it moves to the other node and loses no call."""
    ports = free_port(), free_port()
    a = nodes(args=cluster_args("a", ports[0], [ports[1]]), config=LDM_CONFIG)
    b = nodes(args=cluster_args("b", ports[1], [ports[0]]))
    await wait_for_cluster([a, b])
    echo_server([b.url if echo_on == "other" else a.url], service, INSTANCE)
    async with client_under_load(a.url, service) as (client, load, name, conn):
        await wait_for_discovery(conn, 1)
        fault_at = anyio.current_time()
        a.lame_duck()
        await wait_for(lambda: conn.url is not None and conn.url.port == b.port, 10, "b")
        connection_moved = round(anyio.current_time() - fault_at, 3)
        await wait_for(lambda: len(client.metas) == 2, 30, "a session on b")
        session_moved = round(anyio.current_time() - fault_at, 3)
        # a closes its clients after its grace period, then exits.
        await wait_for(a.exited, 30, "the lame duck to exit")
        recovery = await recover(load, fault_at)
        check_reconnects(client, reconnects=1)
        await wait_server_holds_one_inbox(b, name, client)
    load.check()
    report(
        {
            "fault": f"lame duck mode (echo server on the {echo_on.replace('_', ' ')})",
            "connection_moved_s": connection_moved,
            "session_moved_s": session_moved,
            "recovery_s": recovery,
            **load.summary(),
        }
    )
    # Make before break: had a session stayed on a until it hung up, the calls in flight
    # then would have failed; none did, whatever went through or was routed to a.
    assert dict(load.errors) == {}, "a lame duck's calls must drain, not fail"


async def test_reply_floods(
    nodes: Callable[..., Node], echo_server: Any, service: str, report: Any
) -> None:
    """Thousands of bogus replies on the inbox are dropped; no call fails or is misdelivered."""

    class Recording(Watched):
        """Remembers the correlation ids of replies already delivered."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.answered: list[str] = []

        async def handle_response(self, response: Response, caller: Caller, state: Any) -> Any:
            self.answered.append(response.correlation_id)
            return await super().handle_response(response, caller, state)

    node = nodes()
    echo_server([node.url], service, INSTANCE)
    url = parse_url(node.url)
    forged = json.dumps({"ok": True, "payload": "forged", "error": ""}).encode()
    malformed = [
        b"",
        b"{",
        b"[]",
        b'{"ok": "yes"}',
        b'{"payload": "no ok"}',
        json.dumps({"ok": False, "payload": None, "error": "forged failure"}).encode(),
    ]
    flooded = 0
    async with client_under_load(node.url, service, cls=Recording) as (client, load, name, _):
        assert isinstance(client, Recording)
        async with (
            backend_for(url).connect(url, ConnectOptions(name="flooder")) as flooder,
            raw_nats(node.port) as raw,
        ):
            session = await flooder.open_session()
            assert isinstance(session, NatsSession)
            for _ in range(20):
                inbox = client.reply_queue
                assert inbox is not None
                done = client.answered[-200:]  # these callers have their replies
                batch = [Message("", f"{inbox}.{cid}", forged) for cid in done]
                for i in range(100):
                    unknown = f"{inbox}.{secrets.token_urlsafe(16)}"
                    batch.append(Message("", unknown, forged))
                    batch.append(Message("", unknown, os.urandom(64)))
                    batch.append(Message("", unknown, malformed[i % len(malformed)]))
                    batch.append(
                        Message("", unknown, forged, Properties(headers={"Status": "200"}))
                    )
                await session.send(batch)
                # A forged no-responders status for replies already delivered.
                await raw.no_responders([f"{inbox}.{cid}" for cid in done[:50]])
                flooded += len(batch) + min(50, len(done))
                await anyio.sleep(0.05)
            await session.flush(5)
            await session.close()
        settled = anyio.current_time()
        await wait_for(lambda: load.ok_after(settled) >= 200, 30, "calls after the flood")
        check_reconnects(client, reconnects=0)
        await wait_server_holds_one_inbox(node, name, client)
    load.check()
    assert dict(load.errors) == {}, "a flood must not fail a call"
    report({"fault": "reply floods", "flooded": flooded, **load.summary()})


async def test_random_callback_crashes(
    nodes: Callable[..., Node], echo_server: Any, service: str, report: Any
) -> None:
    """Random callback crashes: ClientCrashed, restarts, calls go on, no subscription leaks."""
    node = nodes()
    echo_server([node.url], service, INSTANCE)
    async with client_under_load(
        node.url, service, cls=Crashy, max_restarts=10_000, within=1.0
    ) as (client, load, name, _):
        assert isinstance(client, Crashy)
        client.crash_rate = 0.002
        await wait_for(lambda: client.inits >= 5, 30, "several crashes")
        client.crash_rate = 0.0
        calm_at = anyio.current_time()
        recovery = await recover(load, calm_at)
        assert load.errors["ClientCrashed"] > 0
        await wait_server_holds_one_inbox(node, name, client)
    load.check()
    assert set(load.errors) == {"ClientCrashed"}, load.errors
    report(
        {
            "fault": "callback crashes",
            "restarts": client.inits - 1,
            "recovery_s": recovery,
            **load.summary(),
        }
    )


async def test_cluster_failover_through_connect_urls(
    nodes: Callable[..., Node], echo_server: Any, service: str, report: Any
) -> None:
    """Given only node 1 of 3, the client fails over to a node learnt from connect_urls."""
    ports = [free_port() for _ in range(3)]
    cluster = [
        nodes(args=cluster_args(f"n{i + 1}", port, [p for p in ports if p != port]))
        for i, port in enumerate(ports)
    ]
    await wait_for_cluster(cluster)
    first, others = cluster[0], cluster[1:]
    echo_server([cluster[2].url], service, INSTANCE)
    async with client_under_load(first.url, service) as (client, load, name, conn):
        assert [u.port for u in conn.urls] == [first.port]
        await wait_for_discovery(conn, 2)
        fault_at = anyio.current_time()
        first.kill()
        await wait_for(lambda: len(client.metas) == 2, 10, "a session on another node")
        recovery = await recover(load, fault_at)
        assert conn.url is not None
        assert conn.url.port in {n.port for n in others}, conn.url
        assert {u.port for u in conn.urls} == {n.port for n in cluster}  # from connect_urls
        check_reconnects(client, reconnects=1)
        now_on = next(n for n in others if n.port == conn.url.port)
        await wait_server_holds_one_inbox(now_on, name, client)
    load.check()
    report(
        {
            "fault": "cluster node killed (failover via connect_urls)",
            "recovery_s": recovery,
            "moved_to": f"n{cluster.index(now_on) + 1}",
            **load.summary(),
        }
    )


# --- helpers -------------------------------------------------------------------------


async def wait_for_cluster(cluster: Sequence[Node]) -> None:
    """Every node has a route to every other."""

    def formed() -> bool:
        return all(node.monitor("/routez")["num_routes"] >= len(cluster) - 1 for node in cluster)

    with anyio.move_on_after(20):
        while not await anyio.to_thread.run_sync(formed):
            await anyio.sleep(0.1)
        return
    raise AssertionError("the cluster's routes did not form within 20 s")


async def wait_for_discovery(conn: Connection, others: int) -> None:
    """The live NATS connection has learnt ``others`` more servers from INFO."""

    async def learnt() -> int:
        with anyio.fail_after(5):
            current = await conn.wait_connected()
        return len(current.discovered_urls)

    with anyio.fail_after(10):
        while await learnt() < others:
            await anyio.sleep(0.05)


class RawNats:
    """A bare NATS client on a socket, for what hare_py's own refuses to send."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream

    async def no_responders(self, subjects: Sequence[str]) -> None:
        """Publish a no-responders status (``NATS/1.0 503``) to each subject."""
        head = b"NATS/1.0 503\r\n\r\n"
        data = b"".join(
            b"HPUB %s %d %d\r\n%s\r\n" % (s.encode(), len(head), len(head), head) for s in subjects
        )
        await self.stream.send(data + b"PING\r\n")


@asynccontextmanager
async def raw_nats(port: int) -> AsyncIterator[RawNats]:
    with anyio.fail_after(10):
        stream = await anyio.connect_tcp("127.0.0.1", port)
    async with stream:
        with anyio.fail_after(10):
            await stream.receive()  # INFO
            connect = {"verbose": False, "pedantic": False, "headers": True, "name": "forger"}
            await stream.send(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
            assert b"PONG" in await stream.receive()

        async def drain() -> None:  # PONGs, and PINGs unanswered: the test is short
            async for _ in stream:
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            yield RawNats(stream)
            tg.cancel_scope.cancel()
