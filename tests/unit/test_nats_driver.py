"""The anyio NATS driver against a scripted fake server: mapping, batches, and hostile servers.

Each hostile server (one that trickles, announces an oversize message, sends
a garbage line or a closing -ERR, refuses the login, never says INFO) must
end in a typed result inside the connection: a CloseReason its sessions see
at once, or a ConnectFailed with no secret in any text.
"""

from __future__ import annotations

import traceback
from typing import Any

import anyio
import pytest
from fake_nats import Peer, connected, fake_server, info_line
from structlog.testing import capture_logs

from hare_py.errors import BrokerError, ConnectFailed, ConnectionLost, UnsendableMessage
from hare_py.transport.base import (
    ConnectOptions,
    Delivery,
    Message,
    Properties,
    ReturnedMessage,
    Session,
)
from hare_py.transport.nats import _connection
from hare_py.transport.nats._connection import NatsConnection, connect
from hare_py.transport.nats._session import NatsClientSession
from hare_py.transport.url import parse_url

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0
SECRET = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def _short_close_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake server that stops reading must not hold a test for the whole close timeout."""
    monkeypatch.setattr(_connection, "CLOSE_TIMEOUT", 1.0)


async def session_of(conn: NatsConnection, **kwargs: Any) -> NatsClientSession:
    session = await conn.open_session(**kwargs)
    assert isinstance(session, NatsClientSession)
    return session


async def subscribed(
    conn: NatsConnection, peer: Peer, subject: str, **kwargs: Any
) -> tuple[NatsClientSession, str, list[Delivery]]:
    """A new session subscribed to ``subject``: (session, sid, deliveries)."""
    got: list[Delivery] = []
    session = await session_of(conn)
    sid = await session.subscribe(subject, got.append, **kwargs)
    op = await peer.expect(b"SUB")
    assert op.args[0] == subject.encode() and op.args[-1] == sid.encode()
    return session, sid, got


def all_texts(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + repr(exc.__cause__)


# -- the handshake ------------------------------------------------------------------


async def test_connect_says_verbose_off_headers_and_no_responders_on() -> None:
    """CONNECT asks for headers and no_responders, without verbose or pedantic."""
    with anyio.fail_after(TIMEOUT):
        async with connected(name="me") as (conn, peer):
            assert conn.is_open and conn.wire_protocol == "nats"
    assert peer.connect["headers"] is True and peer.connect["no_responders"] is True
    assert peer.connect["verbose"] is False and peer.connect["pedantic"] is False
    assert peer.connect["name"] == "me"
    assert not {"user", "pass", "auth_token"} & set(peer.connect)


@pytest.mark.parametrize(
    ("auth", "query", "expected"),
    [
        (f"alice:{SECRET}@", "", {"user": "alice", "pass": SECRET}),
        (f"{SECRET}@", "", {"auth_token": SECRET}),
        ("", f"token={SECRET}", {"auth_token": SECRET}),
    ],
    ids=["user-pass", "token-userinfo", "token-param"],
)
async def test_credentials_of_every_url_form_reach_connect(
    auth: str, query: str, expected: dict[str, str]
) -> None:
    """user:pass@, token@ and ?token= each reach CONNECT as NATS names them."""
    with anyio.fail_after(TIMEOUT):
        async with connected(auth=auth, query=query) as (conn, peer):
            assert SECRET not in repr(conn)
    assert {k: peer.connect[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("auth", "query"), [(f"alice:{SECRET}@", ""), (f"{SECRET}@", ""), ("", f"token={SECRET}")]
)
async def test_a_refused_login_is_connect_failed_without_the_secret(auth: str, query: str) -> None:
    """'Authorization Violation' after CONNECT is ConnectFailed; no text shows the secret."""
    with anyio.fail_after(TIMEOUT):
        async with fake_server() as server:

            async def refuse() -> None:
                peer = await server.accept()
                await peer.send(info_line(auth_required=True))
                await peer.expect(b"CONNECT")
                await peer.send(b"-ERR 'Authorization Violation'\r\n")
                await peer.aclose()

            async with anyio.create_task_group() as tg:
                tg.start_soon(refuse)
                url = parse_url(server.url(auth, query))
                with pytest.raises(ConnectFailed, match="refused the login") as caught:
                    async with connect(url, ConnectOptions()):
                        pass
    assert SECRET not in all_texts(caught.value)


@pytest.mark.parametrize(
    "greeting",
    [b"", b"INFO {not json}\r\n", b"PING\r\n", b"-ERR 'maximum connections exceeded'\r\n"],
    ids=["silent", "bad-info", "ping-first", "err-first"],
)
async def test_a_server_that_never_greets_properly_is_connect_failed(greeting: bytes) -> None:
    """Silence, a broken INFO, or anything before INFO end the connect with ConnectFailed."""
    with anyio.fail_after(TIMEOUT):
        async with fake_server() as server:

            async def greet() -> None:
                peer = await server.accept()
                await peer.send(greeting)

            async with anyio.create_task_group() as tg:
                tg.start_soon(greet)
                url = parse_url(server.url(query="connect_timeout=0.5"))
                with pytest.raises(ConnectFailed):
                    async with connect(url, ConnectOptions()):
                        pass


@pytest.mark.parametrize("host", ["127.0.0.1:1", "é" * 70 + ".example"])
async def test_an_unreachable_or_unresolvable_host_is_connect_failed(host: str) -> None:
    """A refused port and a host name IDNA cannot encode (no lookup made) are ConnectFailed."""
    with anyio.fail_after(TIMEOUT), pytest.raises(ConnectFailed, match="cannot"):
        async with connect(parse_url(f"nats://{host}"), ConnectOptions()):
            pass


async def test_tls_url_against_a_server_without_tls_is_connect_failed() -> None:
    """tls:// to a server whose INFO offers no TLS fails instead of going on in clear."""
    with anyio.fail_after(TIMEOUT):
        async with fake_server() as server:

            async def greet() -> None:
                peer = await server.accept()
                await peer.send(info_line())

            async with anyio.create_task_group() as tg:
                tg.start_soon(greet)
                url = parse_url(f"tls://127.0.0.1:{server.port}")
                with pytest.raises(ConnectFailed, match="does not offer TLS"):
                    async with connect(url, ConnectOptions()):
                        pass


