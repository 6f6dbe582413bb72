"""SandboxNatsBroker's backdoor: URLs, history, kills, stalls, outages, lame duck, faults."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from inbox import Inbox

from hare_py import Connection
from hare_py.errors import ConfigError, ConnectFailed, ConnectionLost, UnsendableMessage
from hare_py.testing import SandboxNatsBroker
from hare_py.transport import ConnectOptions, backend_for, parse_url
from hare_py.transport.base import NATS, Message, Properties, TransportConnection
from hare_py.transport.sandbox_nats import (
    SandboxNatsBackend,
    SandboxNatsConnection,
    SandboxNatsSession,
)

pytestmark = pytest.mark.anyio

TESTING_PAGE = Path(__file__).resolve().parent.parent / "docs" / "testing.md"


def msg(subject: str, body: bytes = b"", reply: str | None = None) -> Message:
    return Message("", subject, body, Properties(reply_to=reply))


@asynccontextmanager
async def connect(
    url: str, name: str | None = None, heartbeat: float = 0
) -> AsyncIterator[SandboxNatsConnection]:
    parsed = parse_url(url)
    options = ConnectOptions(name=name, heartbeat=heartbeat)
    async with backend_for(parsed).connect(parsed, options) as conn:
        assert isinstance(conn, SandboxNatsConnection)
        yield conn


async def session(conn: TransportConnection, **kwargs: Any) -> SandboxNatsSession:
    opened = await conn.open_session(**kwargs)
    assert isinstance(opened, SandboxNatsSession)
    return opened


@pytest.fixture
def broker() -> Iterator[SandboxNatsBroker]:
    """A fresh broker, unregistered after the test."""
    with SandboxNatsBroker() as b:
        yield b


def test_the_url_names_the_broker_and_picks_the_backend(broker: SandboxNatsBroker) -> None:
    """sandbox+nats://NAME parses, renders back, and reaches the NATS sandbox backend."""
    url = parse_url(broker.url)
    assert (url.scheme, url.host, str(url)) == ("sandbox+nats", broker.name, broker.url)
    backend = backend_for(url)
    assert isinstance(backend, SandboxNatsBackend) and backend.wire_protocol == NATS
    with pytest.raises(ConfigError, match="needs a broker name"):
        parse_url("sandbox+nats://")


def test_names_are_unique_per_registry(broker: SandboxNatsBroker) -> None:
    """A second NATS broker may not take a name in use; an AMQP sandbox's names are apart."""
    from hare_py.testing import SandboxBroker

    with pytest.raises(ConfigError, match="already registered"):
        SandboxNatsBroker(broker.name)
    with SandboxBroker(broker.name) as amqp:
        assert amqp.url == f"sandbox://{broker.name}"


async def test_an_unknown_broker_fails_to_connect() -> None:
    """A URL naming no registered broker is ConnectFailed, naming the way to make one."""
    with anyio.fail_after(5), pytest.raises(ConnectFailed, match="SandboxNatsBroker"):
        async with connect("sandbox+nats://nobody-here"):
            pass


async def test_a_supervised_connection_opens_nats_sessions(broker: SandboxNatsBroker) -> None:
    """hare_py.Connection reaches the sandbox and opens NATS sessions on it."""
    with anyio.fail_after(5):
        async with Connection(broker.url) as conn:
            transport = await conn.wait_connected()
            opened = await session(transport)
            inbox = Inbox()
            await opened.subscribe("hello", inbox)
            await opened.send([msg("hello", b"world")])
            assert (await inbox.get()).body == b"world"
    assert broker.connections == {}


