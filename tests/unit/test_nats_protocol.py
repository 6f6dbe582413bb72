"""The sans-I/O NATS client core: server bytes in, events and exact client bytes out."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from hare_py.errors import ConfigError, HareError
from hare_py.transport.nats._protocol import (
    BadMsgReceived,
    Connected,
    ConnectionState,
    ErrReceived,
    Event,
    InfoReceived,
    InvalidHeader,
    InvalidSubject,
    MsgReceived,
    NatsClientProtocol,
    NatsLimits,
    NatsProtocolError,
    OkReceived,
    PayloadTooLarge,
    PingReceived,
    PongReceived,
    ServerInfo,
    check_publish_subject,
    check_subscribe_subject,
    err_closes_connection,
)

INFO_FIELDS: dict[str, Any] = {
    "server_id": "NSERVER",
    "server_name": "n1",
    "version": "2.9.10",
    "proto": 1,
    "headers": True,
    "max_payload": 1048576,
    "client_id": 7,
}


def info_line(**changes: Any) -> bytes:
    """An INFO line as nats-server 2.9 writes it (note the space before CRLF)."""
    return b"INFO %s \r\n" % json.dumps(INFO_FIELDS | changes).encode()


def msg(subject: bytes, sid: int, payload: bytes, reply: bytes | None = None) -> bytes:
    """A MSG the way the server frames it."""
    r = b" " + reply if reply else b""
    return b"MSG %s %d%s %d\r\n%s\r\n" % (subject, sid, r, len(payload), payload)


def hmsg(
    subject: bytes, sid: int, block: bytes, payload: bytes, reply: bytes | None = None
) -> bytes:
    """An HMSG with a raw header block, the way the server frames it."""
    r = b" " + reply if reply else b""
    total = len(block) + len(payload)
    return b"HMSG %s %d%s %d %d\r\n%s%s\r\n" % (subject, sid, r, len(block), total, block, payload)


def block(*lines: bytes, status: bytes = b"") -> bytes:
    """A header block: NATS/1.0[ status] CRLF, the lines, CRLF."""
    head = b"NATS/1.0" + (b" " + status if status else b"")
    return b"".join(line + b"\r\n" for line in (head, *lines)) + b"\r\n"


def connected(**kwargs: Any) -> NatsClientProtocol:
    """A protocol past INFO and the handshake PONG, with nothing left to send."""
    info = kwargs.pop("info", {})
    proto = NatsClientProtocol(**kwargs)
    events = proto.receive_data(info_line(**info) + b"PONG\r\n")
    assert [type(e) for e in events] == [InfoReceived, Connected]
    proto.data_to_send()
    return proto


def feed(proto: NatsClientProtocol, chunks: Iterable[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events += proto.receive_data(chunk)
    return events


def connect_fields(data: bytes) -> dict[str, Any]:
    line, _, rest = data.partition(b"\r\n")
    assert line.startswith(b"CONNECT ")
    assert rest == b"PING\r\n"
    fields: dict[str, Any] = json.loads(line[len(b"CONNECT ") :])
    return fields


# -- handshake --------------------------------------------------------------------


def test_first_info_queues_connect_and_ping_and_the_pong_is_connected() -> None:
    """INFO queues CONNECT (verbose off, headers and no_responders on) and PING; PONG: Connected."""
    proto = NatsClientProtocol(name="svc", version="1.2.3")
    assert proto.data_to_send() == b""
    [event] = proto.receive_data(info_line())
    assert isinstance(event, InfoReceived)
    assert event.info.server_id == "NSERVER" and event.info.max_payload == 1048576
    assert proto.state is ConnectionState.CONNECTING
    fields = connect_fields(proto.data_to_send())
    assert fields == {
        "verbose": False,
        "pedantic": False,
        "tls_required": False,
        "lang": "python",
        "version": "1.2.3",
        "protocol": 1,
        "echo": True,
        "headers": True,
        "no_responders": True,
        "name": "svc",
    }
    assert proto.receive_data(b"PONG\r\n") == [Connected()]
    # mypy keeps the state narrowed to CONNECTING across receive_data().
    assert proto.state is ConnectionState.CONNECTED  # type: ignore[comparison-overlap]
    assert proto.pings_outstanding == 0


def test_credentials_go_into_connect_as_given_and_never_into_the_repr() -> None:
    """user/pass and auth_token are sent only when given; the repr shows neither."""
    proto = NatsClientProtocol(user="alice", password="s3cret", token="t0ken")
    proto.receive_data(info_line(auth_required=True))
    fields = connect_fields(proto.data_to_send())
    assert (fields["user"], fields["pass"], fields["auth_token"]) == ("alice", "s3cret", "t0ken")
    assert "s3cret" not in repr(proto) and "t0ken" not in repr(proto)
    bare = NatsClientProtocol()
    bare.receive_data(info_line())
    assert not {"user", "pass", "auth_token", "name"} & connect_fields(bare.data_to_send()).keys()


def test_a_later_info_updates_the_server_info_without_a_second_connect() -> None:
    """Asynchronous INFO (cluster URLs, lame duck mode) updates max_payload and queues nothing."""
    proto = connected()
    urls = ["127.0.0.1:4223", "127.0.0.1:4224"]
    [event] = proto.receive_data(info_line(connect_urls=urls, ldm=True, max_payload=2048))
    assert isinstance(event, InfoReceived)
    assert event.info.connect_urls == tuple(urls) and event.info.lame_duck_mode
    assert proto.max_payload == 2048 and proto.server_info == event.info
    assert proto.data_to_send() == b""


def test_the_server_max_payload_is_capped_by_the_hard_limit() -> None:
    """max_payload is min(server's, limits.max_payload); a missing or <= 0 one means the cap."""
    limits = NatsLimits(max_payload=1000)
    assert connected(limits=limits, info={"max_payload": 5000}).max_payload == 1000
    assert connected(limits=limits, info={"max_payload": 10}).max_payload == 10
    assert connected(limits=limits, info={"max_payload": -1}).max_payload == 1000


# -- incoming operations ------------------------------------------------------------


def test_msg_with_and_without_reply() -> None:
    """MSG surfaces subject, sid, optional reply and payload; no headers."""
    proto = connected()
    events = proto.receive_data(msg(b"a.b", 3, b"hello") + msg(b"a.c", 4, b"", b"_INBOX.x.1"))
    assert events == [
        MsgReceived(3, "a.b", None, b"hello"),
        MsgReceived(4, "a.c", "_INBOX.x.1", b""),
    ]


def test_hmsg_headers_are_multi_valued_in_wire_order() -> None:
    """HMSG keeps every header line, repeated keys included, in order; payload follows."""
    proto = connected()
    raw = hmsg(b"s", 1, block(b"A: 1", b"B:2", b"A:  3", b"Empty:"), b"body", b"r")
    [event] = proto.receive_data(raw)
    assert isinstance(event, MsgReceived)
    assert event.headers == (("A", "1"), ("B", "2"), ("A", "3"), ("Empty", ""))
    assert event.header("A") == "1" and event.header_values("A") == ["1", "3"]
    assert event.header("a") is None  # keys are case-sensitive
    assert (event.payload, event.reply, event.status) == (b"body", "r", None)


def test_hmsg_inline_status_503_is_no_responders() -> None:
    """NATS/1.0 503 with no payload, as nats-server answers a request nobody serves."""
    proto = connected()
    [event] = proto.receive_data(b"HMSG _INBOX.x.1 2 16 16\r\nNATS/1.0 503\r\n\r\n\r\n")
    assert isinstance(event, MsgReceived)
    assert (event.status, event.description, event.headers) == (503, "", ())
    assert event.no_responders


def test_hmsg_status_with_description_and_headers() -> None:
    """A status line may carry a description and be followed by headers."""
    proto = connected()
    raw = hmsg(b"s", 1, block(b"Nats-Last-Stream: 5", status=b"100 Idle Heartbeat"), b"")
    event, later = proto.receive_data(raw + hmsg(b"s", 1, block(status=b"404 No Messages"), b"x"))
    assert isinstance(event, MsgReceived) and isinstance(later, MsgReceived)
    assert (event.status, event.description) == (100, "Idle Heartbeat")
    assert event.headers == (("Nats-Last-Stream", "5"),)
    assert (later.status, later.description, later.no_responders) == (404, "No Messages", False)


def test_hmsg_without_header_lines() -> None:
    """An empty NATS/1.0 block gives no headers and no status."""
    proto = connected()
    [event] = proto.receive_data(hmsg(b"s", 9, block(), b"p"))
    assert event == MsgReceived(9, "s", None, b"p", (), None, "")


def test_server_ping_is_answered_and_our_pings_count_their_pongs() -> None:
    """The server's PING queues PONG; each of our PINGs is matched by one PongReceived."""
    proto = connected()
    assert proto.receive_data(b"PING\r\n") == [PingReceived()]
    assert proto.data_to_send() == b"PONG\r\n"
    proto.ping()
    proto.ping()
    assert proto.pings_outstanding == 2
    assert proto.receive_data(b"PONG\r\nPONG\r\n") == [PongReceived(), PongReceived()]
    assert proto.pings_outstanding == 0
    with pytest.raises(NatsProtocolError, match="PONG without a PING"):
        proto.receive_data(b"PONG\r\n")


def test_ok_and_case_insensitive_operations_and_tabs() -> None:
    """+OK is an event; operation names are case-insensitive and tabs separate arguments."""
    proto = connected()
    events = proto.receive_data(b"+OK\r\nping\r\nmsg\ta\t1\t2\r\nhi\r\n")
    assert events == [OkReceived(), PingReceived(), MsgReceived(1, "a", None, b"hi")]


CLOSING = [
    # nats-server 2.9 server/client.go, parser.go, server.go, route.go
    "Stale Connection",
    "Authorization Violation",
    "Authentication Timeout",
    "User Authentication Expired",
    "Account Authentication Expired",
    "Maximum Payload Violation",
    "Unknown Protocol Operation",
    "maximum control line exceeded",
    "maximum connections exceeded",
    "maximum account active connections exceeded",
    "invalid client protocol",
    "no responders requires headers support",
    "Secure Connection - TLS Required",
    "Connection throttling is active. Please try again later.",
    "attempted to connect to route port",
    "Failed Account Registration",
    # the protocol documentation's list
    "Parser Error",
    "Slow Consumer",
    "Maximum Connections Exceeded",
    # anything not known to keep the connection
    "Something New",
]
KEEPS_OPEN = [
    'Permissions Violation for Publish to "a.b"',
    'Permissions Violation for Publish with Reply of "_INBOX.x"',
    'Permissions Violation for Subscription to "a.>"',
    'Permissions Violation for Subscription to "a" using queue "q"',
    'Permissions Violation for Subscription to "a.b.c", too many tokens',
    "maximum subscriptions exceeded",
    "Invalid Subject",
    "Invalid Publish Subject",
]


@pytest.mark.parametrize("text", CLOSING)
def test_err_that_closes_the_connection_ends_parsing(text: str) -> None:
    """A closing -ERR closes the protocol: what follows it is not parsed."""
    proto = connected()
    events = proto.receive_data(b"-ERR '%s'\r\nPING\r\n" % text.encode())
    assert events == [ErrReceived(text, closes=True)]
    assert proto.closed and err_closes_connection(text)
    assert proto.receive_data(b"PING\r\n") == []
    assert proto.data_to_send() == b""


@pytest.mark.parametrize("text", KEEPS_OPEN)
def test_err_that_keeps_the_connection_is_only_an_event(text: str) -> None:
    """Permission violations, invalid subjects and the subscription limit leave it open."""
    proto = connected()
    events = proto.receive_data(b"-ERR '%s'\r\nPING\r\n" % text.encode())
    assert events == [ErrReceived(text, closes=False), PingReceived()]
    assert proto.state is ConnectionState.CONNECTED and not err_closes_connection(text)


def test_auth_errors_are_flagged_and_may_come_before_connected() -> None:
    """An auth -ERR after CONNECT is flagged ``auth`` and closes; a permission one is not auth."""
    proto = NatsClientProtocol(user="u", password="wrong")
    proto.receive_data(info_line(auth_required=True))
    [event] = proto.receive_data(b"-ERR 'Authorization Violation'\r\n")
    assert isinstance(event, ErrReceived) and event.auth and event.closes
    assert proto.closed
    assert not ErrReceived('Permissions Violation for Publish to "x"', False).auth


def test_err_text_that_is_not_utf8_is_replaced_not_raised() -> None:
    """-ERR text is decoded with replacement characters."""
    proto = connected()
    [event] = proto.receive_data(b"-ERR 'Invalid Subject \xff'\r\n")
    assert event == ErrReceived("Invalid Subject \ufffd", closes=False)


# -- outgoing operations --------------------------------------------------------------


def test_pub_hpub_sub_unsub_ping_pong_bytes() -> None:
    """Each builder queues exactly the protocol line (and payload) NATS expects."""
    proto = connected()
    assert proto.subscribe("a.*") == 1
    assert proto.subscribe("a.>", queue="workers") == 2
    proto.unsubscribe(1)
    proto.unsubscribe(2, max_msgs=5)
    proto.publish("a.b", b"hi")
    proto.publish("a.b", b"", reply="_INBOX.x.1")
    proto.publish("a.b", b"body", reply="r", headers=[("K", "v1"), ("K", "v2")])
    proto.publish("a.b", b"", headers={})
    proto.ping()
    proto.pong()
    assert proto.bytes_to_send == len(expected := b"".join([
        b"SUB a.* 1\r\n",
        b"SUB a.> workers 2\r\n",
        b"UNSUB 1\r\n",
        b"UNSUB 2 5\r\n",
        b"PUB a.b 2\r\nhi\r\n",
        b"PUB a.b _INBOX.x.1 0\r\n\r\n",
        b"HPUB a.b r 26 30\r\nNATS/1.0\r\nK: v1\r\nK: v2\r\n\r\nbody\r\n",
        b"HPUB a.b 12 12\r\nNATS/1.0\r\n\r\n\r\n",
        b"PING\r\n",
        b"PONG\r\n",
    ]))  # fmt: skip
    assert proto.data_to_send() == expected
    assert proto.data_to_send() == b""


def test_what_we_send_parses_back_as_the_same_message() -> None:
    """HPUB bytes, framed as the server relays them, parse back to the same headers."""
    proto = connected()
    headers = [("Nats-Service-Error", "boom"), ("X", "é"), ("X", "two words")]
    proto.publish("svc.call", b"payload", reply="_INBOX.r.1", headers=headers)
    sent = proto.data_to_send()
    relayed = b"HMSG svc.call 1 _INBOX.r.1" + sent[len(b"HPUB svc.call _INBOX.r.1") :]
    [event] = proto.receive_data(relayed)
    assert isinstance(event, MsgReceived)
    assert (event.headers, event.payload) == (tuple(headers), b"payload")


def test_payload_over_max_payload_is_refused_before_anything_is_queued() -> None:
    """PayloadTooLarge (a ConfigError) for PUB at max_payload + 1 and for HPUB counting headers."""
    proto = connected(info={"max_payload": 100})
    proto.publish("a", b"x" * 100)
    proto.data_to_send()
    with pytest.raises(PayloadTooLarge) as caught:
        proto.publish("a", b"x" * 101)
    assert (caught.value.size, caught.value.limit) == (101, 100)
    with pytest.raises(PayloadTooLarge):
        proto.publish("a", b"x" * 90, headers={"K": "v"})  # 12 + 7 header bytes
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, HareError)
    assert proto.bytes_to_send == 0 and proto.state is ConnectionState.CONNECTED


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ({"": "v"}, "header key"),
        ({"a:b": "v"}, "header key"),
        ({"a b": "v"}, "header key"),
        ({"k\r\n": "v"}, "header key"),
        ({"k": "v\r\nInjected: 1"}, "control characters"),
        ({"k": " leading"}, "starts with no space"),
        ({"k": "nul\x00"}, "control characters"),
        ({"k": "\ud800"}, "pair of strings"),
        ({"k" * 3: 1}, "pair of strings"),
    ],
)
def test_header_keys_and_values_nats_cannot_carry_are_refused(
    headers: dict[str, Any], match: str
) -> None:
    """InvalidHeader before anything is queued: no CRLF injection, no ':' in keys."""
    proto = connected()
    with pytest.raises(InvalidHeader, match=match):
        proto.publish("a", b"", headers=headers)
    assert proto.bytes_to_send == 0