# -- messages in ---------------------------------------------------------------------


async def test_messages_map_onto_deliveries_as_the_seam_says() -> None:
    """MSG and HMSG become Deliveries (subject, sid, reply, headers, a repeated key as a list)."""
    with anyio.fail_after(TIMEOUT):
        async with connected() as (conn, peer):
            session, sid, got = await subscribed(conn, peer, "in.>")
            block = b"NATS/1.0\r\nK: a\r\nX: 1\r\nK: b\r\n\r\n"
            await peer.send(
                b"MSG in.plain %s 2\r\nhi\r\n" % sid.encode()
                + b"HMSG in.h %s _INBOX.r.1 %d %d\r\n%sbody\r\n"
                % (sid.encode(), len(block), len(block) + 4, block)
            )
            await session_flush_answered(session, peer)
    plain, headed = got
    assert plain == Delivery(b"hi", Properties(), "", "in.plain", 0, sid)
    assert headed.body == b"body" and headed.routing_key == "in.h"
    assert headed.properties.reply_to == "_INBOX.r.1"
    assert headed.properties.headers == {"K": ["a", "b"], "X": "1"}


async def test_no_responders_goes_to_on_return_and_a_raising_callback_is_contained() -> None:
    """A 503 status on a subscription is a ReturnedMessage; a callback that raises is logged,
    and the next message is still delivered."""
    returned: list[ReturnedMessage] = []
    got: list[Delivery] = []

    def explode(delivery: Delivery) -> None:
        got.append(delivery)
        if len(got) == 1:
            raise RuntimeError("user bug")

    with anyio.fail_after(TIMEOUT), capture_logs() as logs:
        async with connected() as (conn, peer):
            session = await session_of(conn, on_return=returned.append)
            sid = await session.subscribe("_INBOX.abc.*", explode)
            await peer.expect(b"SUB")
            status = b"NATS/1.0 503\r\n\r\n"
            await peer.send(
                b"HMSG _INBOX.abc.7 %s %d %d\r\n%s\r\n"
                % (sid.encode(), len(status), len(status), status)
                + b"MSG _INBOX.abc.8 %s 1\r\nx\r\nMSG _INBOX.abc.9 %s 1\r\ny\r\n"
                % (sid.encode(), sid.encode())
            )
            await session_flush_answered(session, peer)
            assert session.is_open
    assert returned == [
        ReturnedMessage(b"", Properties(), "", "_INBOX.abc.7", 312, "NO_RESPONDERS")
    ]
    assert [d.body for d in got] == [b"x", b"y"]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["nats.callback_failed"]


