"""Contract: queue groups share the load; plain subscribers see everything."""

from __future__ import annotations

import anyio
import pytest
from nats_contract_helpers import FLUSH, Inbox, Nats, message

pytestmark = pytest.mark.anyio


async def test_each_message_goes_to_one_member_of_each_group(nats: Nats) -> None:
    """Every message reaches exactly one member per group and every plain subscriber."""
    subject = nats.subject("work")
    with anyio.fail_after(20):
        sessions = [await nats.session() for _ in range(3)]
        workers, auditors, watcher = Inbox(), Inbox(), Inbox()
        for session in sessions:  # three members of "workers", on three connections
            await session.subscribe(subject, workers, queue="workers")
        for session in sessions[:2]:
            await session.subscribe(subject, auditors, queue="auditors")
        await sessions[0].subscribe(subject, watcher)
        for session in sessions:
            await session.flush(FLUSH)
        publisher = await nats.session()
        bodies = [str(i).encode() for i in range(60)]
        await publisher.send([message(subject, body) for body in bodies])
        await publisher.flush(FLUSH)
        for session in sessions:
            await session.flush(FLUSH)
    assert sorted(d.body for d in workers.pending()) == sorted(bodies)
    assert sorted(d.body for d in auditors.pending()) == sorted(bodies)
    assert [d.body for d in watcher.pending()] == bodies


async def test_a_group_is_one_group_across_subjects(nats: Nats) -> None:
    """Members of one group on 'x.a' and 'x.*' share a message to 'x.a': one copy in all."""
    base = nats.subject("span")
    with anyio.fail_after(10):
        session = await nats.session()
        group, done = Inbox(), Inbox()
        await session.subscribe(f"{base}.a", group, queue="g")
        await session.subscribe(f"{base}.*", group, queue="g")
        sentinel = nats.subject("sentinel")
        await session.subscribe(sentinel, done)
        publisher = await nats.session()
        await publisher.send([message(f"{base}.a", str(i).encode()) for i in range(10)])
        await publisher.send([message(sentinel)])
        await done.get()
    assert sorted(d.body for d in group.pending()) == sorted(str(i).encode() for i in range(10))


async def test_a_request_a_group_member_serves_is_not_returned(nats: Nats) -> None:
    """A request to a subject only a queue group subscribes reaches one member, no 503."""
    subject = nats.subject("served")
    with anyio.fail_after(10):
        server = await nats.session()
        requests = Inbox()
        await server.subscribe(subject, requests, queue="svc")
        await server.flush(FLUSH)
        returns, replies = Inbox(), Inbox()
        client = await nats.session(on_return=returns)
        inbox = nats.inbox()
        await client.subscribe(f"{inbox}.*", replies)
        await client.send([message(subject, b"q", reply=f"{inbox}.1")])
        request = await requests.get()
        assert request.properties.reply_to == f"{inbox}.1"
        await client.flush(FLUSH)
    assert returns.pending() == [] and replies.pending() == []
