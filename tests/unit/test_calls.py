"""The call table's state machine, without an event loop."""

from __future__ import annotations

import math

from hare_py.actor.caller import Caller
from hare_py.rpc.calls import CallTable
from hare_py.rpc.messages import Request


def make(cid: str, deadline: float = math.inf, idempotent: bool = False) -> Caller:
    return Caller(deadline, Request(b"x", "k", {}, cid, deadline, idempotent))


def test_reply_is_matched_by_correlation_id_only_once() -> None:
    """A sent call is answered by its correlation id once; a second reply finds nothing."""
    table = CallTable()
    caller = make("a")
    call = table.add(caller, caller.request)
    assert table.next_queued() is call
    assert table.sent(call)
    assert table.pop_reply("b") is None
    assert table.pop_reply("a") is call
    assert table.pop_reply("a") is None
    assert len(table) == 0


def test_duplicate_correlation_id_is_refused() -> None:
    """Two calls in flight can never share a correlation id."""
    table = CallTable()
    first, second = make("same"), make("same")
    assert table.sent(table.add(first, first.request))
    assert not table.sent(table.add(second, second.request))


def test_expire_returns_due_calls_in_deadline_order() -> None:
    """expire(now) removes exactly the calls whose deadline has passed, earliest first."""
    table = CallTable()
    late, early, never = make("l", 20.0), make("e", 10.0), make("n")
    for caller in (late, early, never):
        table.add(caller, caller.request)
    assert table.next_deadline() == 10.0
    assert table.expire(5.0) == []
    assert [c.caller for c in table.expire(15.0)] == [early]
    assert table.next_deadline() == 20.0
    assert [c.caller for c in table.expire(100.0)] == [late]
    assert table.next_deadline() == math.inf
    assert len(table) == 1  # the caller without a deadline stays


def test_removed_call_never_expires() -> None:
    """A caller that gave up leaves no entry behind, not even in the deadline heap."""
    table = CallTable()
    caller = make("a", 1.0)
    table.add(caller, caller.request)
    table.remove(caller)
    assert table.expire(2.0) == []
    assert table.next_deadline() == math.inf
    assert len(table) == 0


def test_lose_channel_fails_sent_and_requeues_idempotent_in_order() -> None:
    """On channel loss, sent calls fail unless idempotent; those go back first in line."""
    table = CallTable()
    plain, idem1, idem2, queued = (
        make("p"),
        make("i1", idempotent=True),
        make("i2", idempotent=True),
        make("q"),
    )
    for caller in (plain, idem1, idem2):
        call = table.add(caller, caller.request)
        assert table.next_queued() is call
        table.sent(call)
    table.add(queued, queued.request)
    lost = table.lose_channel()
    assert [c.caller for c in lost] == [plain]
    order = []
    while (call := table.next_queued()) is not None:
        order.append(call.caller)
    assert order == [idem1, idem2, queued]
    assert table.pop_reply("i1") is None  # no longer in flight


def test_unsend_puts_the_call_back_first() -> None:
    """A publish that failed before leaving is retried before newer requests."""
    table = CallTable()
    a, b = make("a"), make("b")
    call_a = table.add(a, a.request)
    table.add(b, b.request)
    assert table.next_queued() is call_a
    table.sent(call_a)
    table.unsend(call_a)
    assert table.next_queued() is call_a
    assert table.pop_reply("a") is None


def test_heap_is_compacted_when_callers_leave() -> None:
    """Many answered callers do not leave an ever-growing deadline heap."""
    table = CallTable()
    for i in range(5000):
        caller = make(str(i), 100.0 + i)
        table.add(caller, caller.request)
        table.remove(caller)
    assert len(table._heap) <= 1024 + 2


def keyed(cid: str, key: str) -> Caller:
    return Caller(math.inf, Request(b"x", key, {}, cid))


def test_pop_oldest_takes_the_oldest_sent_call_with_that_routing_key() -> None:
    """A reply without correlation id answers the oldest call in flight with its key."""
    table = CallTable()
    a1, b1, a2 = keyed("a1", "a"), keyed("b1", "b"), keyed("a2", "a")
    queued = keyed("a0", "a")
    table.add(queued, queued.request)  # queued, never sent: not in flight
    for caller in (a1, b1, a2):
        assert table.sent(table.add(caller, caller.request))
    assert table.pop_oldest("c") is None
    popped = [table.pop_oldest("a"), table.pop_oldest("a"), table.pop_oldest("a")]
    assert [call and call.caller for call in popped] == [a1, a2, None]
    assert table.pop_reply("a1") is None  # gone by its correlation id too
    last = table.pop_oldest("b")
    assert last is not None and last.caller is b1
    assert len(table) == 1


def test_pop_oldest_skips_calls_that_gave_up_or_were_resent() -> None:
    """A removed call is never matched; a republished one counts from its new publish."""
    table = CallTable()
    first, second = keyed("1", "k"), keyed("2", "k")
    call1 = table.add(first, first.request)
    call2 = table.add(second, second.request)
    assert table.sent(call1) and table.sent(call2)
    table.unsend(call1)  # its publish failed: it goes out again after the second
    assert table.next_queued() is call1 and table.sent(call1)
    assert table.pop_oldest("k") is call2
    table.remove(first)
    assert table.pop_oldest("k") is None
