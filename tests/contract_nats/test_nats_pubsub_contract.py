"""Contract: publish and subscribe, as the NatsSession docstring maps messages."""

from __future__ import annotations

import anyio
import pytest
from nats_contract_helpers import FLUSH, Inbox, Nats, message

from hare_py.errors import ConfigError
from hare_py.transport.base import NATS, Delivery, Properties

pytestmark = pytest.mark.anyio


async def test_a_message_arrives_as_the_docstring_maps_it(nats: Nats) -> None:
    """Subject as routing_key, exchange '', tag 0, the sid as consumer_tag, no properties."""
    with anyio.fail_after(10):
        subscriber = await nats.session()
        inbox = Inbox()
        subject = nats.subject("plain")
        sid = await subscriber.subscribe(subject, inbox)
        await subscriber.flush(FLUSH)
        publisher = await nats.session()
        await publisher.send([message(subject, b"hello")])
        delivery = await inbox.get()
    assert delivery == Delivery(b"hello", Properties(), "", subject, 0, sid)


async def test_headers_round_trip_with_repeated_keys(nats: Nats) -> None:
    """String headers arrive in order; a repeated key as a list, a list of one as a string."""
    headers = {
        "X-One": "1",
        "X-Rep": ["a", "b c"],
        "X-Single": ["only"],
        "X-Utf8": "é ü",
        "X-Empty": "",
        "x-case": "lower",
    }
    with anyio.fail_after(10):
        session = await nats.session()
        inbox = Inbox()
        subject = nats.subject("headers")
        await session.subscribe(subject, inbox)
        await session.send([message(subject, b"h", headers=headers)])
        delivery = await inbox.get()
    assert delivery.properties.headers == {
        "X-One": "1",
        "X-Rep": ["a", "b c"],
        "X-Single": "only",
        "X-Utf8": "é ü",
        "X-Empty": "",
        "x-case": "lower",
    }
    assert delivery.properties.reply_to is None and delivery.body == b"h"


async def test_no_headers_and_empty_headers_differ(nats: Nats) -> None:
    """headers=None arrives as None (a PUB); headers={} as an empty mapping (an HPUB)."""
    with anyio.fail_after(10):
        session = await nats.session()
        inbox = Inbox()
        subject = nats.subject("empty")
        await session.subscribe(subject, inbox)
        await session.send([message(subject, headers=None), message(subject, headers={})])
        plain, empty = await inbox.take(2)
    assert plain.properties.headers is None
    assert empty.properties.headers == {}


async def test_the_reply_subject_arrives_as_reply_to(nats: Nats) -> None:
    """properties.reply_to is the reply subject, on its way in as on its way out."""
    with anyio.fail_after(10):
        session = await nats.session()
        inbox = Inbox()
        subject = nats.subject("request")
        reply = nats.inbox() + ".42"
        await session.subscribe(subject, inbox)
        await session.send([message(subject, b"q", reply=reply, headers={"K": "v"})])
        delivery = await inbox.get()
    assert delivery.properties == Properties(headers={"K": "v"}, reply_to=reply)


async def test_any_bytes_round_trip(nats: Nats) -> None:
    """Bodies are opaque: empty, protocol-looking bytes, and 512 KiB arrive exactly."""
    bodies = [b"", b"\x00\r\nPUB x 1\r\n\xff", bytes(range(256)) * 2048]
    with anyio.fail_after(10):
        session = await nats.session()
        inbox = Inbox()
        subject = nats.subject("bytes")
        await session.subscribe(subject, inbox)
        await session.send([message(subject, body) for body in bodies])
        received = await inbox.take(3)
    assert [d.body for d in received] == bodies


async def test_a_connection_hears_its_own_publishes(nats: Nats) -> None:
    """Echo: a session, and another session of the same connection, get what it publishes."""
    with anyio.fail_after(10):
        conn = await nats.connect()
        first, second = await nats.session(conn), await nats.session(conn)
        mine, theirs = Inbox(), Inbox()
        subject = nats.subject("echo")
        await first.subscribe(subject, mine)
        await second.subscribe(subject, theirs)
        await first.send([message(subject, b"me")])
        assert (await mine.get()).body == b"me"
        assert (await theirs.get()).body == b"me"


async def test_messages_from_one_publisher_arrive_in_order(nats: Nats) -> None:
    """Per publisher, order holds across batches and across the subscriber's subscriptions."""
    with anyio.fail_after(20):
        subscriber = await nats.session()
        inbox = Inbox()
        base = nats.subject("order")
        for leaf in ("a", "b", "c"):
            await subscriber.subscribe(f"{base}.{leaf}", inbox)
        await subscriber.flush(FLUSH)
        publisher = await nats.session()
        sent = [(f"{base}.{'abc'[i % 3]}", str(i).encode()) for i in range(600)]
        for start in range(0, len(sent), 50):
            await publisher.send([message(s, b) for s, b in sent[start : start + 50]])
        received = await inbox.take(len(sent))
    assert [(d.routing_key, d.body) for d in received] == sent


async def test_flush_returns_once_the_server_has_seen_everything(nats: Nats) -> None:
    """After the publisher's flush and then the subscriber's, every message is delivered."""
    with anyio.fail_after(10):
        subscriber = await nats.session()
        inbox = Inbox()
        subject = nats.subject("flush")
        await subscriber.subscribe(subject, inbox)
        await subscriber.flush(FLUSH)
        publisher = await nats.session()
        await publisher.send([message(subject, str(i).encode()) for i in range(100)])
        await publisher.flush(FLUSH)
        await subscriber.flush(FLUSH)
        assert [d.body for d in inbox.pending()] == [str(i).encode() for i in range(100)]


async def test_sessions_speak_nats_and_settle_does_nothing(nats: Nats) -> None:
    """Connections and sessions name the NATS protocol; settle is a no-op; no AMQP channels."""
    with anyio.fail_after(10):
        conn = await nats.connect()
        session = await nats.session(conn)
        assert conn.wire_protocol == session.wire_protocol == NATS
        inbox = Inbox()
        subject = nats.subject("settle")
        await session.subscribe(subject, inbox)
        await session.send([message(subject)])
        delivery = await inbox.get()
        for outcome in ("accept", "reject", "release"):
            await session.settle(delivery, outcome)
        assert session.is_open
        with pytest.raises(ConfigError):
            await conn.open_channel()


async def test_two_connections_never_share_a_sid(nats: Nats) -> None:
    """A subscription's sid (its deliveries' consumer tag) is unique in the process, so a
    message arriving for a connection being left is never taken for its successor's."""
    with anyio.fail_after(10):
        first, second = await nats.session(), await nats.session()
        subject = nats.subject("sids")
        tags = [await s.subscribe(subject, Inbox()) for s in (first, second, first, second)]
    assert len(set(tags)) == 4
