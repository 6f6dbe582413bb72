"""The life of a request, as a small state table with no I/O.

Everything that changes a request's state lives here:

    queued --sent()--> sent --pop_reply()/pop_oldest()--> (answered by handle_response)
      ^                  |
      +---unsend()-------+  (publish failed: wait for the next channel)
      +---lose_channel()-+  (idempotent: republish after reconnect)
                         +--lose_channel()--> (lost: ConnectionLost)
    any --expire(now)--> (expired: handle_timeout)       any --remove()--> (gone)
    hold(): a caller kept waiting by NoReply, until reply() or its deadline

Deadlines live in one heap with lazy deletion; nothing here runs a timer.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Any

from ..actor.caller import Caller

__all__ = ["Call", "CallTable"]

QUEUED, SENT, HELD = "queued", "sent", "held"


class Call:
    """One caller's entry in the table."""

    __slots__ = ("caller", "request", "state")

    def __init__(self, caller: Caller, request: Any, state: str) -> None:
        self.caller = caller
        self.request = request
        self.state = state

    def __repr__(self) -> str:
        return f"<Call {self.caller!r} {self.state}>"


class CallTable:
    """Callers of one client incarnation, by caller and by correlation id."""

    def __init__(self) -> None:
        self._by_caller: dict[Caller, Call] = {}
        self._by_cid: dict[str, Call] = {}
        self._queue: deque[Call] = deque()
        self._heap: list[tuple[float, int, Call]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._by_caller)

    def __contains__(self, caller: Caller) -> bool:
        return caller in self._by_caller

    def counts(self) -> dict[str, int]:
        """How many calls are in each state (for introspection and tests)."""
        out = {QUEUED: 0, SENT: 0, HELD: 0}
        for call in self._by_caller.values():
            out[call.state] += 1
        return out

    def add(self, caller: Caller, request: Any) -> Call:
        """A new request, queued until it is published."""
        call = Call(caller, request, QUEUED)
        self._by_caller[caller] = call
        self._queue.append(call)
        self._push_deadline(call)
        return call

    def hold(self, caller: Caller) -> None:
        """Keep ``caller`` waiting (``NoReply``) until ``reply()`` or its deadline."""
        call = Call(caller, caller.request, HELD)
        self._by_caller[caller] = call
        self._push_deadline(call)

    def next_queued(self) -> Call | None:
        """The oldest queued call, taken off the queue (still in the table)."""
        while self._queue:
            call = self._queue.popleft()
            if call.state == QUEUED and self._by_caller.get(call.caller) is call:
                return call
        return None

    def sent(self, call: Call) -> bool:
        """``call`` is being published; False if another call already uses its id."""
        correlation_id = call.request.correlation_id
        other = self._by_cid.get(correlation_id)
        if other is not None and other is not call:
            return False
        call.state = SENT
        self._by_cid[correlation_id] = call
        return True

    def unsend(self, call: Call) -> None:
        """The publish failed before it left: queue ``call`` first in line again."""
        self._by_cid.pop(call.request.correlation_id, None)
        if self._by_caller.get(call.caller) is call:
            call.state = QUEUED
            self._queue.appendleft(call)

    def pop_reply(self, correlation_id: str) -> Call | None:
        """The sent call a reply with ``correlation_id`` answers, removed; else None."""
        call = self._by_cid.pop(correlation_id, None)
        if call is None or self._by_caller.get(call.caller) is not call:
            return None
        del self._by_caller[call.caller]
        return call

    def pop_oldest(self, routing_key: str) -> Call | None:
        """The oldest sent call to ``routing_key``, removed; else None.

        For replies that carry no correlation id (goamqp servers): the best
        guess is that a server answers one routing key in order. ``_by_cid``
        keeps publish order, and replies usually answer its front, so the scan
        is short.
        """
        for correlation_id, call in self._by_cid.items():
            if call.request.routing_key == routing_key and self._by_caller.get(call.caller) is call:
                return self.pop_reply(correlation_id)
        return None

    def remove(self, caller: Caller) -> Call | None:
        """Forget ``caller`` (answered, or gave up)."""
        call = self._by_caller.pop(caller, None)
        if call is not None and call.state == SENT:
            self._by_cid.pop(call.request.correlation_id, None)
        return call

    def lose_channel(self) -> list[Call]:
        """The channel died: idempotent sent calls are queued again; the others are
        removed and returned (they fail with ``ConnectionLost``)."""
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
                lost.append(call)
        self._by_cid.clear()
        self._queue.extendleft(reversed(requeue))
        return lost

    def expire(self, now: float) -> list[Call]:
        """Remove and return every call whose deadline is at or before ``now``."""
        heap = self._heap
        expired: list[Call] = []
        while heap and heap[0][0] <= now:
            call = heapq.heappop(heap)[2]
            if self._by_caller.get(call.caller) is call:
                self.remove(call.caller)
                expired.append(call)
        return expired

    def next_deadline(self) -> float:
        """The earliest deadline of a call still in the table (``inf`` if none)."""
        heap = self._heap
        while heap and self._by_caller.get(heap[0][2].caller) is not heap[0][2]:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def clear(self) -> list[Call]:
        """Remove and return every call."""
        calls = list(self._by_caller.values())
        self._by_caller.clear()
        self._by_cid.clear()
        self._queue.clear()
        self._heap.clear()
        return calls

    def _push_deadline(self, call: Call) -> None:
        deadline = call.caller.deadline
        if deadline == math.inf:
            return
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, call))
        if len(self._heap) > 2 * len(self._by_caller) + 1024:
            self._compact()

    def _compact(self) -> None:
        by_caller = self._by_caller
        self._heap = [e for e in self._heap if by_caller.get(e[2].caller) is e[2]]
        heapq.heapify(self._heap)
