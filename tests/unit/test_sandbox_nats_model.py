"""The sans-I/O NATS server of the sandbox, without an event loop: routing as nats-server 2.9."""

from __future__ import annotations

import pytest

from hare_py.errors import ConfigError, ConnectionLost
from hare_py.transport.base import CloseReason
from hare_py.transport.sandbox_nats._faults import Fault
from hare_py.transport.sandbox_nats._model import MAX_PAYLOAD_TEXT, NatsModel
from hare_py.transport.sandbox_nats._state import (
    ConnectionClosed,
    Event,
    LameDuck,
    Msg,
    NoResponders,
    Pong,
)
from hare_py.transport.subjects import InvalidSubject


class Server:
    """A model and everything it emitted, by connection."""

    def __init__(self, max_payload: int = 1024 * 1024) -> None:
        self.events: list[tuple[int, Event]] = []
        self.model = NatsModel(lambda conn, event: self.events.append((conn, event)), max_payload)

    def take(self, conn: int | None = None) -> list[Event]:
        """The events emitted so far (for ``conn`` only, if given); forgets them."""
        taken = [e for c, e in self.events if conn is None or c == conn]
        self.events = [(c, e) for c, e in self.events if conn is not None and c != conn]
        return taken

    def sids(self, conn: int) -> list[int]:
        """The sids the messages to ``conn`` went to, forgetting them."""
        return [e.sid for e in self.take(conn) if isinstance(e, Msg | NoResponders)]


@pytest.fixture
def server() -> Server:
    return Server()


def test_plain_subscribers_all_get_it_and_each_group_once(server: Server) -> None:
    """Each plain subscription gets a copy; groups take turns, one member per message."""
    m = server.model
    a, b = m.open_connection(), m.open_connection()
    m.subscribe(a, 1, "w.*")
    m.subscribe(a, 2, "w.x", "g")
    m.subscribe(b, 1, "w.>", "g")
    m.subscribe(b, 2, "w.x", "h")
    got = [m.publish(a, "w.x", b"") for _ in range(4)]
    assert got == [3, 3, 3, 3]
    assert server.sids(a) == [1, 2, 1, 1, 2, 1]  # plain each time, g every other time
    assert server.sids(b) == [2, 1, 2, 2, 1, 2]  # h each time, g on the other turns


def test_a_publisher_hears_itself(server: Server) -> None:
    """Echo is on: the publisher's own matching subscription gets its message."""
    m = server.model
    a = m.open_connection()
    m.subscribe(a, 7, "me")
    m.publish(a, "me", b"hi", reply="r")
    assert server.take(a) == [Msg(7, "me", "r", b"hi", None)]


def test_the_503_goes_to_the_publishers_first_match_in_server_order(server: Server) -> None:
    """nats-server 2.9's order (checked against it): shallower first; '>', then '*', then
    a literal, but a last literal before a last '*'; queue members and others never."""
    m = server.model
    a, b = m.open_connection(), m.open_connection()
    m.subscribe(b, 1, "_INBOX.>")  # another connection ranks first, and hears nothing
    m.subscribe(a, 1, "_INBOX.x.1")
    m.subscribe(a, 2, "_INBOX.x.*")
    m.subscribe(a, 3, "_INBOX.*.*")
    m.subscribe(a, 4, "_INBOX.x.>", "q")
    assert m.publish(a, "nobody", b"", reply="_INBOX.x.1") == 0
    assert server.take() == [NoResponders(3, "_INBOX.x.1")]
    m.subscribe(a, 5, "_INBOX.x.>")
    m.publish(a, "nobody", b"", reply="_INBOX.x.1")
    assert server.take() == [NoResponders(3, "_INBOX.x.1")]  # '*' at token 1 beats 'x'
    m.unsubscribe(a, 3)
    m.publish(a, "nobody", b"", reply="_INBOX.x.1")
    assert server.take() == [NoResponders(5, "_INBOX.x.1")]  # then '>' at token 2
    m.unsubscribe(a, 5)
    m.publish(a, "nobody", b"", reply="_INBOX.x.1")
    assert server.take() == [NoResponders(1, "_INBOX.x.1")]  # a last literal before '*'


