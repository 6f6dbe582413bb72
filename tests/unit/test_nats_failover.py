"""Cluster discovery and lame duck mode on fake servers: the supervised Connection moves on
while the old connection stays up for the answers still on their way."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
from fake_nats import FakeServer, Peer, connected, fake_server, info_line

from hare_py import Backoff, Connection, ConnectionLost
from hare_py.transport.base import ConnectOptions, Delivery, Message, NatsSession, Properties
from hare_py.transport.nats._connection import connect
from hare_py.transport.url import parse_url

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0
SECRET = "s3cr3t-Pa55"


async def test_connect_urls_become_discovered_urls_with_this_urls_credentials() -> None:
    """INFO connect_urls (but our own server and malformed ones) are discovered with our
    credentials and parameters; a later INFO replaces them; no text shows the password."""
    with anyio.fail_after(TIMEOUT):
        async with fake_server() as server:
            own = f"127.0.0.1:{server.port}"
            urls = ["127.0.0.1:4301", own, "[::1]:4302", "nats://10.0.0.9:4303", "bad:x:y"]
            peers: list[Peer] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(_serve_handshakes, server, info_line(connect_urls=urls), peers)
                url = parse_url(server.url(f"alice:{SECRET}@", "heartbeat=0&name=n1"))
                async with connect(url, ConnectOptions()) as conn:
                    first = conn.discovered_urls
                    await _until(lambda: bool(peers))
                    await peers[0].send(info_line(connect_urls=["127.0.0.1:4309"]))
                    await _until(lambda: len(conn.discovered_urls) == 1)
                    second = conn.discovered_urls
                tg.cancel_scope.cancel()
    assert [(u.host, u.port) for u in first] == [
        ("127.0.0.1", 4301),
        ("::1", 4302),
        ("10.0.0.9", 4303),
    ]
    assert {(u.scheme, u.username, u.password, u.param("name")) for u in first} == {
        ("nats", "alice", SECRET, "n1")
    }
    assert SECRET not in repr(first) and SECRET not in " ".join(map(str, first))
    assert [(u.host, u.port) for u in second] == [("127.0.0.1", 4309)]


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await anyio.sleep(0.001)


async def _serve_handshakes(server: FakeServer, info: bytes, peers: list[Peer]) -> None:
    while True:
        peer = await server.accept()
        await peer.handshake(info)
        peers.append(peer)


async def test_the_supervised_connection_fails_over_to_a_discovered_server() -> None:
    """Given only server A, the Connection learns B from A's INFO and reconnects to B when A
    goes away; B joins its URL list."""
    with anyio.fail_after(TIMEOUT):
        async with fake_server() as b, fake_server() as a:
            a_peers: list[Peer] = []
            b_peers: list[Peer] = []
            async with anyio.create_task_group() as tg:
                discovered = info_line(connect_urls=[f"127.0.0.1:{b.port}"])
                tg.start_soon(_serve_handshakes, a, discovered, a_peers)
                tg.start_soon(_serve_handshakes, b, info_line(), b_peers)
                backoff = Backoff(initial=0.01, maximum=0.05)
                async with Connection(a.url(query="heartbeat=0"), backoff=backoff) as conn:
                    first = await conn.wait_connected()
                    assert conn.url is not None and conn.url.port == a.port
                    a.stop_listening()
                    await _until(lambda: bool(a_peers))
                    await a_peers[0].aclose()
                    await first.wait_closed()
                    second = await conn.wait_connected()
                    assert conn.url is not None and conn.url.port == b.port
                    ports = [u.port for u in conn.urls]
                    await _until(lambda: bool(b_peers))
                    assert second is not first and len(b_peers) == 1
                tg.cancel_scope.cancel()
    assert ports == [a.port, b.port]


async def test_lame_duck_moves_to_another_server_while_the_old_one_delivers_late_replies() -> None:
    """On lame duck mode the Connection connects to B at once; the old session is told it is
    draining and still receives the reply to its request; closing it lets the old
    connection hang up."""
    events: list[str] = []
    replies: list[Delivery] = []
    with anyio.fail_after(TIMEOUT):
        async with fake_server() as b, fake_server() as a:
            a_peers: list[Peer] = []
            b_peers: list[Peer] = []
            async with anyio.create_task_group() as tg:
                discovered = info_line(connect_urls=[f"127.0.0.1:{b.port}"])
                tg.start_soon(_serve_handshakes, a, discovered, a_peers)
                tg.start_soon(_serve_handshakes, b, info_line(), b_peers)
                backoff = Backoff(initial=0.01, maximum=0.05)
                async with Connection(a.url(query="heartbeat=0"), backoff=backoff) as conn:
                    old = await conn.wait_connected()
                    session = await old.open_session()
                    assert isinstance(session, NatsSession)
                    sid = await session.subscribe("_INBOX.t.*", replies.append)
                    await session.send(
                        [Message("", "svc.work", b"req", Properties(reply_to="_INBOX.t.1"))]
                    )
                    await _until(lambda: bool(a_peers))
                    peer = a_peers[0]
                    await peer.expect(b"SUB")
                    await peer.expect(b"PUB")
                    a.stop_listening()  # as nats-server does before it says ldm
                    await peer.send(info_line(ldm=True, connect_urls=[f"127.0.0.1:{b.port}"]))
                    await session.wait_draining()
                    events.append(f"draining open={session.is_open}")
                    new = await conn.wait_connected()
                    assert conn.url is not None
                    events.append(f"moved to b={conn.url.port == b.port} new={new is not old}")
                    await peer.send(b"MSG _INBOX.t.1 %s 5\r\nreply\r\n" % sid.encode())
                    await _until(lambda: bool(replies))
                    events.append("reply on the old session")
                    await session.close()
                    rest = await peer.until_closed()
                    events.append(f"old hung up after UNSUB={b'UNSUB' in rest}")
                tg.cancel_scope.cancel()
    assert events == [
        "draining open=True",
        "moved to b=True new=True",
        "reply on the old session",
        "old hung up after UNSUB=True",
    ]
    assert [r.body for r in replies] == [b"reply"]
    assert old.close_reason is not None and old.close_reason.text == "lame duck mode"
    assert old.close_reason.by == "broker"


async def test_a_lame_duck_connection_refuses_new_sessions_and_drains_within_its_timeout() -> None:
    """In lame duck mode, open_session raises, the open session still sends; a session that
    never closes is closed by "connection" once drain_timeout passes."""
    with anyio.fail_after(TIMEOUT):
        async with connected(query="heartbeat=0&drain_timeout=0.2") as (conn, peer):
            session = await conn.open_session()
            await peer.send(info_line(ldm=True))
            await session.wait_draining()
            assert session.draining and session.is_open
            assert conn.close_reason is not None and not conn.is_open
            with pytest.raises(ConnectionLost, match="lame duck mode"):
                await conn.open_session()
            await session.send([Message("", "still.works", b"x")])
            assert (await peer.expect(b"PUB")).args[0] == b"still.works"
        reason = await session.wait_closed()
    assert reason.by == "connection" and not session.draining
