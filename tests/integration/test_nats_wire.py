"""The sans-I/O NATS core over a plain anyio TCP socket, against a real nats-server."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import anyio
import anyio.abc
import pytest
from natsserver import NatsServer, started

from hare_py.transport.nats._protocol import (
    BadMsgReceived,
    Connected,
    ErrReceived,
    Event,
    InfoReceived,
    MsgReceived,
    NatsClientProtocol,
    PayloadTooLarge,
    PingReceived,
    PongReceived,
    ServerInfo,
)

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

E = TypeVar("E")
TIMEOUT = 10.0

RESTRICTED = """
max_payload: 4096
authorization {
  users = [
    {
      user: alice
      password: wonderland
      permissions: {
        publish: { allow: ["allowed.>", "_INBOX.>"] }
        subscribe: { allow: ["allowed.>", "_INBOX.>"] }
      }
    }
  ]
}
"""


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both anyio backends (the package's conftest pairs backends with brokers instead)."""
    return str(request.param)


@pytest.fixture(scope="module")
def restricted() -> Iterator[NatsServer]:
    """A server with max_payload 4096 and a user allowed only ``allowed.>`` and ``_INBOX.>``."""
    with started(config=RESTRICTED) as server:
        yield server


@pytest.fixture(scope="module")
def pinging() -> Iterator[NatsServer]:
    """A server that PINGs every 200 ms and gives up after one unanswered PING."""
    with started(config='ping_interval: "200ms"\nping_max: 1\n') as server:
        yield server


class Wire:
    """One NatsClientProtocol on one TCP stream: read, feed, flush what it queued."""

    def __init__(self, stream: anyio.abc.SocketStream, proto: NatsClientProtocol) -> None:
        self.stream = stream
        self.proto = proto
        self.events: deque[Event] = deque()
        self.answer_pings = True

    async def flush(self) -> None:
        data = self.proto.data_to_send()
        if data:
            await self.stream.send(data)

    async def send_raw(self, data: bytes) -> None:
        """Bytes the core would refuse to build, to see what the server does with them."""
        await self.stream.send(data)

    async def event(self, *, pings: bool = False) -> Event:
        """The next event (server PINGs, answered already, are skipped unless ``pings``)."""
        while True:
            while not self.events:
                data = await self.stream.receive()
                self.events.extend(self.proto.receive_data(data))
                if self.answer_pings:
                    await self.flush()
            event = self.events.popleft()
            if pings or not isinstance(event, PingReceived):
                return event

    async def expect(self, kind: type[E]) -> E:
        event = await self.event()
        assert isinstance(event, kind), event
        return event

    async def handshake(self) -> ServerInfo:
        info = (await self.expect(InfoReceived)).info
        await self.flush()
        await self.expect(Connected)
        return info

    async def sync(self) -> list[Event]:
        """PING the server and collect every event before its PONG: all it had for us."""
        self.proto.ping()
        await self.flush()
        seen: list[Event] = []
        while not isinstance(event := await self.event(), PongReceived):
            seen.append(event)
        return seen

    async def server_closes(self) -> bool:
        """True once the server ends the connection (EOF or reset)."""
        try:
            while await self.stream.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return True
        return False


@contextlib.asynccontextmanager
async def wire(server: NatsServer, **options: Any) -> AsyncIterator[Wire]:
    async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
        yield Wire(stream, NatsClientProtocol(**options))


async def test_handshake_reads_info_and_connects(nats_server: NatsServer) -> None:
    """INFO from nats-server 2.9 parses; CONNECT is accepted (the PONG is Connected)."""
    with anyio.fail_after(TIMEOUT):
        async with wire(nats_server, name="hare-test", version="0") as w:
            info = await w.handshake()
    assert info.version.startswith("2.") and info.headers and info.proto >= 1
    assert info.max_payload == w.proto.max_payload == 1024 * 1024
    assert not info.auth_required