def test_header_count_and_block_size_are_bounded_when_sending() -> None:
    """More headers than limits.headers, or a block over limits.header_block: InvalidHeader."""
    proto = connected(limits=NatsLimits(headers=2, header_block=40))
    proto.publish("a", b"", headers=[("A", "1"), ("B", "2")])
    with pytest.raises(InvalidHeader, match="more than 2 headers"):
        proto.publish("a", b"", headers=[("A", "1"), ("B", "2"), ("C", "3")])
    with pytest.raises(InvalidHeader, match="longer than 40"):
        proto.publish("a", b"", headers=[("A", "x" * 30)])


def test_headers_are_refused_by_a_server_without_them() -> None:
    """HPUB to a server whose INFO says headers: false is an InvalidHeader; PUB still works."""
    proto = connected(info={"headers": False})
    with pytest.raises(InvalidHeader, match="does not support headers"):
        proto.publish("a", b"", headers={"K": "v"})
    proto.publish("a", b"")


def test_calls_before_info_are_refused() -> None:
    """Nothing may be sent before the server's INFO (max_payload is unknown until then)."""
    proto = NatsClientProtocol()
    for call in (
        lambda: proto.publish("a", b""),
        lambda: proto.subscribe("a"),
        lambda: proto.unsubscribe(1),
        proto.ping,
        proto.pong,
    ):
        with pytest.raises(NatsProtocolError, match="await-info"):
            call()
    assert proto.data_to_send() == b""


