"""Contract: unsubscribing, and what closing a session or a connection does."""

from __future__ import annotations

import anyio
import pytest
from nats_contract_helpers import FLUSH, Inbox, Nats, message

from hare_py.errors import ConnectionLost

pytestmark = pytest.mark.anyio


async def test_unsubscribe_stops_delivery(nats: Nats) -> None:
    """After unsubscribe, nothing more arrives for that sid; other subscriptions go on."""
    with anyio.fail_after(10):
        subscriber = await nats.session()
        gone, done = Inbox(), Inbox()
        subject, sentinel = nats.subject("gone"), nats.subject("sentinel")
        sid = await subscriber.subscribe(subject, gone)
        await subscriber.subscribe(sentinel, done)
        publisher = await nats.session()
        await publisher.send([message(subject, b"before")])
        assert (await gone.get()).body == b"before"
        await subscriber.unsubscribe(sid)
        await subscriber.flush(FLUSH)
        await publisher.send([message(subject, b"after"), message(sentinel)])
        await done.get()
    assert gone.pending() == []


async def test_a_message_routed_before_the_unsubscribe_is_delivered(nats: Nats) -> None:
    """A message the server routed before it saw the UNSUB still reaches the callback."""
    with anyio.fail_after(10):
        session = await nats.session()
        inbox = Inbox()
        subject = nats.subject("late")
        sid = await session.subscribe(subject, inbox)
        await session.send([message(subject, b"in flight")])
        await session.unsubscribe(sid)
        await session.flush(FLUSH)
    assert [d.body for d in inbox.pending()] == [b"in flight"]


async def test_unsubscribing_an_unknown_sid_is_harmless(nats: Nats) -> None:
    """unsubscribe of a sid the session does not have (or twice) does nothing."""
    with anyio.fail_after(10):
        session = await nats.session()
        inbox = Inbox()
        subject = nats.subject("twice")
        sid = await session.subscribe(subject, inbox)
        await session.unsubscribe("999999")
        await session.send([message(subject, b"still")])
        assert (await inbox.get()).body == b"still"
        await session.unsubscribe(sid)
        await session.unsubscribe(sid)
        assert session.is_open


async def test_closing_a_session_unsubscribes_it(nats: Nats) -> None:
    """A closed session's subscriptions are gone; its connection's other sessions go on."""
    with anyio.fail_after(10):
        conn = await nats.connect()
        closing, staying = await nats.session(conn), await nats.session(conn)
        lost, kept, done = Inbox(), Inbox(), Inbox()
        subject, sentinel = nats.subject("closing"), nats.subject("sentinel")
        await closing.subscribe(subject, lost)
        await closing.subscribe(f"{subject}.>", lost)
        await staying.subscribe(subject, kept)
        await staying.subscribe(sentinel, done)
        await closing.close()
        reason = await closing.wait_closed()
        await staying.flush(FLUSH)
        publisher = await nats.session()
        await publisher.send([message(subject), message(f"{subject}.x"), message(sentinel)])
        await done.get()
    assert reason.is_normal and reason.by == "client"
    assert lost.pending() == [] and len(kept.pending()) == 1
    assert staying.is_open and conn.is_open


async def test_a_closed_session_refuses_work(nats: Nats) -> None:
    """send, subscribe and flush on a closed session raise ConnectionLost; close is idempotent."""
    with anyio.fail_after(10):
        session = await nats.session()
        await session.close()
        await session.close()
        assert not session.is_open
        with pytest.raises(ConnectionLost):
            await session.send([message(nats.subject("closed"))])
        with pytest.raises(ConnectionLost):
            await session.subscribe(nats.subject("closed"), Inbox())
        with pytest.raises(ConnectionLost):
            await session.flush(FLUSH)


async def test_closing_the_connection_closes_its_sessions(nats: Nats) -> None:
    """Every session of a closed connection closes by 'connection' and refuses work."""
    with anyio.fail_after(10):
        conn = await nats.connect()
        first, second = await nats.session(conn), await nats.session(conn)
        await first.subscribe(nats.subject("c"), Inbox())
        await conn.close()
        conn_reason = await conn.wait_closed()
        reasons = [await first.wait_closed(), await second.wait_closed()]
        with pytest.raises(ConnectionLost):
            await first.send([message(nats.subject("c"))])
        with pytest.raises(ConnectionLost):
            await conn.open_session()
    assert conn_reason.is_normal
    assert [r.by for r in reasons] == ["connection", "connection"]


@pytest.mark.parametrize("how", ["unsubscribe", "close"])
async def test_the_server_forgets_what_a_session_let_go(nats: Nats, how: str) -> None:
    """After unsubscribe or close, a request to that subject gets no-responders."""
    with anyio.fail_after(10):
        conn = await nats.connect()
        server, requests = await nats.session(conn), Inbox()
        subject = nats.subject("forgotten")
        sid = await server.subscribe(subject, requests)
        returns = Inbox()
        client = await nats.session(on_return=returns)
        inbox = nats.inbox()
        await client.subscribe(f"{inbox}.*", Inbox())
        await client.send([message(subject, reply=f"{inbox}.1")])
        assert (await requests.get()).properties.reply_to == f"{inbox}.1"
        if how == "unsubscribe":
            await server.unsubscribe(sid)
            await server.flush(FLUSH)
        else:
            await server.close()
            await (await nats.session(conn)).flush(FLUSH)  # the server has seen the UNSUB
        await client.send([message(subject, reply=f"{inbox}.2")])
        returned = await returns.get()
    assert returned.routing_key == f"{inbox}.2"
    assert requests.pending() == []