async def test_sub_and_pub_round_trip_with_reply_and_queue_group(nats_server: NatsServer) -> None:
    """A PUB reaches our SUB with subject, reply and payload; a queue group gets one copy."""
    with anyio.fail_after(TIMEOUT):
        async with wire(nats_server) as w:
            await w.handshake()
            plain = w.proto.subscribe("wire.round.*")
            group = [w.proto.subscribe("wire.round.*", queue="workers") for _ in range(2)]
            w.proto.publish("wire.round.trip", b"hello", reply="_INBOX.wire.1")
            events = await w.sync()
    assert all(isinstance(e, MsgReceived) for e in events) and len(events) == 2
    sids = {e.sid for e in events if isinstance(e, MsgReceived)}
    assert plain in sids and len(sids & set(group)) == 1
    for event in events:
        assert isinstance(event, MsgReceived)
        assert event == MsgReceived(event.sid, "wire.round.trip", "_INBOX.wire.1", b"hello")


async def test_hpub_headers_round_trip_multi_valued(nats_server: NatsServer) -> None:
    """HPUB headers, a repeated key included, come back as HMSG headers in order."""
    headers = [("Nats-Msg-Id", "42"), ("X-Tag", "a"), ("X-Tag", "b c"), ("X-Utf8", "é")]
    with anyio.fail_after(TIMEOUT):
        async with wire(nats_server) as w:
            await w.handshake()
            sid = w.proto.subscribe("wire.headers")
            w.proto.publish("wire.headers", b"\x00payload\r\n", headers=headers)
            [event] = await w.sync()
    assert isinstance(event, MsgReceived) and event.sid == sid
    assert event.headers == tuple(headers) and event.status is None
    assert event.payload == b"\x00payload\r\n"
    assert event.header_values("X-Tag") == ["a", "b c"]


@pytest.mark.parametrize("with_headers", [True, False], ids=["hpub", "pub"])
async def test_a_request_nobody_serves_gets_a_503_status(
    nats_server: NatsServer, with_headers: bool
) -> None:
    """With no_responders in CONNECT, a request to a subject without subscribers gets 503."""
    with anyio.fail_after(TIMEOUT):
        async with wire(nats_server) as w:
            await w.handshake()
            inbox = w.proto.subscribe("_INBOX.wire503.*")
            w.proto.publish(
                "wire.nobody.home",
                b"are you there?",
                reply="_INBOX.wire503.7",
                headers={} if with_headers else None,
            )
            [event] = await w.sync()
    assert isinstance(event, MsgReceived)
    assert (event.sid, event.subject, event.status) == (inbox, "_INBOX.wire503.7", 503)
    assert event.no_responders and event.payload == b""


async def test_ping_gets_pong(nats_server: NatsServer) -> None:
    """Each of our PINGs is answered with one PONG."""
    with anyio.fail_after(TIMEOUT):
        async with wire(nats_server) as w:
            await w.handshake()
            w.proto.ping()
            w.proto.ping()
            await w.flush()
            assert [await w.event(), await w.event()] == [PongReceived(), PongReceived()]
    assert w.proto.pings_outstanding == 0


async def test_server_pings_are_answered_and_unanswered_ones_go_stale(pinging: NatsServer) -> None:
    """The core answers server PINGs (the connection lives); without the PONGs: Stale Connection."""
    with anyio.fail_after(TIMEOUT):
        async with wire(pinging) as w:
            await w.handshake()
            for _ in range(3):  # three intervals: with ping_max 1, one miss would end it
                assert isinstance(await w.event(pings=True), PingReceived)
            assert await w.sync() == []
            w.answer_pings = False
            assert isinstance(await w.event(pings=True), PingReceived)
            stale = await w.expect(ErrReceived)
            assert stale == ErrReceived("Stale Connection", closes=True)
            assert w.proto.closed and await w.server_closes()


async def test_a_payload_over_max_payload_is_refused_before_sending(restricted: NatsServer) -> None:
    """PayloadTooLarge leaves the connection working; the same bytes sent raw get it closed."""
    with anyio.fail_after(TIMEOUT):
        async with wire(restricted, user="alice", password="wonderland") as w:
            info = await w.handshake()
            assert info.max_payload == 4096 and info.auth_required
            sid = w.proto.subscribe("allowed.big")
            queued = w.proto.bytes_to_send
            with pytest.raises(PayloadTooLarge):
                w.proto.publish("allowed.big", b"x" * 4097)
            with pytest.raises(PayloadTooLarge):
                w.proto.publish("allowed.big", b"x" * 4090, headers={"K": "v"})
            assert w.proto.bytes_to_send == queued
            w.proto.publish("allowed.big", b"x" * 4096)
            [event] = await w.sync()
            assert isinstance(event, MsgReceived) and event.sid == sid
            await w.send_raw(b"PUB allowed.big 4097\r\n" + b"x" * 4097 + b"\r\n")
            err = await w.expect(ErrReceived)
            assert err == ErrReceived("Maximum Payload Violation", closes=True)
            assert await w.server_closes()