async def session_flush_answered(session: Session, peer: Peer) -> None:
    """``session.flush`` with the peer answering its PING."""
    assert isinstance(session, NatsClientSession)
    async with anyio.create_task_group() as tg:

        async def pong() -> None:
            await peer.expect(b"PING", pings=True)
            await peer.send(b"PONG\r\n")

        tg.start_soon(pong)
        await session.flush(TIMEOUT)


async def test_a_bad_header_block_is_an_undecodable_delivery_not_a_dead_connection() -> None:
    """A well-framed message with a broken header block reaches the subscriber marked
    undecodable; the connection and the next message go on."""
    with anyio.fail_after(TIMEOUT), capture_logs() as logs:
        async with connected() as (conn, peer):
            session, sid, got = await subscribed(conn, peer, "in.bad")
            bad = b"garbage\r\n\r\n"
            await peer.send(
                b"HMSG in.bad %s %d %d\r\n%s\r\n" % (sid.encode(), len(bad), len(bad), bad)
                + b"MSG in.bad %s 2\r\nok\r\n" % sid.encode()
            )
            await session_flush_answered(session, peer)
            assert conn.is_open
    first, second = got
    assert first.undecodable is not None and "NATS/1.0" in first.undecodable
    assert second.body == b"ok" and second.undecodable is None
    assert "nats.message_undecodable" in [e["event"] for e in logs]


async def test_unsubscribe_delivers_what_the_server_routed_before_it_saw_the_unsub() -> None:
    """After unsubscribe, a message sent before the server's PONG is still delivered;
    one after it is not."""
    with anyio.fail_after(TIMEOUT):
        async with connected() as (conn, peer):
            session, sid, got = await subscribed(conn, peer, "in.u")
            await session.unsubscribe(sid)
            assert (await peer.expect(b"UNSUB")).args == [sid.encode()]
            await peer.expect(b"PING", pings=True)
            message = b"MSG in.u %s 1\r\n%%s\r\n" % sid.encode()
            await peer.send(message % b"1" + b"PONG\r\n" + message % b"2")
            await session_flush_answered(session, peer)
            assert session.subscriptions == ()
    assert [d.body for d in got] == [b"1"]


# -- messages out -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (Message("", "out.big", b"x" * 200), "max_payload"),
        (Message("amq.direct", "out.x", b""), "no exchanges"),
        (Message("", "out.*", b""), "subject"),
        (Message("", "out.x", b"", Properties(correlation_id="c1")), "correlation_id"),
        (Message("", "out.x", b"", Properties(headers={"K": 1})), "header"),
        (Message("", "out.x", b"", Properties(headers={"K": "a\r\nb"})), "header"),
        (Message("", "out.x", b"", Properties(reply_to="bad reply")), "subject"),
        (Message("", "out.x", "text"), "bytes"),  # type: ignore[arg-type]
        (Message("", "out.x", "text", Properties(headers={})), "bytes"),  # type: ignore[arg-type]
    ],
    ids=[
        "too-big",
        "exchange",
        "wildcard",
        "property",
        "header-int",
        "header-crlf",
        "reply",
        "str-body",
        "str-body-hpub",
    ],
)
async def test_an_unsendable_message_fails_its_batch_before_anything_is_written(
    bad: Message, reason: str
) -> None:
    """UnsendableMessage names the one message; none of the batch is sent; the next send works."""
    with anyio.fail_after(TIMEOUT):
        async with connected(info=info_line(max_payload=100)) as (conn, peer):
            session = await session_of(conn)
            assert session.max_payload == 100
            ok = Message("", "out.ok", b"first")
            with pytest.raises(UnsendableMessage, match=reason) as caught:
                await session.send([ok, bad, ok])
            assert caught.value.index == 1
            await session.send([Message("", "out.after", b"after")])
            op = await peer.expect(b"PUB")
            assert conn.is_open and session.is_open
    assert (op.args[0], op.payload) == (b"out.after", b"after")


async def test_a_batch_goes_out_in_order_with_hpub_for_headers() -> None:
    """Messages with headers go as HPUB (a list repeats a key), the others as PUB, in order."""
    with anyio.fail_after(TIMEOUT):
        async with connected() as (conn, peer):
            session = await session_of(conn)
            await session.send(
                [
                    Message("", "out.1", b"a", Properties(reply_to="_INBOX.z.1")),
                    Message("", "out.2", b"b", Properties(headers={"K": ["x", "y"], "J": "z"})),
                    Message("", "out.3", b"c", Properties(headers={})),
                ]
            )
            ops = [await peer.op() for _ in range(3)]
    assert [(o.verb, o.args[0]) for o in ops] == [
        (b"PUB", b"out.1"),
        (b"HPUB", b"out.2"),
        (b"HPUB", b"out.3"),
    ]
    assert ops[0].args[1] == b"_INBOX.z.1"
    assert ops[1].payload == b"NATS/1.0\r\nK: x\r\nK: y\r\nJ: z\r\n\r\nb"
    assert ops[2].payload == b"NATS/1.0\r\n\r\nc"


