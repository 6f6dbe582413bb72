"""Moving off a NATS server in lame duck mode, on fake servers A (the lame duck) and B: the
supervised Connection goes to B at once, and the RPC sessions move make before break, so
that nothing A still routes to them is lost."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import pytest
from fake_nats import FakeServer, Op, Peer, fake_server, info_line

from hare_py import Backoff, Connection, RPCClient, RPCServer
from hare_py.conventions import nats

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0  # bounds each test
CALL_TIMEOUT = 5.0  # each call's deadline: a lost reply fails the call within the test
# So long that a Connection backing off before it reconnects fails the test's bound.
NEVER = Backoff(initial=60.0, maximum=60.0, jitter=0.0)


@asynccontextmanager
async def cluster() -> AsyncIterator[tuple[FakeServer, FakeServer]]:
    """Fake servers B and A; A's INFO names B as the other server of its cluster."""
    async with fake_server() as b, fake_server() as a:
        yield a, b


def ldm_info(b: FakeServer) -> bytes:
    return info_line(ldm=True, connect_urls=[f"127.0.0.1:{b.port}"])


async def next_peer(server: FakeServer, info: bytes | None = None) -> Peer:
    peer = await server.accept()
    await peer.handshake(info)
    return peer


async def ops_until(peer: Peer, verb: bytes) -> list[Op]:
    """The client's operations up to the first ``verb``, which is last (PINGs are answered
    unless they are what is awaited)."""
    pings = verb == b"PING"
    ops = [await peer.op(pings=pings)]
    while ops[-1].verb != verb:
        ops.append(await peer.op(pings=pings))
    return ops


async def ops_until_closed(peer: Peer) -> list[Op]:
    """The client's operations, its PINGs answered, until it hangs up."""
    ops: list[Op] = []
    with suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        while True:
            ops.append(await peer.op(pings=False))
    return ops


def msg(subject: bytes, sid: bytes, body: bytes = b"", reply: bytes = b"") -> bytes:
    head = b" ".join(part for part in (subject, sid, reply) if part)
    return b"MSG %s %d\r\n%s\r\n" % (head, len(body), body)


# The assertions come after the fake servers' blocks, on what the test recorded: an
# exception inside them can be lost to the fake server's own cancellation.


async def test_the_connection_leaves_a_lame_duck_for_the_server_it_named_at_once() -> None:
    """After A's lame duck INFO the next connection is to B at once, none to A (still open)."""
    seen: dict[str, Any] = {}
    with anyio.fail_after(TIMEOUT):
        async with cluster() as (a, b):
            named = info_line(connect_urls=[f"127.0.0.1:{b.port}"])
            async with (
                Connection(a.url(query="heartbeat=0"), backoff=NEVER) as conn,
                anyio.create_task_group() as tg,
            ):
                peer = await next_peer(a, named)
                first = await conn.wait_connected()
                tg.start_soon(next_peer, b)
                await peer.send(ldm_info(b))
                await first.wait_closed()
                second = await conn.wait_connected()
                seen["moved to"] = conn.url.port if conn.url is not None else None
                seen["new, old draining"] = (second is not first, first.draining)
                seen["clients"] = (len(a.peers), len(b.peers))
                tg.cancel_scope.cancel()
    assert seen == {"moved to": b.port, "new, old draining": (True, True), "clients": (1, 1)}


async def test_replies_a_lame_duck_routes_to_the_old_session_still_reach_their_callers() -> None:
    """A reply A delivers after the move reaches its caller; the client unsubscribes on A after."""
    results: dict[str, Any] = {}
    seen: dict[str, Any] = {}

    async def call(client: RPCClient[Any], name: str) -> None:
        results[name] = await client.request(name.encode(), f"svc.{name}", timeout=CALL_TIMEOUT)

    with anyio.fail_after(TIMEOUT):
        async with cluster() as (a, b):
            named = info_line(connect_urls=[f"127.0.0.1:{b.port}"])
            async with (
                Connection(a.url(query="heartbeat=0"), backoff=NEVER) as conn,
                RPCClient.start(conn, convention=nats()) as client,
                anyio.create_task_group() as tg,
            ):
                old = await next_peer(a, named)
                inbox_a = await old.expect(b"SUB")
                tg.start_soon(call, client, "one")
                one = await old.expect(b"PUB")
                await old.send(ldm_info(b))
                new = await next_peer(b)
                inbox_b = await new.expect(b"SUB")
                tg.start_soon(call, client, "two")
                two = await new.expect(b"PUB")  # new work goes through B
                # What A routed to the old session before it saw an UNSUB still counts.
                await old.send(msg(one.args[1], inbox_a.args[1], b"one"))
                seen["on A after the reply"] = [op.verb for op in await ops_until_closed(old)]
                await new.send(msg(two.args[1], inbox_b.args[1], b"two"))
                await _until(lambda: len(results) == 2)
                seen["one inbox"] = inbox_a.args[0] == inbox_b.args[0]
    assert results == {"one": b"one", "two": b"two"}
    assert seen == {"on A after the reply": [b"UNSUB"], "one inbox": True}