VALID_BOTH = ["a", "a.b.c", "_INBOX.abc123.7", "loom.rpc.agent-coder.inst123.task", "é.ü"]
VALID_SUBSCRIBE_ONLY = ["*", ">", "a.*", "a.>", "*.b.*", "a.*.>"]
INVALID_BOTH = [
    "",
    ".",
    "a.",
    ".a",
    "a..b",
    "a b",
    "a\tb",
    "a\r\nPUB x 1",
    "a\x00",
    "a.b*",
    "a.*b",
    "a.>.b",
    ">.a",
    "a.b>",
    "\ud800",
]


@pytest.mark.parametrize("subject", VALID_BOTH + VALID_SUBSCRIBE_ONLY)
def test_subscribe_subject_valid(subject: str) -> None:
    """Non-empty tokens without whitespace; '*' and '>' as whole tokens, '>' last."""
    assert check_subscribe_subject(subject) == subject.encode()


@pytest.mark.parametrize("subject", VALID_BOTH)
def test_publish_subject_valid(subject: str) -> None:
    """A literal subject may be published to."""
    assert check_publish_subject(subject) == subject.encode()


@pytest.mark.parametrize("subject", INVALID_BOTH)
def test_invalid_subjects_are_refused_for_both(subject: str) -> None:
    """Empty tokens, whitespace, control characters and partial wildcards: InvalidSubject."""
    with pytest.raises(InvalidSubject):
        check_subscribe_subject(subject)
    with pytest.raises(InvalidSubject):
        check_publish_subject(subject)