# -- heartbeats and hostile servers ------------------------------------------------------


async def test_server_pings_are_answered() -> None:
    """Every PING from the server gets a PONG."""
    with anyio.fail_after(TIMEOUT):
        async with connected() as (_conn, peer):
            await peer.send(b"PING\r\nPING\r\n")
            assert [(await peer.op()).verb for _ in range(2)] == [b"PONG", b"PONG"]


async def test_answered_pings_keep_it_alive_and_two_unanswered_ones_end_it() -> None:
    """Heartbeat PINGs that get PONGs keep the connection; after two without one it ends by
    "network", and every session closes by "connection" at once."""
    with anyio.fail_after(TIMEOUT):
        async with connected(query="heartbeat=0.25") as (conn, peer):
            session = await session_of(conn)
            for _ in range(3):
                await peer.expect(b"PING", pings=True)
                await peer.send(b"PONG\r\n")
            rest = await peer.until_closed()
            reason = await session.wait_closed()
    assert rest == b"PING\r\n" * 2
    assert conn.close_reason is not None and conn.close_reason.by == "network"
    assert "no PONG" in conn.close_reason.text
    assert reason.by == "connection" and reason.text == conn.close_reason.text
    with pytest.raises(ConnectionLost):
        await session.send([Message("", "x", b"")])


async def test_pings_of_flushes_still_out_are_not_missed_heartbeats() -> None:
    """Only the pinger's own PINGs count: with two flush PINGs unanswered, the server is
    declared dead after two heartbeat PINGs more, not at the first heartbeat."""
    with anyio.fail_after(TIMEOUT):
        async with connected(query="heartbeat=0.5") as (conn, peer):
            session = await session_of(conn)
            for _ in range(2):
                with pytest.raises(ConnectionLost, match="did not answer a PING"):
                    await session.flush(0.01)
            rest = await peer.until_closed()
    assert rest == b"PING\r\n" * 4
    assert conn.close_reason is not None and "no PONG" in conn.close_reason.text


async def test_a_server_that_trickles_a_message_is_declared_dead() -> None:
    """A server that sends a message a byte at a time (and so never a PONG) is dead."""
    with anyio.fail_after(TIMEOUT):
        async with connected(query="heartbeat=0.1") as (conn, peer):
            session, sid, got = await subscribed(conn, peer, "in.slow")

            async def trickle() -> None:
                data = b"MSG in.slow %s 100000\r\n" % sid.encode() + b"x" * 100000
                for byte in data:
                    await peer.send(bytes([byte]))
                    await anyio.sleep(0.01)

            async with anyio.create_task_group() as tg:
                tg.start_soon(trickle)
                reason = await session.wait_closed()
                tg.cancel_scope.cancel()
    assert reason.by == "connection" and "no PONG" in reason.text
    assert got == []


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"MSG in.x 1 99999999\r\n", "max_payload"),
        (b"HELLO WORLD\r\n", "unknown operation"),
        (b"MSG in.x 1 2\r\nabXY", "CRLF"),
        (b"PONG\r\n", "PONG without a PING"),
        (b"INFO " + b"x" * 70000, "control line"),
    ],
    ids=["oversize-msg", "garbage-line", "bad-framing", "stray-pong", "endless-info"],
)
async def test_a_stream_that_breaks_the_protocol_ends_the_connection(
    data: bytes, text: str
) -> None:
    """A protocol break closes the connection by "network" with the reason, and its
    sessions by "connection", without buffering what the server announced."""
    with anyio.fail_after(TIMEOUT), capture_logs() as logs:
        async with connected() as (conn, peer):
            session = await session_of(conn)
            await peer.send(data)
            reason = await session.wait_closed()
    assert conn.close_reason is not None and conn.close_reason.by == "network"
    assert text in conn.close_reason.text and reason.by == "connection"
    assert "nats.protocol_error" in [e["event"] for e in logs]