async def test_history_and_introspection(broker: SandboxNatsBroker) -> None:
    """ops() filters the history; connections, sessions and subscribers show who is there."""
    with anyio.fail_after(5):
        async with connect(broker.url, name="svc") as conn:
            s = await session(conn)
            sid = await s.subscribe("orders.*", Inbox(), queue="workers")
            await s.send([msg("orders.new", b"1")])
            await s.flush(1)
            [info] = broker.connections.values()
            assert (info.id, info.name, info.sessions, info.stalled) == (
                conn.id,
                "svc",
                (s.id,),
                False,
            )
            [sub] = broker.subscribers("orders.new")
            assert (sub.sid, sub.subject, sub.queue) == (int(sid), "orders.*", "workers")
            assert sub.session == s.id and broker.subscribers("orders.new.x") == []
            assert broker.sessions[s.id].subscriptions == (int(sid),)
    [publish] = broker.ops("publish", subject="orders.new")
    assert (publish["body"], publish["delivered"], publish.connection) == (b"1", 1, conn.id)
    names = [op.name for op in broker.history]
    assert names[:4] == ["connect", "open_session", "subscribe", "publish"]
    assert "flush" in names and names[-1] == "close_connection"
    broker.clear_history()
    assert broker.history == []


async def test_backdoor_publish_follows_the_servers_rules(broker: SandboxNatsBroker) -> None:
    """publish() returns its reach; a wildcard subject reaches wildcards; an empty token nobody."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            s = await session(conn)
            literal, wild = Inbox(), Inbox()
            await s.subscribe("svc.inst1.call", literal)
            await s.subscribe("svc.*.call", wild)
            assert broker.publish("svc.inst1.call", b"a", headers={"K": ["1", "2"]}) == 2
            assert broker.publish("svc.*.call", b"b", reply="_INBOX.x.1") == 1
            assert broker.publish("svc..call", b"c") == 0
            await s.flush(1)
            assert [d.body for d in literal.pending()] == [b"a"]
            first, second = wild.pending()
            assert first.properties.headers == {"K": ["1", "2"]}
            assert (second.routing_key, second.properties.reply_to) == ("svc.*.call", "_INBOX.x.1")


@pytest.mark.parametrize("by", ["broker", "network"])
async def test_killing_a_connection_closes_its_sessions(broker: SandboxNatsBroker, by: str) -> None:
    """kill_connection closes the connection with the reason, and every session by 'connection'."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            first, second = await session(conn), await session(conn)
            await first.subscribe("k", Inbox())
            broker.kill_connection(conn.id, "Stale Connection", by=by)  # type: ignore[arg-type]
            reason = await conn.wait_closed()
            reasons = [await first.wait_closed(), await second.wait_closed()]
            with pytest.raises(ConnectionLost, match="Stale Connection"):
                await first.send([msg("k")])
    assert (reason.text, reason.by) == ("Stale Connection", by)
    assert [(r.text, r.by) for r in reasons] == [("Stale Connection", "connection")] * 2
    assert broker.subscriptions == [] and broker.connections == {}
    with pytest.raises(ConfigError, match="no open connection"):
        broker.kill_connection(conn.id)