@pytest.mark.parametrize("subject", VALID_SUBSCRIBE_ONLY)
def test_wildcards_are_refused_for_publishing(subject: str) -> None:
    """Publishing takes no wildcards."""
    with pytest.raises(InvalidSubject, match="wildcards"):
        check_publish_subject(subject)


def test_subject_length_and_tokens_are_bounded() -> None:
    """limits.subject_bytes and limits.subject_tokens bound subjects (bytes after UTF-8)."""
    limits = NatsLimits(subject_bytes=8, subject_tokens=3)
    assert check_publish_subject("a.b.c", limits) == b"a.b.c"
    with pytest.raises(InvalidSubject, match="more than 3 tokens"):
        check_publish_subject("a.b.c.d", limits)
    with pytest.raises(InvalidSubject, match="longer than 8 bytes"):
        check_subscribe_subject("ééééé", limits)  # 5 characters, 10 bytes


def test_builders_check_subjects_replies_and_queue_groups() -> None:
    """publish/subscribe refuse bad subjects, replies and queue groups before queuing."""
    proto = connected()
    with pytest.raises(InvalidSubject):
        proto.publish("a.*", b"")
    with pytest.raises(InvalidSubject):
        proto.publish("a", b"", reply="r.>")
    with pytest.raises(InvalidSubject):
        proto.subscribe("a..b")
    for queue in ("", "two words", "q\r\n", "\ud800"):
        with pytest.raises(InvalidSubject, match="queue group"):
            proto.subscribe("a", queue=queue)
    with pytest.raises(ConfigError):
        proto.unsubscribe(1, max_msgs=0)
    assert proto.bytes_to_send == 0


