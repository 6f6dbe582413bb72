"""Contract: a request nobody serves comes back through on_return (NATS no-responders)."""

from __future__ import annotations

import anyio
import pytest
from nats_contract_helpers import FLUSH, Inbox, Nats, message

from hare_py.transport.base import NO_ROUTE, Properties, ReturnedMessage

pytestmark = pytest.mark.anyio


async def test_a_request_nobody_serves_is_returned(nats: Nats) -> None:
    """The 503 arrives as ReturnedMessage(b'', Properties(), '', reply, 312, NO_RESPONDERS)."""
    with anyio.fail_after(10):
        returns, replies = Inbox(), Inbox()
        client = await nats.session(on_return=returns)
        inbox = nats.inbox()
        await client.subscribe(f"{inbox}.*", replies)
        await client.send([message(nats.subject("nobody"), b"q", reply=f"{inbox}.7")])
        returned = await returns.get()
        await client.flush(FLUSH)
    expected = ReturnedMessage(b"", Properties(), "", f"{inbox}.7", NO_ROUTE, "NO_RESPONDERS")
    assert returned == expected
    assert replies.pending() == [] and returns.pending() == []


async def test_the_503_goes_once_and_only_to_the_publisher(nats: Nats) -> None:
    """Two matching subscriptions of the publisher get one return; another connection nothing."""
    with anyio.fail_after(10):
        inbox = nats.inbox()
        eavesdropper, overheard = await nats.session(), Inbox()
        await eavesdropper.subscribe(f"{inbox}.>", overheard)
        await eavesdropper.subscribe(f"{inbox}.*", overheard)
        await eavesdropper.flush(FLUSH)
        returns, replies = Inbox(), Inbox()
        client = await nats.session(on_return=returns)
        await client.subscribe(f"{inbox}.*", replies)
        await client.subscribe(f"{inbox}.1", replies)
        await client.send([message(nats.subject("nobody"), reply=f"{inbox}.1")])
        returned = await returns.get()
        await client.flush(FLUSH)
        await eavesdropper.flush(FLUSH)
    assert returned.routing_key == f"{inbox}.1"
    assert returns.pending() == [] and replies.pending() == [] and overheard.pending() == []


async def test_without_a_subscription_to_the_reply_nothing_comes_back(nats: Nats) -> None:
    """The server sends its 503 on the publisher's own subscription; without one, nothing."""
    with anyio.fail_after(10):
        returns = Inbox()
        client = await nats.session(on_return=returns)
        await client.send([message(nats.subject("nobody"), reply=nats.inbox() + ".1")])
        await client.flush(FLUSH)
    assert returns.pending() == []


async def test_a_publish_without_reply_is_never_returned(nats: Nats) -> None:
    """Only requests (a reply subject) get no-responders; a plain publish to nobody is lost."""
    with anyio.fail_after(10):
        returns, replies = Inbox(), Inbox()
        client = await nats.session(on_return=returns)
        await client.subscribe(f"{nats.inbox()}.*", replies)
        await client.send([message(nats.subject("nobody"), b"fire and forget")])
        await client.flush(FLUSH)
    assert returns.pending() == [] and replies.pending() == []


async def test_the_return_goes_to_the_session_that_subscribed_the_reply(nats: Nats) -> None:
    """On a shared connection, the 503 reaches the on_return of the session owning the inbox."""
    with anyio.fail_after(10):
        conn = await nats.connect()
        owner_returns, sender_returns = Inbox(), Inbox()
        owner = await nats.session(conn, on_return=owner_returns)
        sender = await nats.session(conn, on_return=sender_returns)
        inbox = nats.inbox()
        await owner.subscribe(f"{inbox}.*", Inbox())
        await sender.send([message(nats.subject("nobody"), reply=f"{inbox}.9")])
        returned = await owner_returns.get()
        await sender.flush(FLUSH)
    assert returned.routing_key == f"{inbox}.9"
    assert sender_returns.pending() == []


async def test_a_request_that_reaches_a_subscriber_is_not_returned(nats: Nats) -> None:
    """A plain subscriber on the subject means no 503, even if it never answers."""
    with anyio.fail_after(10):
        server, requests = await nats.session(), Inbox()
        subject = nats.subject("silent")
        await server.subscribe(subject, requests)
        await server.flush(FLUSH)
        returns = Inbox()
        client = await nats.session(on_return=returns)
        inbox = nats.inbox()
        await client.subscribe(f"{inbox}.*", Inbox())
        await client.send([message(subject, reply=f"{inbox}.1")])
        await requests.get()
        await client.flush(FLUSH)
    assert returns.pending() == []
