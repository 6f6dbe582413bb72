"""The call table's state machine, without an event loop."""

from __future__ import annotations

import math
import re

import pytest

from hare_py.actor.caller import Caller
from hare_py.rpc.calls import CallTable, correlation_ids
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
    while (next_call := table.next_queued()) is not None:
        order.append(next_call.caller)
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


def test_deadlines_in_and_out_of_order_expire_in_deadline_order() -> None:
    """Calls that come in deadline order and calls that do not expire together, earliest
    first, and the next deadline is the earliest of both."""
    table = CallTable()
    deadlines = [10.0, 20.0, 30.0, 15.0, 40.0, 5.0, 25.0]
    callers = [make(str(i), d) for i, d in enumerate(deadlines)]
    for caller in callers:
        table.add(caller, caller.request)
    assert table.next_deadline() == 5.0
    assert [c.caller.deadline for c in table.expire(22.0)] == [5.0, 10.0, 15.0, 20.0]
    table.remove(callers[6])  # 25.0, out of order, gone
    assert table.next_deadline() == 30.0
    assert [c.caller.deadline for c in table.expire(100.0)] == [30.0, 40.0]
    assert table.next_deadline() == math.inf
    assert len(table) == 0


@pytest.mark.parametrize("step", [1.0, -1.0], ids=["in-order", "out-of-order"])
def test_deadlines_are_compacted_when_callers_leave(step: float) -> None:
    """Many answered callers leave no ever-growing deadline line or heap."""
    table = CallTable()
    keep = make("keep", 1.0)  # in the table the whole time, first in line
    table.add(keep, keep.request)
    for i in range(5000):
        caller = make(str(i), 1.0e5 + step * i)
        table.add(caller, caller.request)
        table.remove(caller)
    assert len(table._line) + len(table._heap) <= 2 + 1024 + 1
    assert table.next_deadline() == 1.0


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


# -- per-key serial mode (replies matched by routing key) ---------------------------------


def line_up(
    table: CallTable, cid: str, key: str, deadline: float = math.inf, idempotent: bool = False
) -> Caller:
    caller = Caller(deadline, Request(b"x", key, {}, cid, deadline, idempotent))
    table.add(caller, caller.request)
    return caller


def send_next(table: CallTable) -> Caller | None:
    call = table.next_queued()
    if call is None:
        return None
    assert table.sent(call)
    return call.caller


def test_serial_mode_sends_one_call_per_routing_key_in_order() -> None:
    """Serial mode: a key's next call goes out only once the one out on it is answered."""
    table = CallTable(serial=True)
    a1, a2, b1, a3 = (line_up(table, c, c[0]) for c in ("a1", "a2", "b1", "a3"))
    assert [send_next(table), send_next(table), send_next(table)] == [a1, b1, None]
    assert not table.ready
    answered = table.pop_oldest("a")
    assert answered is not None and answered.caller is a1
    assert table.ready
    assert [send_next(table), send_next(table)] == [a2, None]
    answered = table.pop_reply("a2")  # a correlated reply frees the key too
    assert answered is not None and answered.caller is a2
    assert [send_next(table), send_next(table)] == [a3, None]
    assert table.counts() == {"queued": 0, "sent": 2, "held": 0, "late": 0}


def test_serial_expired_call_keeps_its_key_until_its_late_reply_is_dropped() -> None:
    """A call that expired in flight holds its key; its late reply is dropped, not passed on."""
    table = CallTable(serial=True, late_reply_grace=math.inf)
    a1 = line_up(table, "a1", "a", deadline=10.0)
    a2 = line_up(table, "a2", "a", deadline=100.0)
    assert send_next(table) is a1
    assert [c.caller for c in table.expire(10.0)] == [a1]
    assert send_next(table) is None  # the late reply may still come
    assert table.counts()["late"] == 1
    assert table.pop_oldest("a") is None  # that reply: dropped
    assert send_next(table) is a2
    answered = table.pop_oldest("a")
    assert answered is not None and answered.caller is a2


def test_serial_quarantine_frees_the_key_at_deadline_plus_grace() -> None:
    """Without a late reply, the key is freed at the expired call's deadline plus the grace."""
    table = CallTable(serial=True, late_reply_grace=5.0)
    a1 = line_up(table, "a1", "a", deadline=10.0)
    a2 = line_up(table, "a2", "a", deadline=100.0)
    assert send_next(table) is a1
    table.expire(10.0)
    assert table.next_deadline() == 15.0
    assert table.expire(14.9) == [] and send_next(table) is None
    assert table.expire(15.0) == []  # no caller expires; the key is freed
    assert table.ready and send_next(table) is a2
    assert table.next_deadline() == 100.0