def test_a_subject_is_checked_once_and_a_bad_one_every_time() -> None:
    """Publish subjects are remembered once checked (a bounded number of them); a bad
    subject, or a value that is not a string, is refused on every publish."""
    proto = connected()
    for i in range(1000):
        proto.publish(f"s.{i}", b"")
        proto.publish("s.again", b"", reply=f"r.{i}")
    assert proto.data_to_send().count(b"PUB s.again r.") == 1000
    assert len(proto._checked) <= 256
    for _ in range(2):
        with pytest.raises(InvalidSubject):
            proto.publish("a.*", b"")
        with pytest.raises(InvalidSubject):
            proto.publish(["a"], b"")  # type: ignore[arg-type]
    assert "a.*" not in proto._checked
    assert proto.bytes_to_send == 0


#: Subjects under the known prefix ``_INBOX.ab.`` that a 16-byte, 4-token limit refuses.
BAD_UNDER_KNOWN_PREFIX = [
    ("_INBOX.ab.*", "wildcards"),
    ("_INBOX.ab.>", "wildcards"),
    ("_INBOX.ab.x y", "whitespace"),
    ("_INBOX.ab.", "whitespace"),
    ("_INBOX.ab.abcdefg", "longer than 16 bytes"),
    ("_INBOX.ab.c.d.e", "more than 4 tokens"),
]


def test_a_reply_under_a_known_prefix_is_still_checked_whole() -> None:
    """A reply subject's prefix is remembered once a reply under it passed; the last
    token of the next ones is still checked, and so are the bounds of the whole."""
    proto = connected(limits=NatsLimits(subject_bytes=16, subject_tokens=4))
    proto.publish("s", b"", reply="_INBOX.ab.c-1_Z")  # 15 bytes, 3 tokens: valid
    proto.publish("s", b"", reply="_INBOX.ab.d")
    assert proto.data_to_send() == b"PUB s _INBOX.ab.c-1_Z 0\r\n\r\nPUB s _INBOX.ab.d 0\r\n\r\n"
    for bad, why in [
        *BAD_UNDER_KNOWN_PREFIX,
        ("_INBOX.ab.éééé", "longer than 16 bytes"),  # 14 characters, 18 bytes
    ]:
        with pytest.raises(InvalidSubject, match=why):
            proto.publish("s", b"", reply=bad)
    with pytest.raises(InvalidSubject):
        proto.publish("s", b"", reply=b"_INBOX.ab.c")  # type: ignore[arg-type]
    assert proto.bytes_to_send == 0
    proto.publish("s", b"", reply="_INBOX.ab.é")  # any other valid token: checked whole
    assert proto.data_to_send() == "PUB s _INBOX.ab.é 0\r\n\r\n".encode()


def test_a_subject_under_a_known_prefix_is_checked_whole_and_not_kept() -> None:
    """A server publishes each reply to a new subject: its prefix is known after the
    first, the rest is checked as for a reply subject, and the subjects themselves are
    not kept (so they do not push out the subjects a client sends to again and again)."""
    proto = connected(limits=NatsLimits(subject_bytes=16, subject_tokens=4))
    proto.publish("_INBOX.ab.c-1_Z", b"")  # checked whole: kept, its prefix known
    for n in range(300):
        proto.publish(f"_INBOX.ab.{n}", b"")
    assert list(proto._checked) == ["_INBOX.ab.c-1_Z"]
    assert proto.data_to_send().count(b"PUB _INBOX.ab.") == 301
    for bad, why in BAD_UNDER_KNOWN_PREFIX:
        with pytest.raises(InvalidSubject, match=why):
            proto.publish(bad, b"")
    assert proto.bytes_to_send == 0


# -- bounds and broken streams ----------------------------------------------------------


def test_a_control_line_over_the_limit_fails_before_it_ends() -> None:
    """No CRLF within limits.control_line bytes: NatsProtocolError, without waiting for more."""
    proto = connected(limits=NatsLimits(control_line=64))
    proto.receive_data(b"MSG " + b"a" * 60)  # 64 bytes, still possibly a line
    with pytest.raises(NatsProtocolError, match="longer than 64 bytes"):
        proto.receive_data(b"aa")
    assert proto.closed and proto.receive_data(b"PING\r\n") == []


def test_a_control_line_at_the_limit_is_accepted() -> None:
    """A line of exactly limits.control_line bytes parses."""
    proto = connected(limits=NatsLimits(control_line=64))
    line = b"MSG " + b"a" * (64 - len(b"MSG  1 0")) + b" 1 0"
    assert len(line) == 64
    [event] = proto.receive_data(line + b"\r\n\r\n")
    assert isinstance(event, MsgReceived) and event.payload == b""


def test_the_info_line_has_its_own_larger_bound() -> None:
    """INFO may be longer than a control line, up to limits.info_line."""
    limits = NatsLimits(control_line=64, info_line=1024)
    proto = NatsClientProtocol(limits=limits)
    big = info_line(connect_urls=["127.0.0.1:4222"] * 20)
    assert 64 < len(big) <= 1024
    assert isinstance(proto.receive_data(big)[0], InfoReceived)
    with pytest.raises(NatsProtocolError, match="longer than 1024 bytes"):
        proto.receive_data(b"INFO " + b" " * 1100)