async def test_down_refuses_connects_until_up(broker: SandboxNatsBroker) -> None:
    """down() drops every connection (the socket closes) and refuses new ones; up() ends it."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            broker.down()
            reason = await conn.wait_closed()
        assert (reason.text, reason.by) == ("the server closed the socket", "network")
        assert not broker.is_up
        with pytest.raises(ConnectFailed, match="down"):
            async with connect(broker.url):
                pass
        broker.up()
        async with connect(broker.url) as conn:
            assert conn.is_open


async def test_scripted_connect_results_come_in_order(broker: SandboxNatsBroker) -> None:
    """script_connect: each queued result answers one connect: raise it, or succeed on None."""
    broker.script_connect(ConnectFailed("scripted"), None)
    with anyio.fail_after(5):
        with pytest.raises(ConnectFailed, match="scripted"):
            async with connect(broker.url):
                pass
        async with connect(broker.url) as conn:
            assert conn.is_open
    [failed, ok] = broker.ops("connect")
    assert isinstance(failed.error, ConnectFailed) and ok.error is None


async def test_a_stall_holds_traffic_until_resumed(broker: SandboxNatsBroker) -> None:
    """A stalled connection gets nothing and sends nothing; a flush times out; resume drains it."""
    with anyio.fail_after(5):
        async with connect(broker.url) as a, connect(broker.url) as b:
            sa, sb = await session(a), await session(b)
            to_a, to_b = Inbox(), Inbox()
            await sa.subscribe("to.a", to_a)
            await sb.subscribe("to.b", to_b)
            broker.stall(a.id)
            assert broker.is_stalled(a.id)
            await sb.send([msg("to.a", b"1"), msg("to.a", b"2")])
            await sa.send([msg("to.b", b"from a")])
            with pytest.raises(ConnectionLost, match="did not answer a PING"):
                await sa.flush(0.05)
            await sb.flush(1)
            assert to_a.pending() == [] and to_b.pending() == []
            assert a.is_open and sa.is_open
            broker.resume(a.id)
            await sa.flush(1)
            await sb.flush(1)
            assert [d.body for d in to_a.pending()] == [b"1", b"2"]
            assert [d.body for d in to_b.pending()] == [b"from a"]


async def test_a_heartbeat_notices_a_stall(broker: SandboxNatsBroker) -> None:
    """With a heartbeat, two PINGs without a PONG close the connection by 'network'."""
    with anyio.fail_after(5):
        async with connect(broker.url, heartbeat=0.02) as conn:
            s = await session(conn)
            await anyio.sleep(0.1)  # PINGs answered: still open
            assert conn.is_open
            broker.stall(conn.id)
            reason = await conn.wait_closed()
            session_reason = await s.wait_closed()
    assert reason.by == "network" and "no PONG to 2 PINGs" in reason.text
    assert session_reason.by == "connection"
    assert broker.connections == {}


async def test_a_message_routed_before_the_unsubscribe_survives_a_stall(
    broker: SandboxNatsBroker,
) -> None:
    """The callback stays until the server has seen the UNSUB, even if that takes a stall."""
    with anyio.fail_after(5):
        async with connect(broker.url) as a, connect(broker.url) as b:
            sa, sb = await session(a), await session(b)
            inbox = Inbox()
            sid = await sa.subscribe("late", inbox)
            broker.stall(a.id)
            await sb.send([msg("late", b"routed before")])
            await sa.unsubscribe(sid)  # waits in the stall, behind the message
            broker.resume(a.id)
            await sa.flush(1)
            await sb.send([msg("late", b"after")])
            await sb.flush(1)
            await sa.flush(1)
    assert [d.body for d in inbox.pending()] == [b"routed before"]


async def test_drop_and_delay_faults(broker: SandboxNatsBroker) -> None:
    """drop loses 'times' deliveries on a subject; delay lets later messages overtake."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            s = await session(conn)
            inbox = Inbox()
            await s.subscribe("f.>", inbox)
            dropped = broker.drop("f.drop.*", times=1)
            broker.delay(0.05, "f.slow")
            await s.send([msg("f.drop.x", b"lost"), msg("f.drop.x", b"kept")])
            await s.send([msg("f.slow", b"late"), msg("f.fast", b"early")])
            got = [(await inbox.get()).body for _ in range(3)]
    assert got == [b"kept", b"early", b"late"]
    assert dropped.hits == 1 and not dropped.active
    assert len(broker.faults) == 1
    broker.clear_faults()
    assert broker.faults == []


async def test_a_dropped_request_is_not_returned(broker: SandboxNatsBroker) -> None:
    """A request lost after routing gets no 503: its caller can only time out."""
    with anyio.fail_after(5):
        async with connect(broker.url) as server_conn, connect(broker.url) as client_conn:
            server = await session(server_conn)
            await server.subscribe("svc.call", Inbox(), queue="svc")
            returns, replies = Inbox(), Inbox()
            client = await session(client_conn, on_return=returns)
            await client.subscribe("_INBOX.me.*", replies)
            broker.drop("svc.call", connection=server_conn.id)
            await client.send([msg("svc.call", b"q", reply="_INBOX.me.1")])
            await client.flush(1)
            await server.flush(1)
    assert returns.pending() == [] and replies.pending() == []