def test_serial_call_removed_after_send_turns_late_until_its_own_reply() -> None:
    """A caller that gave up after sending leaves its key taken; its correlated reply frees it."""
    table = CallTable(serial=True, late_reply_grace=math.inf)
    a1 = line_up(table, "a1", "a")
    a2 = line_up(table, "a2", "a")
    assert send_next(table) is a1
    table.remove(a1)
    assert send_next(table) is None
    assert table.pop_reply("a1") is None  # its own reply, dropped
    assert send_next(table) is a2


def test_serial_calls_that_never_left_free_their_key_at_once() -> None:
    """A taken call dropped before sending, or unsent, frees its key without quarantine."""
    table = CallTable(serial=True, late_reply_grace=math.inf)
    a1, a2, a3 = (line_up(table, c, "a") for c in ("a1", "a2", "a3"))
    call = table.next_queued()
    assert call is not None and call.caller is a1
    table.remove(a1)  # e.g. its payload could not be encoded
    call2 = table.next_queued()
    assert call2 is not None and call2.caller is a2 and table.sent(call2)
    table.unsend(call2)  # the publish failed before it left
    assert table.ready
    assert [send_next(table), send_next(table)] == [a2, None]  # first again, then a3 waits
    assert table.pop_oldest("a") is not None
    assert send_next(table) is a3


def test_serial_queued_calls_expire_in_line_without_going_out() -> None:
    """A call waiting for its key times out at its own deadline and is never sent."""
    table = CallTable(serial=True)
    a1 = line_up(table, "a1", "a")
    a2 = line_up(table, "a2", "a", deadline=5.0)
    a3 = line_up(table, "a3", "a")
    assert send_next(table) is a1
    assert [c.caller for c in table.expire(5.0)] == [a2]
    assert table.pop_oldest("a") is not None
    assert [send_next(table), send_next(table)] == [a3, None]


def test_serial_late_calls_survive_clear_and_renew() -> None:
    """After a crash, sent calls stay late in the next table: a reply for them reaches nobody."""
    table = CallTable(serial=True, late_reply_grace=1.0)
    a1 = line_up(table, "a1", "a", deadline=10.0)
    a2 = line_up(table, "a2", "a", deadline=10.0)
    assert send_next(table) is a1
    assert {c.caller for c in table.clear()} == {a1, a2}
    fresh = table.renew()
    assert (fresh.serial, fresh.late_reply_grace, len(fresh)) == (True, 1.0, 0)
    assert fresh.next_deadline() == 11.0
    b1 = line_up(fresh, "b1", "a", deadline=50.0)
    assert send_next(fresh) is None
    assert fresh.pop_oldest("a") is None  # the old incarnation's reply: dropped
    assert send_next(fresh) is b1


def test_serial_lose_channel_frees_every_key_and_requeues_idempotent_first() -> None:
    """A lost channel loses every reply in flight: keys are freed, idempotent calls go first."""
    table = CallTable(serial=True, late_reply_grace=math.inf)
    a1 = line_up(table, "a1", "a", idempotent=True)
    b1 = line_up(table, "b1", "b")
    c1 = line_up(table, "c1", "c")
    assert [send_next(table) for _ in range(3)] == [a1, b1, c1]
    a2 = line_up(table, "a2", "a")
    c2 = line_up(table, "c2", "c")
    table.remove(c1)  # late
    assert [c.caller for c in table.lose_channel()] == [b1]
    assert [send_next(table) for _ in range(3)] == [a1, c2, None]
    assert table.pop_reply("a1") is not None
    assert send_next(table) is a2


def test_default_mode_pipelines_and_refuses_a_negative_grace() -> None:
    """Outside serial mode every queued call goes out at once; a negative grace is refused."""
    table = CallTable()
    a1, a2 = line_up(table, "a1", "a"), line_up(table, "a2", "a")
    assert [send_next(table), send_next(table)] == [a1, a2]
    table.remove(a1)
    assert not table.ready and table.counts()["late"] == 0
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match="late_reply_grace"):
            CallTable(serial=True, late_reply_grace=bad)


def test_correlation_ids_are_unique_url_safe_and_refilled() -> None:
    ids = correlation_ids()
    seen = [next(ids) for _ in range(1000)]  # several refills of 256
    assert len(set(seen)) == len(seen)
    assert all(len(cid) == 22 and re.fullmatch(r"[A-Za-z0-9_-]+", cid) for cid in seen)
    # every character is random: all 64 appear among 22,000 of them
    assert len(set("".join(seen))) == 64
    assert next(correlation_ids()) not in seen  # a second iterator starts from new bytes