async def begin_move(
    a: FakeServer, b: FakeServer, named: bytes
) -> tuple[Peer, Peer, list[Op], list[Op], Op]:
    """A server's session on A set up, A in lame duck mode, its successor on B set up:
    (old, new, A's SUBs, B's SUBs, the SUB of the svc.echo group on A)."""
    old = await next_peer(a, named)
    subs_a = (await ops_until(old, b"PING"))[:-1]
    await old.send(b"PONG\r\n")
    group = next(op for op in subs_a if op.args[0] == b"svc.echo")
    await old.send(ldm_info(b))
    new = await next_peer(b)
    subs_b = (await ops_until(new, b"PING"))[:-1]
    await new.send(b"PONG\r\n")  # the successor is set up
    return old, new, subs_a, subs_b, group


class Echo(RPCServer[None]):
    pass  # the default handle_request echoes


async def test_a_server_moves_its_queue_group_once_the_lame_duck_routes_to_its_successor() -> None:
    """Queue group moved once A routes B's probe; what A sent before its PONG is answered."""
    seen: dict[str, Any] = {}
    with anyio.fail_after(TIMEOUT):
        async with cluster() as (a, b):
            named = info_line(connect_urls=[f"127.0.0.1:{b.port}"])
            async with (
                anyio.create_task_group() as tg,
                Connection(a.url(query="heartbeat=0"), backoff=NEVER) as conn,
                Echo.start(conn, convention=nats("svc"), routing_keys=["svc.echo"]) as server,
            ):
                old, new, subs_a, subs_b, group = await begin_move(a, b, named)
                probe = await new.expect(b"SUB")
                sent = await old.expect(b"PUB")  # published at A until it reaches B
                await new.send(msg(probe.args[0], probe.args[1]))
                on_a: list[Op] = []
                while sum(op.verb == b"UNSUB" for op in on_a) < len(subs_a):
                    on_a.append(await old.op())
                # Before the PONGs, A still delivers to the subscription it was told to end.
                request = msg(b"svc.echo", group.args[-1], b"hi", reply=b"_INBOX.c.1")
                pongs = b"PONG\r\n" * sum(op.verb == b"PING" for op in on_a)
                await old.send(request + pongs)
                on_a += await ops_until_closed(old)
                answer = (await ops_until(new, b"PUB"))[-1]
                seen["group"] = group.args[1]
                seen["probe"] = (
                    probe.args[0].startswith(b"_INBOX."),
                    sent.args[0] == probe.args[0],
                )
                seen["subscribed alike"] = [op.args[0] for op in subs_b] == [
                    op.args[0] for op in subs_a
                ]
                seen["on A"] = sorted({op.verb for op in on_a if op.args[:1] != probe.args[:1]})
                seen["unsubscribed"] = sum(op.verb == b"UNSUB" for op in on_a) == len(subs_a)
                seen["answer"] = (answer.args[0], answer.payload)
                seen["connected"] = server.connected
                tg.start_soon(ops_until_closed, new)  # PONGs for the drain when it stops
    assert seen == {
        "group": b"q",
        "probe": (True, True),
        "subscribed alike": True,
        "on A": [b"PING", b"UNSUB"],
        "unsubscribed": True,
        "answer": (b"_INBOX.c.1", b"hi"),
        "connected": True,
    }