async def test_lame_duck_mode_drains(broker: SandboxNatsBroker) -> None:
    """Lame duck settles the reason, drains sessions that still work, and refuses connects."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            s = await session(conn)
            inbox = Inbox()
            await s.subscribe("ld", inbox)
            broker.lame_duck()
            reason = await conn.wait_closed()
            await s.wait_draining()
            assert (reason.text, reason.by) == ("lame duck mode", "broker")
            assert s.draining and s.is_open and broker.in_lame_duck_mode
            await s.send([msg("ld", b"still here")])
            assert (await inbox.get()).body == b"still here"
            with pytest.raises(ConnectionLost):
                await conn.open_session()
            with pytest.raises(ConnectFailed, match="lame duck"):
                async with connect(broker.url):
                    pass
            broker.down()
            closed = await s.wait_closed()
    assert (closed.text, closed.by) == ("the server closed the socket", "connection")


async def test_a_retired_session_hands_its_queue_group_to_its_successor(
    broker: SandboxNatsBroker,
) -> None:
    """retire(successor): the lame duck's session leaves the group, the successor (on a new
    connection once the server is back up) takes every request, and the old still sends."""
    with anyio.fail_after(5):
        async with connect(broker.url) as conn:
            old = await session(conn)
            on_old = Inbox()
            await old.subscribe("work", on_old, queue="g")
            broker.lame_duck()
            await old.wait_draining()
            broker.up()
            try:
                async with connect(broker.url) as conn2:
                    new = await session(conn2)
                    on_new = Inbox()
                    await new.subscribe("work", on_new, queue="g")
                    await old.retire(new, 1.0)
                    still_open = old.is_open
                    await old.send([msg("work", b"%d" % n) for n in range(20)])
                    got = [(await on_new.get()).body for _ in range(20)]
                    await new.close()
            finally:
                await old.close()  # else leaving the lame duck's block waits for it
    assert still_open
    assert got == [b"%d" % n for n in range(20)] and on_old.pending() == []


async def test_a_lame_duck_connection_waits_for_its_sessions_to_close(
    broker: SandboxNatsBroker,
) -> None:
    """Leaving the connection's block in lame duck mode waits until its sessions close."""
    with anyio.fail_after(5):
        closed_first: list[str] = []
        async with connect(broker.url) as conn:
            s = await session(conn)
            broker.lame_duck()
            await s.wait_draining()

            async def finish() -> None:
                await anyio.sleep(0.05)
                closed_first.append("session")
                await s.close()

            async with anyio.create_task_group() as tg:
                tg.start_soon(finish)
                await conn.close()
                closed_first.append("connection")
    assert closed_first == ["session", "connection"]


async def test_a_custom_max_payload_is_enforced() -> None:
    """max_payload= sets what sessions report and refuse."""
    with SandboxNatsBroker(max_payload=100) as small, anyio.fail_after(5):
        async with connect(small.url) as conn:
            s = await session(conn)
            assert s.max_payload == 100
            await s.send([msg("x", b"x" * 100)])
            with pytest.raises(UnsendableMessage, match="max_payload of 100"):
                await s.send([msg("x", b"x" * 101)])
    with pytest.raises(ConfigError):
        SandboxNatsBroker(max_payload=0)


async def test_a_failing_callback_is_logged_and_delivery_goes_on(
    broker: SandboxNatsBroker,
) -> None:
    """A callback that raises is logged; the next message still arrives."""
    calls: list[bytes] = []

    def flaky(delivery: Any) -> None:
        calls.append(delivery.body)
        if delivery.body == b"boom":
            raise RuntimeError("callback failed")

    with anyio.fail_after(5), structlog.testing.capture_logs() as logs:
        async with connect(broker.url) as conn:
            s = await session(conn)
            await s.subscribe("cb", flaky)
            await s.send([msg("cb", b"boom"), msg("cb", b"fine")])
            await s.flush(1)
    assert calls == [b"boom", b"fine"]
    assert any(e["event"] == "sandbox_nats.callback_failed" for e in logs)


async def test_the_testing_pages_nats_example_runs() -> None:
    """docs/testing.md's Loom example passes on the sandbox: any instance takes the task."""
    page = TESTING_PAGE.read_text()
    [code] = [b for b in re.findall(r"^```python\n(.*?)^```", page, re.M | re.S) if "Nats" in b]
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    with anyio.fail_after(10):
        await namespace["test_any_instance_gets_the_task"]()