def test_no_matching_subscription_of_the_publisher_means_no_503(server: Server) -> None:
    """Without a plain subscription of its own matching the reply, nothing comes back."""
    m = server.model
    a, b = m.open_connection(), m.open_connection()
    m.subscribe(a, 1, "_INBOX.x.*", "q")
    m.subscribe(b, 1, "_INBOX.x.*")
    m.publish(a, "nobody", b"", reply="_INBOX.x.1")
    m.publish(None, "nobody", b"", reply="_INBOX.x.1")
    assert server.take() == []


def test_a_subject_with_an_empty_token_is_dropped_but_still_answered(server: Server) -> None:
    """As nats-server without pedantic: nobody gets 'a..b', and a request to it gets its 503."""
    m = server.model
    a = m.open_connection()
    m.subscribe(a, 1, ">")
    m.subscribe(a, 2, "_INBOX.*")
    for subject in ("a..b", ".a", "a."):
        assert m.publish(a, subject, b"", reply="_INBOX.1") == 0
        assert server.take() == [NoResponders(1, "_INBOX.1")]  # '>' ranks first


def test_a_wildcard_in_a_published_subject_reaches_only_wildcards(server: Server) -> None:
    """'*' and '>' published are tokens that wildcard subscriptions match, literals never."""
    m = server.model
    a = m.open_connection()
    for sid, subject in enumerate(["p.x", "p.*", "p.>", ">", "p.*.y"], 1):
        m.subscribe(a, sid, subject)
    m.publish(None, "p.*", b"")
    assert sorted(server.sids(a)) == [2, 3, 4]
    m.publish(None, "p.>.y", b"")
    assert sorted(server.sids(a)) == [3, 4, 5]


def test_a_publish_over_max_payload_closes_the_connection() -> None:
    """A client that gets past its own check is cut off as nats-server cuts it off."""
    server = Server(max_payload=10)
    m = server.model
    a = m.open_connection()
    m.subscribe(a, 1, "big")
    assert m.publish(a, "big", b"x" * 10) == 1
    assert m.publish(a, "big", b"x" * 11) == 0
    events = server.take(a)
    assert events[-1] == ConnectionClosed(CloseReason(0, MAX_PAYLOAD_TEXT, "broker"))
    with pytest.raises(ConnectionLost):
        m.publish(a, "big", b"")
    with pytest.raises(ConfigError):
        m.publish(None, "big", b"x", headers=(("K", "v"),))  # 12 + 5 + 1 > 10


def test_operations_on_a_closed_connection_raise(server: Server) -> None:
    """After a close every client operation raises ConnectionLost and changes nothing."""
    m = server.model
    a = m.open_connection()
    m.close_connection(a, CloseReason(0, "bye", "client"))
    for op in (
        lambda: m.publish(a, "x", b""),
        lambda: m.subscribe(a, 1, "x"),
        lambda: m.unsubscribe(a, 1),
        lambda: m.ping(a),
    ):
        with pytest.raises(ConnectionLost):
            op()
    assert m.subscription_infos() == []


def test_an_invalid_sub_is_refused_and_the_connection_lives(server: Server) -> None:
    """The server's -ERR 'Invalid Subject' is recorded; nothing is subscribed; no close."""
    m = server.model
    a = m.open_connection()
    m.subscribe(a, 1, "a..b")
    m.subscribe(a, 2, "ok", "two words")
    errors = [op.error for op in m.history if op.name == "subscribe"]
    assert all(isinstance(e, InvalidSubject) for e in errors) and len(errors) == 2
    assert m.subscription_infos() == [] and m.connection_reason(a) is None