async def test_a_probe_the_permissions_refuse_ends_the_probe_not_the_successor() -> None:
    """A probe B's permissions refuse is given up; B's session stays, A's is drained anyway."""
    seen: dict[str, Any] = {}
    with anyio.fail_after(TIMEOUT):
        async with cluster() as (a, b):
            named = info_line(connect_urls=[f"127.0.0.1:{b.port}"])
            async with (
                anyio.create_task_group() as tg,
                Connection(a.url(query="heartbeat=0"), backoff=NEVER) as conn,
                Echo.start(conn, convention=nats("svc"), routing_keys=["svc.echo"]) as server,
            ):
                old = await next_peer(a, named)
                subs_a = await ops_until(old, b"PING")
                await old.send(b"PONG\r\n")
                await old.send(ldm_info(b))
                new = await next_peer(b)
                subs_b = await ops_until(new, b"PING")
                await new.send(b"PONG\r\n")
                group = next(op for op in subs_b if op.args[0] == b"svc.echo")
                probe = await new.expect(b"SUB")
                refusal = b"-ERR 'Permissions Violation for Subscription to \"%s\"'\r\n"
                await new.send(refusal % probe.args[0])
                on_a = await ops_until_closed(old)
                # B is still served: a request there is answered there.
                await new.send(msg(b"svc.echo", group.args[-1], b"ok", reply=b"_INBOX.c.2"))
                answer = (await ops_until(new, b"PUB"))[-1]
                seen["unsubscribed on A"] = sum(op.verb == b"UNSUB" for op in on_a)
                seen["answer"] = (answer.args[0], answer.payload)
                seen["connected"] = server.connected
                seen["subscriptions"] = len(subs_a) - 1
                tg.start_soon(ops_until_closed, new)  # PONGs for the drain when it stops
    assert seen == {
        "unsubscribed on A": seen["subscriptions"],
        "answer": (b"_INBOX.c.2", b"ok"),
        "connected": True,
        "subscriptions": 10,
    }


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await anyio.sleep(0.001)


async def test_a_server_stopped_mid_move_drains_the_session_it_was_leaving() -> None:
    """Stopped while its move off A waits for its probe: the session on A is drained as
    well as its successor on B (every subscription ended, what A routed before its PONG
    answered), not closed with what A still routes to it."""
    seen: dict[str, Any] = {}
    with anyio.fail_after(TIMEOUT):
        async with cluster() as (a, b):
            named = info_line(connect_urls=[f"127.0.0.1:{b.port}"])
            async with (
                anyio.create_task_group() as tg,
                Connection(a.url(query="heartbeat=0"), backoff=NEVER) as conn,
                Echo.start(conn, convention=nats("svc"), routing_keys=["svc.echo"]) as server,
            ):
                old, new, subs_a, subs_b, group = await begin_move(a, b, named)
                await new.expect(b"SUB")  # the move's probe: never routed, so the move waits
                await old.expect(b"PUB")
                on_b: list[Op] = []

                async def play_b() -> None:
                    on_b.extend(await ops_until_closed(new))

                tg.start_soon(play_b)
                tg.start_soon(server.stop)  # stop the server now, mid-move
                on_a: list[Op] = []
                while sum(op.verb == b"UNSUB" for op in on_a) < len(subs_a):
                    on_a.append(await old.op())  # its PINGs unanswered for now
                # Before its PONGs, A still delivers to the subscriptions it was told to end.
                request = msg(b"svc.echo", group.args[-1], b"hi", reply=b"_INBOX.c.1")
                pongs = b"PONG\r\n" * sum(op.verb == b"PING" for op in on_a)
                await old.send(request + pongs)
                on_a += await ops_until_closed(old)
                await conn.aclose()
            # The answer may leave through either server: both route it to the caller.
            answers = [(op.args[0], op.payload) for op in on_a + on_b if op.verb == b"PUB"]
            seen["unsubscribed on A"] = sum(op.verb == b"UNSUB" for op in on_a) == len(subs_a)
            seen["unsubscribed on B"] = sum(op.verb == b"UNSUB" for op in on_b) >= len(subs_b)
            seen["answers"] = answers
    assert seen == {
        "unsubscribed on A": True,
        "unsubscribed on B": True,
        "answers": [(b"_INBOX.c.1", b"hi")],
    }
