"""The handle of whoever waits for an answer from an actor."""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
from asyncio import _get_running_loop
from collections.abc import Awaitable
from typing import Any

__all__ = ["Caller"]

_ids = itertools.count(1)


class Caller:
    """Someone waiting for an answer: a ``request()`` or a ``call()``.

    Callbacks receive it; returning ``NoReply`` keeps it waiting until
    ``reply(caller, value)`` answers it or its ``deadline`` passes. A caller is
    answered at most once: later answers are ignored.

    The runtime's side of it: ``resolve(value)`` answers it, ``await
    wait(until)`` waits for the answer until a loop time (``await waiter(loop)``
    without a timer of its own), ``give_up()`` marks a
    caller that stopped waiting (it timed out or was cancelled), ``started``
    is when the wait began (0.0 where it is not known), and
    ``value`` is the answer once ``done``. ``done`` (answered, or abandoned)
    and ``gave_up`` (it stopped waiting first) are attributes that only
    ``resolve()`` sets: read them, do not assign them.
    """

    __slots__ = (
        "_future",
        "_task",
        "_value",
        "deadline",
        "done",
        "gave_up",
        "id",
        "request",
        "started",
        "trace",
    )

    def __init__(
        self, deadline: float = math.inf, request: Any = None, started: float = 0.0
    ) -> None:
        self.id = next(_ids)
        self.deadline = deadline
        self.request = request
        self.started = started  # when the wait began (loop clock), where it is known
        self.trace: Any = None  # what tracing keeps for this request (None when off)
        self._task: Any = None  # the waiting trio task
        self._future: asyncio.Future[None] | None = None  # the waiter on asyncio
        self._value: Any = _UNSET
        # Read several times per request: plain attributes, set once by resolve().
        self.done = False  # answered (or abandoned by a cancelled caller)
        self.gave_up = False  # stopped waiting before it was answered

    @property
    def value(self) -> Any:
        """The answer; ``LookupError`` before it is ``done``."""
        if self._value is _UNSET:
            raise LookupError(f"{self!r} has no answer yet")
        return self._value

    def give_up(self) -> bool:
        """Mark the caller as no longer waiting; False if it was answered already."""
        return self.resolve(_GAVE_UP)

    def resolve(self, value: Any) -> bool:
        """Answer the caller; False if it was answered already."""
        if self.done:
            return False
        self._value = value
        self.done = True
        self.gave_up = value is _GAVE_UP
        future = self._future
        if future is not None:
            if not future.done():
                future.set_result(None)
        elif self._task is not None:
            task, self._task = self._task, None
            _trio().lowlevel.reschedule(task)
        return True

    async def wait(self, until: float = math.inf) -> None:
        """Return once answered or at ``until`` (loop clock), whichever comes first.

        On asyncio this is a bare future and one timer handle, on trio the task
        parked in one trio cancel scope: per request, an anyio ``CancelScope`` and
        ``Event`` cost several times the memory and CPU.
        """
        if self.done:
            return
        loop = _get_running_loop()
        if loop is None:  # trio
            trio = _trio()
            lowlevel = trio.lowlevel
            self._task = lowlevel.current_task()

            with trio.move_on_at(until):  # the deadline passes, or the caller is cancelled
                await lowlevel.wait_task_rescheduled(self._abort)
            return
        future = self._future = loop.create_future()
        timer = loop.call_at(until, _wake, future) if until != math.inf else None
        try:
            await future
        finally:
            if timer is not None:
                timer.cancel()

    def waiter(self, loop: asyncio.AbstractEventLoop | None) -> Awaitable[Any]:
        """What to await for the answer, with no timer of its own: someone else
        (a ``Backstop``) answers or gives up on the caller in time. On asyncio
        (``loop``, the running one) a bare future, on trio (``None``) the task
        parked: no coroutine frame of ours waits."""
        if loop is not None:
            future = self._future = loop.create_future()
            if self.done:
                future.set_result(None)
            return future
        lowlevel = _trio().lowlevel
        self._task = lowlevel.current_task()
        parked: Awaitable[Any] = lowlevel.wait_task_rescheduled(self._abort)
        return parked

    def _abort(self, _: Any) -> Any:  # trio: the waiting task was cancelled
        self._task = None
        return _trio().lowlevel.Abort.SUCCEEDED

    def __repr__(self) -> str:
        return f"<Caller #{self.id}{' done' if self.done else ''}>"


def _trio() -> Any:
    """trio, loaded already: only a trio task gets here."""
    return sys.modules["trio"]


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Unset:
    __slots__ = ()


_UNSET = _Unset()
_GAVE_UP = _Unset()  # the answer of a caller that timed out or was cancelled
