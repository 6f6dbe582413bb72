"""The sandbox's sans-I/O broker model and routing rules, without any event loop."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, strategies as st

from hare_py.errors import BrokerError, ConnectionLost
from hare_py.transport.base import CloseReason, Properties
from hare_py.transport.sandbox._model import BrokerModel, LoopClock
from hare_py.transport.sandbox._routing import headers_match, topic_match
from hare_py.transport.sandbox._state import (
    ChannelClosed,
    ConnectionClosed,
    ConsumerCancelled,
    Deliver,
    Event,
    Return,
)

words = st.lists(st.sampled_from(["a", "b", "c"]), max_size=5)
pattern_words = st.lists(st.sampled_from(["a", "b", "*", "#"]), max_size=5)


def reference_topic_match(pattern: list[str], key: list[str]) -> bool:
    """Topic matching as a regular expression over the word list."""
    parts = []
    for word in pattern:
        if word == "#":
            parts.append(r"(?:[^.]+\.)*")
        elif word == "*":
            parts.append(r"[^.]+\.")
        else:
            parts.append(re.escape(word) + r"\.")
    return re.fullmatch("".join(parts), "".join(w + "." for w in key)) is not None


@given(pattern_words, words)
def test_topic_match_agrees_with_a_regex(pattern: list[str], key: list[str]) -> None:
    """topic_match("*" one word, "#" any number) agrees with a regex reference."""
    assert topic_match(".".join(pattern), ".".join(key)) == reference_topic_match(pattern, key)


@given(words)
def test_hash_matches_everything(key: list[str]) -> None:
    """The "#" pattern matches every routing key."""
    assert topic_match("#", ".".join(key))


def test_headers_match_void_value_means_present() -> None:
    """A binding header with a None value matches on the key's presence."""
    assert headers_match({"k": None}, {"k": "anything"})
    assert not headers_match({"k": None}, {"other": 1})


def test_headers_match_compares_bytes_and_str_alike() -> None:
    """Long strings compare equal whether they arrive as str or bytes."""
    assert headers_match({"k": "v"}, {"k": b"v"})


class Recorder:
    """A model with the events it emitted, per connection."""

    def __init__(self) -> None:
        self.events: list[tuple[int, Event]] = []
        self.model = BrokerModel(lambda conn, event: self.events.append((conn, event)))

    def take(self) -> list[Event]:
        events = [event for _, event in self.events]
        self.events.clear()
        return events


def test_publish_delivers_synchronously_in_order() -> None:
    """A publish to a consumed queue emits its deliveries at once, in publish order."""
    r = Recorder()
    conn = r.model.open_connection()
    ch, _ = r.model.open_channel(conn)
    r.model.queue_declare(ch, "q")
    tag = r.model.basic_consume(ch, "q")
    for body in (b"1", b"2"):
        r.model.basic_publish(ch, body, routing_key="q")
    events = r.take()
    assert [type(e) for e in events] == [Deliver, Deliver]
    assert [e.delivery.body for e in events if isinstance(e, Deliver)] == [b"1", b"2"]
    assert {e.delivery.consumer_tag for e in events if isinstance(e, Deliver)} == {tag}


def test_refusal_emits_the_close_before_raising() -> None:
    """A refused operation emits ChannelClosed with its code, then raises BrokerError."""
    r = Recorder()
    conn = r.model.open_connection()
    ch, _ = r.model.open_channel(conn)
    with pytest.raises(BrokerError) as info:
        r.model.queue_declare(ch, "missing", passive=True)
    [event] = r.take()
    assert isinstance(event, ChannelClosed)
    assert event.reason == CloseReason(404, info.value.text, "broker")
    with pytest.raises(ConnectionLost):
        r.model.queue_declare(ch, "q")


def test_mandatory_return_goes_to_the_publishing_channel() -> None:
    """An unroutable mandatory publish emits a Return for the publishing channel only."""
    r = Recorder()
    conn = r.model.open_connection()
    ch, _ = r.model.open_channel(conn)
    r.model.basic_publish(ch, b"x", routing_key="nobody", mandatory=True)
    [event] = r.take()
    assert isinstance(event, Return)
    assert event.channel == ch
    assert (event.message.reply_code, event.message.reply_text) == (312, "NO_ROUTE")


def test_connection_close_order() -> None:
    """Closing a connection closes its channels, cancels nothing, then reports the connection."""
    r = Recorder()
    conn = r.model.open_connection()
    ch, _ = r.model.open_channel(conn)
    r.model.queue_declare(ch, "q")
    r.model.basic_consume(ch, "q")
    r.model.close_connection(conn, CloseReason(320, "forced", "broker"))
    events = r.take()
    assert [type(e) for e in events] == [ChannelClosed, ConnectionClosed]
    assert not any(isinstance(e, ConsumerCancelled) for e in events)


def test_requeued_messages_keep_their_queue_order() -> None:
    """Messages requeued by a channel close go back ahead of newer ones, in order."""
    r = Recorder()
    conn = r.model.open_connection()
    ch, _ = r.model.open_channel(conn)
    r.model.queue_declare(ch, "q")
    r.model.basic_qos(ch, 2)
    r.model.basic_consume(ch, "q")
    for body in (b"1", b"2", b"3"):
        r.model.basic_publish(ch, body, routing_key="q")
    r.model.close_channel(ch, CloseReason(200, "bye", "client"))
    assert [m.body for m in r.model.messages("q")] == [b"1", b"2", b"3"]
    assert [m.redelivered for m in r.model.messages("q")] == [True, True, False]


def test_expired_messages_leave_from_the_head() -> None:
    """A message past its expiration is gone when it reaches the head of its queue."""
    now = [0.0]
    model = BrokerModel(lambda conn, event: None, clock=lambda: now[0])
    conn = model.open_connection()
    ch, _ = model.open_channel(conn)
    model.queue_declare(ch, "q")
    model.basic_publish(ch, b"short", routing_key="q", properties=Properties(expiration="100"))
    assert len(model.messages("q")) == 1
    now[0] = 0.2
    assert model.messages("q") == []


def test_channel_numbers_stay_within_channel_max() -> None:
    """Channel numbers go up to channel_max, then reuse the lowest free one after the last."""
    model = BrokerModel(lambda conn, event: None, channel_max=3)
    conn = model.open_connection()
    opened = [model.open_channel(conn) for _ in range(3)]
    assert [number for _, number in opened] == [1, 2, 3]
    with pytest.raises(BrokerError) as info:
        model.open_channel(conn)
    assert info.value.code == 530
    assert model.connection_reason(conn) is None
    model.close_channel(opened[1][0], CloseReason(200, "bye", "client"))
    assert model.open_channel(conn)[1] == 2


def test_hard_error_closes_the_connection_and_raises_connection_lost() -> None:
    """An unknown exchange type closes the whole connection (503), seen as ConnectionLost."""
    r = Recorder()
    conn = r.model.open_connection()
    ch, _ = r.model.open_channel(conn)
    with pytest.raises(ConnectionLost) as info:
        r.model.exchange_declare(ch, "x", "fanciful")
    assert info.value.code == 503
    assert [type(e) for e in r.take()] == [ChannelClosed, ConnectionClosed]
    reason = r.model.connection_reason(conn)
    assert reason == CloseReason(
        503, "COMMAND_INVALID - unknown exchange type 'fanciful'", "broker"
    )


def test_loop_clock_stands_still_outside_a_loop() -> None:
    """Outside any event loop the model's clock keeps its last reading."""
    clock = LoopClock()
    first = clock()
    time.sleep(0.01)
    assert clock() == first