def test_a_message_over_max_payload_fails_at_its_control_line() -> None:
    """A size over max_payload fails before any of the payload is buffered."""
    proto = connected(info={"max_payload": 100})
    proto.receive_data(msg(b"a", 1, b"x" * 100))
    with pytest.raises(NatsProtocolError, match="exceeds the max_payload of 100"):
        proto.receive_data(b"MSG a 1 101\r\n")


def test_the_hard_payload_cap_holds_whatever_the_server_says() -> None:
    """A server announcing a huge max_payload still cannot make us buffer past the cap."""
    proto = connected(limits=NatsLimits(max_payload=1000), info={"max_payload": 1 << 30})
    with pytest.raises(NatsProtocolError, match="max_payload of 1000"):
        proto.receive_data(b"HMSG a 1 12 1001\r\n")


@pytest.mark.parametrize(
    "line",
    [
        b"MSG a 1 -1",
        b"MSG a 1 +1",
        b"MSG a 1 1_0",
        b"MSG a 1 \xd9\xa1",  # Arabic-Indic digit one
        b"MSG a 1 99999999999",
        b"MSG a x 1",
        b"MSG a 1",
        b"MSG a 1 r x 1",
        b"MSG",
        b"HMSG a 1 5",
        b"HMSG a 1 6 5",
        b"HMSG a 1 r 1 2 3",
        b"HMSG a 99999999999999999999 1 1",
        b"NOPE",
        b"INFO",
        b"INFO [1, 2]",
        b"INFO {bad json",
        b"INFO \xff\xfe",
        b'INFO {"max_payload": "1"}',
        b'INFO {"max_payload": true}',
        b'INFO {"headers": 1}',
        b'INFO {"connect_urls": "a"}',
        b'INFO {"connect_urls": [1]}',
        b'INFO {"proto": 1e999}',
        b"INFO " + b"[" * 5000,
        b"INFO " + b"1" * 5000,
    ],
)
def test_malformed_control_lines_raise_only_the_typed_error(line: bytes) -> None:
    """Bad numbers, argument counts, operations and INFO bodies raise NatsProtocolError."""
    proto = connected(limits=NatsLimits(info_line=10_000))
    with pytest.raises(NatsProtocolError):
        proto.receive_data(line + b"\r\n")
    assert proto.closed


def test_a_payload_must_end_with_crlf() -> None:
    """A payload not followed by CRLF means the framing is lost."""
    proto = connected()
    with pytest.raises(NatsProtocolError, match="not followed by CRLF"):
        proto.receive_data(b"MSG a 1 2\r\nhi!!")


@pytest.mark.parametrize("op", [b"MSG a 1 0\r\n\r\n", b"PING\r\n", b"PONG\r\n", b"+OK\r\n"])
def test_nothing_but_info_or_err_may_come_first(op: bytes) -> None:
    """Before INFO the server sends nothing else (a PONG is a PING's that we never sent)."""
    proto = NatsClientProtocol()
    with pytest.raises(NatsProtocolError):
        proto.receive_data(op)


def test_a_closing_err_may_come_before_info() -> None:
    """nats-server may refuse a connection with -ERR before (or instead of) INFO."""
    proto = NatsClientProtocol()
    assert proto.receive_data(b"-ERR 'maximum connections exceeded'\r\n") == [
        ErrReceived("maximum connections exceeded", closes=True)
    ]


BAD_CONTENT = [
    pytest.param(hmsg(b"a", 1, b"garbage\r\nxx\r\n\r\n", b"p"), "not NATS/1.0", id="not-nats"),
    pytest.param(hmsg(b"a", 1, b"NATS/1.0\r\n", b"p"), "not NATS/1.0", id="no-blank-line"),
    pytest.param(hmsg(b"a", 1, b"NATS/1.1\r\n\r\n", b""), "not NATS/1.0", id="version"),
    pytest.param(hmsg(b"a", 1, block(status=b"5x3"), b""), "bad status", id="status"),
    pytest.param(hmsg(b"a", 1, block(status=b"5030"), b""), "bad status", id="status-4"),
    pytest.param(hmsg(b"a", 1, b"NATS/1.0503\r\n\r\n", b""), "not NATS/1.0", id="no-space"),
    pytest.param(hmsg(b"a", 1, block(b"no colon"), b""), "without ':'", id="colon"),
    pytest.param(hmsg(b"a", 1, block(b"K: \xff"), b""), "not UTF-8", id="value-utf8"),
    pytest.param(hmsg(b"a", 1, block(b"\xff: v"), b""), "not UTF-8", id="key-utf8"),
    pytest.param(hmsg(b"a", 1, block(b"K: v", b""), b""), "without ':'", id="blank-line"),
    pytest.param(hmsg(b"a", 1, block(status=b"503 \xff"), b""), "not UTF-8", id="descr"),
    pytest.param(hmsg(b"a", 1, block(*[b"K: v"] * 5), b""), "more than 4 headers", id="count"),
    pytest.param(hmsg(b"a", 1, block(b"K: " + b"v" * 200), b""), "over 128 bytes", id="size"),
    pytest.param(msg(b"a\xff.b", 1, b"p"), "not UTF-8", id="subject-utf8"),
    pytest.param(msg(b"a", 1, b"p", b"r\xff"), "not UTF-8", id="reply-utf8"),
    pytest.param(msg(b"a" * 65, 1, b"p"), "longer than 64 bytes", id="subject-length"),
    pytest.param(msg(b"a", 1, b"p", b"r" * 65), "longer than 64 bytes", id="reply-length"),
    pytest.param(msg(b"a." * 8 + b"a", 1, b"p"), "over 8 tokens", id="tokens"),
]


