"""The life of a request, as a small state table with no I/O.

Everything that changes a request's state lives here:

    queued --sent()--> sent --pop_reply()/pop_oldest()--> (answered by handle_response)
      ^                  |
      +---unsend()-------+  (publish failed: wait for the next channel)
      +---lose_channel()-+  (idempotent: republish after reconnect)
                         +--lose_channel()--> (lost: ConnectionLost)
                         +--remove()/expire()/clear(), serial mode--> late
    late --its reply, or expire(now) past its quarantine--> (its routing key is free)
    any --expire(now)--> (expired: handle_timeout)       any --remove()--> (gone)
    hold(): a caller kept waiting by NoReply, until reply() or its deadline

Per-key serial mode (``CallTable(serial=True)``), for replies that carry no
correlation id and are matched by routing key (goamqp servers): a routing key
has at most one call out at a time, so a reply on that key can only be that
call's. The key is taken by ``next_queued()`` and held while the call is
sent. A sent call that leaves without its reply (expired, removed, failed,
cleared by a crash) turns *late*: its reply may still come, and it must not
reach the next caller, so the late call keeps the key until

- its reply arrives (``pop_reply``/``pop_oldest`` drop it and return None), or
- its quarantine ends: the request's deadline (its broker TTL ends then and
  the broker drops it) plus ``late_reply_grace``, for a server that took it
  just before and answers late (``inf``: only the reply frees the key).

Queued calls wait in line per key, oldest first, within their own deadlines.
Only ``lose_channel()`` frees keys at once: a reply queue lost with its
channel receives no late reply.

Deadlines wait in a line when they come in order (one timeout for all), in
a heap otherwise, both with lazy deletion; nothing here runs a timer.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterator
from typing import Any

from .._ids import random_ids
from ..actor.caller import Caller

__all__ = ["Call", "CallTable", "correlation_ids"]

QUEUED, SENT, HELD, LATE, DONE = "queued", "sent", "held", "late", "done"


def correlation_ids() -> Iterator[str]:
    """Unguessable correlation ids, 22 URL-safe characters (132 random bits) each;
    one iterator per client."""
    return random_ids(22)


class Call:
    """One caller's entry in the table."""

    __slots__ = ("body", "caller", "request", "state")

    def __init__(self, caller: Caller, request: Any, state: str) -> None:
        self.caller = caller
        self.request = request
        self.state = state
        self.body: bytes | None = None  # ``request``'s payload, encoded already

    def __repr__(self) -> str:
        return f"<Call {self.caller!r} {self.state}>"


