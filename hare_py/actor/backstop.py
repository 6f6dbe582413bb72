"""The backstop for callers of a stuck actor: one task per client, not a timer per request."""

from __future__ import annotations

import heapq
import math
from collections import deque

import anyio

from .caller import Caller

__all__ = ["Backstop"]

#: Answered callers the line may keep beyond twice the waiting ones before a sweep.
_SLACK = 64


class Backstop:
    """Gives up on callers still unanswered ``grace`` seconds past their deadline.

    The actor answers every caller at its deadline; this is for an actor stuck
    in a slow callback. ``run()`` is the one task that does it, sleeping until
    the earliest deadline plus the grace. Callers mostly come in deadline order
    (one timeout for all), so they wait in a line, in and out in O(1); one
    whose deadline is earlier than the last in the line goes to a heap.
    A caller that was answered ``leave()``s: it is dropped at once from the
    front of the line, otherwise by a sweep when answered ones pile up.
    """

    __slots__ = ("_heap", "_line", "_scope", "_waiting", "_wake_at", "grace")

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._line: deque[Caller] = deque()
        self._heap: list[tuple[float, int, Caller]] = []
        self._waiting = 0  # added and not left
        self._scope: anyio.CancelScope | None = None  # run()'s sleep, until the next give-up
        self._wake_at = math.inf  # its deadline, read per add() (the scope's is a property)

    def __len__(self) -> int:
        """Callers the backstop still holds (answered ones not yet dropped included)."""
        return len(self._line) + len(self._heap)

    def add(self, caller: Caller) -> None:
        """Watch ``caller`` until it ``leave()``s or its deadline plus the grace passes."""
        self._waiting += 1
        deadline = caller.deadline
        if deadline == math.inf:
            return
        line = self._line
        if not line or line[-1].deadline <= deadline:
            line.append(caller)
        else:
            heapq.heappush(self._heap, (deadline, caller.id, caller))
        due = deadline + self.grace
        if due < self._wake_at:
            scope = self._scope
            if scope is not None:
                scope.deadline = self._wake_at = due
        if len(line) + len(self._heap) > 2 * self._waiting + _SLACK:
            self._sweep()

    def leave(self, caller: Caller) -> None:
        """``caller`` waits no more (it was answered, or gave up)."""
        self._waiting -= 1
        line = self._line
        while line and line[0].done:
            line.popleft()

    async def run(self) -> None:
        """Give up on overdue callers until cancelled."""
        while True:
            with anyio.CancelScope(deadline=self._next()) as scope:
                self._scope, self._wake_at = scope, scope.deadline
                try:
                    await anyio.sleep_forever()
                finally:
                    self._scope, self._wake_at = None, math.inf
            if scope.cancelled_caught:
                self._give_up_until(anyio.current_time())

    def _next(self) -> float:
        """When the next caller is due to be given up on."""
        line, heap = self._line, self._heap
        while line and line[0].done:
            line.popleft()
        while heap and heap[0][2].done:
            heapq.heappop(heap)
        first = min(line[0].deadline if line else math.inf, heap[0][0] if heap else math.inf)
        return first + self.grace

    def _give_up_until(self, time: float) -> None:
        line, heap, grace = self._line, self._heap, self.grace
        while line and line[0].deadline + grace <= time:
            line.popleft().give_up()
        while heap and heap[0][0] + grace <= time:
            heapq.heappop(heap)[2].give_up()

    def _sweep(self) -> None:
        self._line = deque(caller for caller in self._line if not caller.done)
        self._heap = [entry for entry in self._heap if not entry[2].done]
        heapq.heapify(self._heap)