@pytest.mark.parametrize(("raw", "reason"), BAD_CONTENT)
def test_a_well_framed_message_with_bad_content_is_dropped_not_fatal(
    raw: bytes, reason: str
) -> None:
    """Bad headers or subjects from some publisher make BadMsgReceived; the next message parses."""
    limits = NatsLimits(headers=4, header_block=128, subject_bytes=64, subject_tokens=8)
    proto = connected(limits=limits)
    events = proto.receive_data(raw + msg(b"next", 2, b"ok"))
    assert len(events) == 2
    bad, good = events
    assert isinstance(bad, BadMsgReceived) and bad.sid == 1
    assert isinstance(bad.error, NatsProtocolError) and reason in str(bad.error)
    assert good == MsgReceived(2, "next", None, b"ok")
    assert proto.state is ConnectionState.CONNECTED


# -- fragmentation, fuzzing, linearity ----------------------------------------------------

TOKENS = st.sampled_from(["a", "b", "svc", "_INBOX", "x1", "é"])
SUBJECTS = st.lists(TOKENS, min_size=1, max_size=4).map(".".join)
HEADER_KEYS = st.sampled_from(["A", "B", "Nats-Msg-Id", "X-Trace"])
HEADER_VALUES = st.text(alphabet="abc xyz-01é", max_size=12).map(str.strip)


@st.composite
def server_stream(draw: st.DrawFn) -> tuple[bytes, list[Event], int]:
    """(bytes, the events they must make, how many PINGs to send first) after INFO."""
    parts: list[bytes] = []
    events: list[Event] = []
    pings = 0
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["msg", "hmsg", "ping", "pong", "ok", "err", "info"]))
        if kind in ("msg", "hmsg"):
            subject = draw(SUBJECTS)
            sid = draw(st.integers(1, 10**6))
            reply = draw(st.none() | SUBJECTS)
            payload = draw(st.binary(max_size=40))
            raw_reply = None if reply is None else reply.encode()
            if kind == "msg":
                parts.append(msg(subject.encode(), sid, payload, raw_reply))
                events.append(MsgReceived(sid, subject, reply, payload))
                continue
            headers = draw(st.lists(st.tuples(HEADER_KEYS, HEADER_VALUES), max_size=4))
            status = draw(st.none() | st.sampled_from([503, 404, 408, 100]))
            lines = [f"{k}: {v}".encode() for k, v in headers]
            hb = block(*lines, status=b"" if status is None else b"%d" % status)
            parts.append(hmsg(subject.encode(), sid, hb, payload, raw_reply))
            events.append(MsgReceived(sid, subject, reply, payload, tuple(headers), status, ""))
        elif kind == "ping":
            parts.append(b"PING\r\n")
            events.append(PingReceived())
        elif kind == "pong":
            pings += 1
            parts.append(b"PONG\r\n")
            events.append(PongReceived())
        elif kind == "ok":
            parts.append(b"+OK\r\n")
            events.append(OkReceived())
        elif kind == "err":
            text = draw(st.sampled_from(KEEPS_OPEN))
            parts.append(b"-ERR '%s'\r\n" % text.encode())
            events.append(ErrReceived(text, closes=False))
        else:
            urls = draw(st.lists(st.sampled_from(["127.0.0.1:1", "127.0.0.1:2"]), max_size=2))
            raw = INFO_FIELDS | {"connect_urls": urls}
            parts.append(info_line(connect_urls=urls))
            events.append(InfoReceived(_info(raw)))
    return b"".join(parts), events, pings


def _info(raw: dict[str, Any]) -> ServerInfo:
    proto = NatsClientProtocol()
    [event] = proto.receive_data(b"INFO %s\r\n" % json.dumps(raw).encode())
    assert isinstance(event, InfoReceived)
    return event.info


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(server_stream(), st.lists(st.integers(0, 2000), max_size=30))
@settings(max_examples=300)
def test_any_fragmentation_gives_the_same_events(
    stream: tuple[bytes, list[Event], int], cuts: list[int]
) -> None:
    """The same bytes split anywhere (down to single bytes) make the same, expected events."""
    data, expected, pings = stream
    whole, pieces, single = connected(), connected(), connected()
    for proto in (whole, pieces, single):
        for _ in range(pings):
            proto.ping()
    assert whole.receive_data(data) == expected
    assert feed(pieces, split(data, cuts)) == expected
    assert feed(single, (data[i : i + 1] for i in range(len(data)))) == expected
    assert whole.data_to_send() == pieces.data_to_send() == single.data_to_send()


def _only_events_or_the_typed_error(proto: NatsClientProtocol, chunks: Iterable[bytes]) -> None:
    try:
        for chunk in chunks:
            for event in proto.receive_data(chunk):
                assert isinstance(event, Event)
    except NatsProtocolError:
        assert proto.closed