def test_a_stall_holds_both_ways_in_order(server: Server) -> None:
    """A stalled connection's operations and its events wait, then flow in order."""
    m = server.model
    a, b = m.open_connection(), m.open_connection()
    m.subscribe(a, 1, "to.a")
    m.subscribe(b, 1, "to.b")
    m.stall(a)
    m.publish(b, "to.a", b"1")
    assert m.publish(a, "to.b", b"2") is None
    m.ping(a)
    m.publish(b, "to.a", b"3")
    assert server.take() == []
    m.resume(a)
    held = [Msg(1, "to.a", None, b"1", None), Msg(1, "to.a", None, b"3", None)]
    assert server.take(a) == [*held, Pong()]  # what it got, then the answer to what it sent
    assert server.take(b) == [Msg(1, "to.b", None, b"2", None)]
    assert server.events == [] and m.connection_infos()[a].stalled is False


def test_a_pong_follows_what_was_held_before_it(server: Server) -> None:
    """A PING sent during a stall is answered after the events held before it."""
    m = server.model
    a, b = m.open_connection(), m.open_connection()
    m.subscribe(a, 1, "x")
    m.stall(a)
    m.publish(b, "x", b"held")
    m.ping(a)
    m.resume(a)
    assert server.take(a) == [Msg(1, "x", None, b"held", None), Pong()]


def test_a_close_drops_what_was_held(server: Server) -> None:
    """Killing a stalled connection discards its held traffic; only the close arrives."""
    m = server.model
    a, b = m.open_connection(), m.open_connection()
    m.subscribe(a, 1, "x")
    m.stall(a)
    m.publish(b, "x", b"held")
    m.close_connection(a, CloseReason(0, "gone", "network"))
    assert server.take(a) == [ConnectionClosed(CloseReason(0, "gone", "network"))]


def test_a_dropped_delivery_still_counts_as_delivered(server: Server) -> None:
    """A fault drops one delivery; the request it was is not answered with a 503."""
    m = server.model
    a, b = m.open_connection(), m.open_connection()
    m.subscribe(a, 1, "_INBOX.*")
    m.subscribe(b, 1, "svc.*", "workers")
    m.faults.add(Fault("drop", subject="svc.>", times=1))
    assert m.publish(a, "svc.call", b"", reply="_INBOX.1") == 1
    assert server.take() == []
    m.publish(a, "svc.call", b"", reply="_INBOX.2")
    assert server.take() == [Msg(1, "svc.call", "_INBOX.2", b"", None)]


def test_faults_filter_by_subject_connection_and_match(server: Server) -> None:
    """A fault applies to deliveries its subject, connection and predicate select."""
    m = server.model
    a, b = m.open_connection(), m.open_connection()
    m.subscribe(a, 1, "f.*")
    m.subscribe(b, 1, "f.*")
    m.faults.add(Fault("delay", subject="f.slow", delay=2.0, connection=b))
    m.faults.add(Fault("drop", match=lambda msg: msg.body == b"lost"))
    m.publish(None, "f.slow", b"")
    m.publish(None, "f.fast", b"lost")
    assert server.take(a) == [Msg(1, "f.slow", None, b"", None)]
    assert server.take(b) == [Msg(1, "f.slow", None, b"", None, delay=2.0)]


def test_lame_duck_reaches_every_connection_in_order(server: Server) -> None:
    """The lame duck INFO is an event like any other: held for a stalled connection."""
    m = server.model
    a, b = m.open_connection(), m.open_connection()
    m.stall(b)
    m.lame_duck()
    assert server.take(a) == [LameDuck()] and server.take(b) == []
    m.resume(b)
    assert server.take(b) == [LameDuck()]


def test_history_records_what_the_server_saw(server: Server) -> None:
    """Connects, subscriptions and publishes (with how many they reached) are recorded."""
    m = server.model
    a = m.open_connection("client-a")
    s = m.open_session(a)
    m.subscribe(a, 1, "h.*", session=s)
    m.publish(a, "h.x", b"b", headers=(("K", "1"), ("K", "2")), session=s)
    names = [op.name for op in m.history]
    assert names == ["connect", "open_session", "subscribe", "publish"]
    publish = m.history[-1]
    assert (publish.connection, publish.session, publish["delivered"]) == (a, s, 1)
    assert publish["headers"] == {"K": ["1", "2"]}
    assert m.history[0]["name"] == "client-a"
    assert m.session_infos()[s].subscriptions == (1,)