class CallTable:
    """Callers of one client incarnation, by caller and by correlation id.

    ``serial``: at most one call per routing key out at a time, and late calls
    keep their key for ``late_reply_grace`` seconds past their deadline (see
    the module docstring).
    """

    def __init__(self, *, serial: bool = False, late_reply_grace: float = 0.0) -> None:
        if not late_reply_grace >= 0:  # also refuses NaN
            raise ValueError(f"late_reply_grace must be >= 0, got {late_reply_grace!r}")
        self.serial = serial
        self.late_reply_grace = late_reply_grace
        self._by_caller: dict[Caller, Call] = {}
        self._by_cid: dict[str, Call] = {}
        self._queue: deque[Call] = deque()
        # Deadlines: in order in the line (O(1), no entry of its own), else in the heap.
        self._line: deque[Call] = deque()
        self._heap: list[tuple[float, int, Call]] = []
        self._seq = 0
        # Serial mode only: queued calls per key, keys that may send, key holders.
        self._lines: dict[str, deque[Call]] = {}
        self._ready: deque[str] = deque()
        self._is_ready: set[str] = set()
        self._holders: dict[str, Call] = {}
        self._late: dict[str, Call] = {}  # by correlation id
        self._quarantine: list[tuple[float, int, Call]] = []

    def __len__(self) -> int:
        return len(self._by_caller)

    def __contains__(self, caller: Caller) -> bool:
        return caller in self._by_caller

    @property
    def ready(self) -> bool:
        """True when a queued call may be sendable although none was added since the
        last ``next_queued()`` (serial mode: a key was freed). Always False otherwise."""
        return bool(self._ready)

    def counts(self) -> dict[str, int]:
        """How many calls are in each state (for introspection and tests)."""
        out = {QUEUED: 0, SENT: 0, HELD: 0}
        for call in self._by_caller.values():
            out[call.state] += 1
        out[LATE] = len(self._late)
        return out

    def sent_ids(self) -> set[str]:
        """The correlation ids of the calls sent and waiting for their replies."""
        return set(self._by_cid)

    def is_sent(self, correlation_id: str) -> bool:
        """True while the call sent with ``correlation_id`` waits for its reply."""
        return correlation_id in self._by_cid

    def add(self, caller: Caller, request: Any) -> Call:
        """A new request, queued until it is published."""
        call = Call(caller, request, QUEUED)
        self._by_caller[caller] = call
        if self.serial:
            key = request.routing_key
            line = self._lines.get(key)
            if line is None:
                line = self._lines[key] = deque()
            line.append(call)
            self._wake(key)
        else:
            self._queue.append(call)
        self._push_deadline(call)
        return call

    def hold(self, caller: Caller) -> None:
        """Keep ``caller`` waiting (``NoReply``) until ``reply()`` or its deadline."""
        call = Call(caller, caller.request, HELD)
        self._by_caller[caller] = call
        self._push_deadline(call)

    def next_queued(self) -> Call | None:
        """The oldest queued call that may go out, taken off the queue (still in the
        table). Serial mode: only calls whose key is free; the key is now taken."""
        if self.serial:
            return self._next_serial()
        while self._queue:
            call = self._queue.popleft()
            if call.state == QUEUED and self._by_caller.get(call.caller) is call:
                return call
        return None

    def sent(self, call: Call) -> bool:
        """``call`` is being published; False if another call already uses its id
        (or, serial mode, holds its routing key)."""
        correlation_id = call.request.correlation_id
        other = self._by_cid.get(correlation_id)
        if other is not None and other is not call:
            return False
        if self.serial:
            key = call.request.routing_key
            holder = self._holders.get(key)
            if holder is not None and holder is not call:
                return False
            self._holders[key] = call
        call.state = SENT
        self._by_cid[correlation_id] = call
        return True

    def unsend(self, call: Call) -> None:
        """The publish failed before it left: queue ``call`` first in line again."""
        self._by_cid.pop(call.request.correlation_id, None)
        current = self._by_caller.get(call.caller) is call
        if current:
            call.state = QUEUED
        if not self.serial:
            if current:
                self._queue.appendleft(call)
            return
        key = call.request.routing_key
        if self._holders.get(key) is call:
            del self._holders[key]
        if current:
            line = self._lines.get(key)
            if line is None:
                line = self._lines[key] = deque()
            line.appendleft(call)
        self._wake(key, first=True)

    def pop_reply(self, correlation_id: str) -> Call | None:
        """The sent call a reply with ``correlation_id`` answers, removed; else None
        (a late call's reply frees its key and is dropped)."""
        call = self._by_cid.pop(correlation_id, None)
        if call is None:
            late = self._late.get(correlation_id)
            if late is not None:
                self._end_late(late)
            return None
        if self.serial:
            self._free(call)
        if self._by_caller.get(call.caller) is not call:
            return None
        del self._by_caller[call.caller]
        call.state = DONE
        return call

    def pop_oldest(self, routing_key: str) -> Call | None:
        """The oldest sent call to ``routing_key``, removed; else None.

        For replies that carry no correlation id (goamqp servers). Serial mode:
        the one call out on that key, exactly; a late call's reply is dropped
        (None) and frees the key. Otherwise a guess, exact only while a server
        answers each key in order. ``_by_cid`` keeps publish order, and replies
        usually answer its front, so the scan is short.
        """
        if self.serial:
            holder = self._holders.get(routing_key)
            if holder is None:
                return None
            if holder.state == LATE:
                self._end_late(holder)
                return None
            if holder.state != SENT:
                return None
            return self.pop_reply(holder.request.correlation_id)
        for correlation_id, call in self._by_cid.items():
            if call.request.routing_key == routing_key and self._by_caller.get(call.caller) is call:
                return self.pop_reply(correlation_id)
        return None

    def remove(self, caller: Caller) -> Call | None:
        """Forget ``caller`` (answered, or gave up). Serial mode: a sent call turns late."""
        call = self._by_caller.pop(caller, None)
        if call is None:
            return None
        if call.state == SENT:
            self._by_cid.pop(call.request.correlation_id, None)
            if self.serial and self._holders.get(call.request.routing_key) is call:
                self._make_late(call)
                return call
        elif self.serial and call.state == QUEUED:
            self._free(call)  # taken by next_queued() but never sent
        call.state = DONE
        return call

    def lose_channel(self) -> list[Call]:
        """The channel died: idempotent sent calls are queued again; the others are
        removed and returned (they fail with ``ConnectionLost``). Every key is
        freed: the replies in flight are lost with the channel."""
        lost: list[Call] = []
        requeue: list[Call] = []
        for call in self._by_cid.values():
            if self._by_caller.get(call.caller) is not call:
                continue
            if call.request.idempotent:
                call.state = QUEUED
                requeue.append(call)
            else:
                del self._by_caller[call.caller]
                call.state = DONE
                lost.append(call)
        self._by_cid.clear()
        if not self.serial:
            self._queue.extendleft(reversed(requeue))
            return lost
        for late in self._late.values():
            late.state = DONE
        self._holders.clear()
        self._late.clear()
        self._quarantine.clear()
        for call in reversed(requeue):
            key = call.request.routing_key
            line = self._lines.get(key)
            if line is None:
                line = self._lines[key] = deque()
            line.appendleft(call)
            self._wake(key, first=True)
        for key in self._lines:
            self._wake(key)
        return lost

    def expire(self, now: float) -> list[Call]:
        """Remove and return every call whose deadline is at or before ``now``;
        free the keys of late calls whose quarantine has ended."""
        by_caller, line, heap = self._by_caller, self._line, self._heap
        expired: list[Call] = []
        while line and line[0].caller.deadline <= now:
            call = line.popleft()
            if by_caller.get(call.caller) is call:
                self.remove(call.caller)
                expired.append(call)
        in_line = len(expired)
        while heap and heap[0][0] <= now:
            call = heapq.heappop(heap)[2]
            if by_caller.get(call.caller) is call:
                self.remove(call.caller)
                expired.append(call)
        if 0 < in_line < len(expired):  # both had some: in deadline order, as one heap would
            expired.sort(key=_deadline)
        quarantine = self._quarantine
        while quarantine and quarantine[0][0] <= now:
            call = heapq.heappop(quarantine)[2]
            if call.state == LATE:
                self._end_late(call)
        return expired

    def next_deadline(self) -> float:
        """The earliest deadline of a call still in the table, or end of a quarantine
        (``inf`` if none)."""
        by_caller, line, heap = self._by_caller, self._line, self._heap
        while line and by_caller.get(line[0].caller) is not line[0]:
            line.popleft()
        while heap and by_caller.get(heap[0][2].caller) is not heap[0][2]:
            heapq.heappop(heap)
        quarantine = self._quarantine
        while quarantine and quarantine[0][2].state != LATE:
            heapq.heappop(quarantine)
        first = line[0].caller.deadline if line else math.inf
        if heap and heap[0][0] < first:
            first = heap[0][0]
        return min(first, quarantine[0][0]) if quarantine else first

    def clear(self) -> list[Call]:
        """Remove and return every call. Serial mode: sent ones turn late, and late
        calls stay (their replies may still reach a reply queue that outlives us)."""
        calls = list(self._by_caller.values())
        if self.serial:
            for call in calls:
                if call.state == SENT and self._holders.get(call.request.routing_key) is call:
                    self._make_late(call)
            self._holders = {key: c for key, c in self._holders.items() if c.state == LATE}
        self._by_caller.clear()
        self._by_cid.clear()
        self._queue.clear()
        self._line.clear()
        self._heap.clear()
        self._lines.clear()
        self._ready.clear()
        self._is_ready.clear()
        return calls

    def renew(self) -> CallTable:
        """An empty table in the same mode for the next incarnation, keeping the late
        calls (and their keys) of this one."""
        table = CallTable(serial=self.serial, late_reply_grace=self.late_reply_grace)
        late = [call for call in self._late.values() if call.state == LATE]
        for call in late:
            table._late[call.request.correlation_id] = call
            table._holders[call.request.routing_key] = call
        table._quarantine = [e for e in self._quarantine if e[2].state == LATE]
        heapq.heapify(table._quarantine)
        table._seq = self._seq
        return table

    # -- serial mode ---------------------------------------------------------------

    def _next_serial(self) -> Call | None:
        ready, lines, holders = self._ready, self._lines, self._holders
        while ready:
            key = ready.popleft()
            self._is_ready.discard(key)
            if key in holders:
                continue  # woken again when its holder leaves
            line = lines.get(key)
            while line:
                call = line.popleft()
                if call.state == QUEUED and self._by_caller.get(call.caller) is call:
                    if not line:
                        del lines[key]
                    holders[key] = call
                    return call
            lines.pop(key, None)
        return None

    def _wake(self, key: str, *, first: bool = False) -> None:
        """Mark ``key`` as possibly sendable, if it is free and has a line."""
        if key in self._holders or key not in self._lines or key in self._is_ready:
            return
        self._is_ready.add(key)
        if first:
            self._ready.appendleft(key)
        else:
            self._ready.append(key)

    def _free(self, call: Call) -> None:
        key = call.request.routing_key
        if self._holders.get(key) is call:
            del self._holders[key]
            self._wake(key)

    def _make_late(self, call: Call) -> None:
        call.state = LATE
        self._late[call.request.correlation_id] = call
        until = call.request.deadline + self.late_reply_grace
        if until != math.inf:
            self._seq += 1
            heapq.heappush(self._quarantine, (until, self._seq, call))

    def _end_late(self, call: Call) -> None:
        if self._late.get(call.request.correlation_id) is call:
            del self._late[call.request.correlation_id]
        call.state = DONE
        self._free(call)

    def _push_deadline(self, call: Call) -> None:
        deadline = call.caller.deadline
        if deadline == math.inf:
            return
        line = self._line
        if not line or line[-1].caller.deadline <= deadline:
            line.append(call)
        else:
            self._seq += 1
            heapq.heappush(self._heap, (deadline, self._seq, call))
        if len(line) + len(self._heap) > 2 * len(self._by_caller) + 1024:
            self._compact()

    def _compact(self) -> None:
        by_caller = self._by_caller
        self._line = deque(c for c in self._line if by_caller.get(c.caller) is c)
        self._heap = [e for e in self._heap if by_caller.get(e[2].caller) is e[2]]
        heapq.heapify(self._heap)


def _deadline(call: Call) -> float:
    return call.caller.deadline