@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=10))
@settings(max_examples=300)
def test_random_bytes_make_events_or_the_typed_error(data: bytes, cuts: list[int]) -> None:
    """Random bytes, before or after INFO, never raise anything but NatsProtocolError."""
    limits = NatsLimits(control_line=256, info_line=512, max_payload=1024)
    _only_events_or_the_typed_error(NatsClientProtocol(limits=limits), split(data, cuts))
    _only_events_or_the_typed_error(connected(limits=limits), split(data, cuts))


@given(
    server_stream(),
    st.lists(st.tuples(st.integers(0, 5000), st.binary(min_size=0, max_size=3)), max_size=6),
    st.lists(st.integers(0, 5000), max_size=10),
)
@settings(max_examples=300)
def test_mutated_streams_make_events_or_the_typed_error(
    stream: tuple[bytes, list[Event], int], edits: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    """A valid stream with bytes replaced, dropped or inserted never raises another error."""
    data = bytearray(stream[0])
    for at, replacement in edits:
        at = min(at, len(data))
        data[at : at + 1] = replacement
    proto = connected(limits=NatsLimits(headers=3, header_block=64, subject_tokens=3))
    for _ in range(stream[2]):
        proto.ping()
    _only_events_or_the_typed_error(proto, split(bytes(data), cuts))


def _outcome(proto: NatsClientProtocol, chunks: Iterable[bytes]) -> tuple[list[Any], str | None]:
    """The events (a bad message as its fields and error text) and the error that ended it."""
    seen: list[Any] = []
    try:
        for chunk in chunks:
            for event in proto.receive_data(chunk):
                if isinstance(event, BadMsgReceived):
                    seen.append(("bad", event.sid, event.subject, event.reply, str(event.error)))
                else:
                    seen.append(event)
    except NatsProtocolError as exc:
        return seen, str(exc)
    return seen, None


@given(
    server_stream(),
    st.lists(st.tuples(st.integers(0, 5000), st.binary(min_size=0, max_size=3)), max_size=6),
)
@settings(max_examples=300)
def test_a_mutated_stream_parses_alike_whole_and_byte_by_byte(
    stream: tuple[bytes, list[Event], int], edits: list[tuple[int, bytes]]
) -> None:
    """Whole, a MSG whose payload is in the buffer takes the one-step path; byte by byte,
    never: both must accept, drop and refuse exactly the same messages."""
    data = bytearray(stream[0])
    for at, replacement in edits:
        at = min(at, len(data))
        data[at : at + 1] = replacement
    limits = NatsLimits(headers=3, header_block=64, subject_bytes=16, subject_tokens=3)
    whole, single = connected(limits=limits), connected(limits=limits)
    for proto in (whole, single):
        for _ in range(stream[2]):
            proto.ping()
    whole_events, whole_error = _outcome(whole, [bytes(data)])
    single_events, single_error = _outcome(
        single, (bytes(data[i : i + 1]) for i in range(len(data)))
    )
    assert whole_error == single_error
    if whole_error is None:  # a whole buffer that fails returns none of its events
        assert whole_events == single_events


class CountingBuffer(bytearray):
    """A bytearray that counts the bytes its CRLF searches look at."""

    scanned = 0

    def find(self, sub: Any, start: Any = None, end: Any = None, /) -> int:
        found = super().find(sub, start, end)
        begin = 0 if start is None else start
        stop = len(self) if end is None else min(end, len(self))
        self.scanned += max(0, (stop if found < 0 else found + len(sub)) - begin)
        return found


def counting(proto: NatsClientProtocol) -> CountingBuffer:
    buf = CountingBuffer()
    proto._buf = buf
    return buf


def test_parsing_100000_tiny_messages_in_odd_chunks_scans_each_byte_about_once() -> None:
    """Linear parsing: 100,000 MSGs fed 13 bytes at a time scan under 2x the stream's bytes."""
    proto = connected()
    buf = counting(proto)
    data = msg(b"a", 1, b"x") * 100_000
    count = 0
    for i in range(0, len(data), 13):
        count += len(proto.receive_data(data[i : i + 13]))
    assert count == 100_000
    assert buf.scanned < 2 * len(data)
    assert len(proto._buf) == 0


def test_a_long_line_fed_byte_by_byte_is_scanned_once() -> None:
    """The CRLF search resumes where it stopped: a 4000-byte line in 1-byte pieces scans ~4000."""
    proto = connected(limits=NatsLimits(subject_bytes=4000))
    buf = counting(proto)
    line = b"MSG " + b"a" * 3990 + b" 1 0\r\n\r\n"
    events = feed(proto, (line[i : i + 1] for i in range(len(line))))
    assert [type(e) for e in events] == [MsgReceived]
    assert buf.scanned < 3 * len(line)  # a rescan from the start each time: ~8,000,000


def test_a_large_payload_in_small_chunks_is_not_searched() -> None:
    """While a payload is awaited no CRLF search runs: bytes are counted, not scanned."""
    proto = connected()
    buf = counting(proto)
    payload = b"\r\n" * 500_000  # 1 MB of CRLFs inside the payload
    data = msg(b"a", 1, payload)
    events = feed(proto, (data[i : i + 1000] for i in range(0, len(data), 1000)))
    assert events == [MsgReceived(1, "a", None, payload)]
    assert buf.scanned < 100