async def test_a_closing_err_ends_the_connection_with_its_text() -> None:
    """-ERR 'Stale Connection' closes by "broker" with that text; sessions by "connection"."""
    with anyio.fail_after(TIMEOUT):
        async with connected() as (conn, peer):
            session = await session_of(conn)
            await peer.send(b"-ERR 'Stale Connection'\r\n")
            reason = await session.wait_closed()
            assert await conn.wait_closed() == conn.close_reason
    assert conn.close_reason is not None
    assert (conn.close_reason.by, conn.close_reason.text) == ("broker", "Stale Connection")
    assert (reason.by, reason.text) == ("connection", "Stale Connection")


async def test_the_server_hanging_up_closes_every_session_at_once() -> None:
    """End of stream closes the connection by "network" and every session by "connection"."""
    with anyio.fail_after(TIMEOUT):
        async with connected() as (conn, peer):
            sessions = [await session_of(conn) for _ in range(3)]
            await peer.aclose()
            reasons = [await s.wait_closed() for s in sessions]
    assert {(r.by, r.text) for r in reasons} == {("connection", "the server closed the socket")}
    with pytest.raises(ConnectionLost):
        await conn.open_session()


async def test_a_subscription_permission_violation_closes_only_its_session() -> None:
    """The -ERR naming one session's subscription closes that session by "broker" (its flush
    raises BrokerError); other sessions and the connection go on; it is logged."""
    text = 'Permissions Violation for Subscription to "denied.x" using queue "q"'
    with anyio.fail_after(TIMEOUT), capture_logs() as logs:
        async with connected() as (conn, peer):
            denied, _, _ = await subscribed(conn, peer, "denied.x", queue="q")
            other, _, _ = await subscribed(conn, peer, "denied.x")  # no queue: not named
            await peer.send(b"-ERR '%s'\r\n" % text.encode())
            reason = await denied.wait_closed()
            assert (await peer.expect(b"UNSUB")).args  # the rest of it is unsubscribed
            with pytest.raises(BrokerError, match="Permissions Violation"):
                await denied.flush(TIMEOUT)
            await peer.send(b"-ERR 'Permissions Violation for Publish to \"denied.y\"'\r\n")
            await session_flush_answered(other, peer)
            assert other.is_open and conn.is_open
    assert (reason.by, reason.text) == ("broker", text)
    violations = [e for e in logs if e["event"] == "nats.permission_violation"]
    assert [e["error"] for e in violations] == [
        text,
        'Permissions Violation for Publish to "denied.y"',
    ]


async def test_flush_raises_connection_lost_when_no_pong_comes_in_time() -> None:
    """flush() on a server that does not answer the PING raises ConnectionLost, bounded."""
    with anyio.fail_after(TIMEOUT):
        async with connected() as (conn, _peer):
            session = await session_of(conn)
            with pytest.raises(ConnectionLost, match="did not answer a PING"):
                await session.flush(0.1)
            assert conn.is_open


# -- backpressure -----------------------------------------------------------------------


async def test_a_server_that_stops_reading_blocks_senders_near_the_high_water_mark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One message at a time, a sender waits once what is queued for the socket (in the
    connection and in the protocol) passes HIGH_WATER; it goes on when the server reads."""
    high_water = 256 * 1024
    monkeypatch.setattr(_connection, "HIGH_WATER", high_water)
    body = bytes(32 * 1024)
    limit = 1500  # 48 MB: beyond any socket buffer; sending this far means no backpressure
    sent = 0
    peak = 0
    with anyio.fail_after(TIMEOUT * 2):
        async with connected(info=info_line(max_payload=1024 * 1024)) as (conn, peer):
            session = await session_of(conn)

            def queued() -> int:
                return conn._out_size + conn.protocol.bytes_to_send

            async def sender() -> None:
                nonlocal sent, peak
                while sent < limit:
                    await session.send([Message("", "out.bulk", body)])
                    sent += 1
                    peak = max(peak, queued())

            async with anyio.create_task_group() as tg:
                tg.start_soon(sender)
                last, since = sent, anyio.current_time()
                while anyio.current_time() - since < 0.3:  # until sending stalls
                    await anyio.sleep(0.02)
                    if sent != last:
                        last, since = sent, anyio.current_time()
                assert sent < limit, "sending never blocked"
                wire = len(body) + 64
                assert 0 < peak <= high_water + wire, peak
                stalled_at = sent
                received = 0
                while sent < stalled_at + 100:  # the server reads: sending goes on
                    op = await peer.expect(b"PUB")
                    assert op.payload == body
                    received += 1
                tg.cancel_scope.cancel()
    assert received > 0 and peak <= high_water + wire