async def test_a_permissions_err_keeps_the_connection(restricted: NatsServer) -> None:
    """Publish and subscribe permission violations leave the connection open."""
    with anyio.fail_after(TIMEOUT):
        async with wire(restricted, user="alice", password="wonderland") as w:
            await w.handshake()
            w.proto.publish("denied.x", b"no")
            w.proto.subscribe("denied.>", queue="q")
            w.proto.publish("allowed.x", b"", reply="_R_.abc.x")  # reserved for service imports
            events = await w.sync()
            assert events == [
                ErrReceived('Permissions Violation for Publish to "denied.x"', closes=False),
                ErrReceived(
                    'Permissions Violation for Subscription to "denied.>" using queue "q"',
                    closes=False,
                ),
                ErrReceived(
                    'Permissions Violation for Publish with Reply of "_R_.abc.x"', closes=False
                ),
            ]
            sid = w.proto.subscribe("allowed.still")
            w.proto.publish("allowed.still", b"open")
            [event] = await w.sync()
            assert isinstance(event, MsgReceived) and (event.sid, event.payload) == (sid, b"open")


async def test_an_auth_err_closes_the_connection(restricted: NatsServer) -> None:
    """A wrong password: 'Authorization Violation', auth and closing; the server hangs up."""
    with anyio.fail_after(TIMEOUT):
        async with wire(restricted, user="alice", password="wrong") as w:
            await w.expect(InfoReceived)
            await w.flush()
            err = await w.expect(ErrReceived)
            assert err == ErrReceived("Authorization Violation", closes=True) and err.auth
            assert w.proto.closed
            assert await w.server_closes()


async def test_an_invalid_subject_err_keeps_the_connection(nats_server: NatsServer) -> None:
    """'Invalid Subject' (for a SUB the core would refuse to build) leaves it open."""
    with anyio.fail_after(TIMEOUT):
        async with wire(nats_server) as w:
            await w.handshake()
            await w.send_raw(b"SUB wire..x 99\r\n")
            assert await w.sync() == [ErrReceived("Invalid Subject", closes=False)]
            assert not w.proto.closed


async def test_an_unknown_operation_err_closes_the_connection(nats_server: NatsServer) -> None:
    """'Unknown Protocol Operation' is classified closing, and the server does close."""
    with anyio.fail_after(TIMEOUT):
        async with wire(nats_server) as w:
            await w.handshake()
            await w.send_raw(b"NOPE\r\n")
            err = await w.expect(ErrReceived)
            assert err == ErrReceived("Unknown Protocol Operation", closes=True)
            assert await w.server_closes()


async def test_a_peers_malformed_header_block_is_dropped_not_fatal(nats_server: NatsServer) -> None:
    """nats-server relays HPUB header bytes unchecked; the receiver drops them and lives on."""
    with anyio.fail_after(TIMEOUT):
        async with wire(nats_server) as peer, wire(nats_server) as w:
            await peer.handshake()
            await w.handshake()
            sid = w.proto.subscribe("wire.bad.*")
            await w.sync()
            garbage = b"garbage\r\n\r\n"
            await peer.send_raw(b"HPUB wire.bad.h 11 13\r\n%shi\r\n" % garbage)
            await peer.send_raw(b"PUB wire.bad.\xff 2\r\nhi\r\nPUB wire.bad.ok 2\r\nok\r\n")
            await peer.sync()
            bad_header, bad_subject, good = [await w.event() for _ in range(3)]
    assert isinstance(bad_header, BadMsgReceived) and bad_header.sid == sid
    assert "NATS/1.0" in str(bad_header.error)
    assert isinstance(bad_subject, BadMsgReceived) and "UTF-8" in str(bad_subject.error)
    assert good == MsgReceived(sid, "wire.bad.ok", None, b"ok")
