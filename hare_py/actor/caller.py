"""The handle of whoever waits for an answer from an actor."""

from __future__ import annotations

import itertools
import math
from typing import Any

import anyio

__all__ = ["Caller"]

_ids = itertools.count(1)


class Caller:
    """Someone waiting for an answer: a ``request()`` or a ``call()``.

    Callbacks receive it; returning ``NoReply`` keeps it waiting until
    ``reply(caller, value)`` answers it or its ``deadline`` passes. A caller is
    answered at most once: later answers are ignored.
    """

    __slots__ = ("_event", "_value", "deadline", "id", "request")

    def __init__(self, deadline: float = math.inf, request: Any = None) -> None:
        self.id = next(_ids)
        self.deadline = deadline
        self.request = request
        self._event: anyio.Event | None = None
        self._value: Any = _UNSET

    @property
    def done(self) -> bool:
        """True once answered (or abandoned by a cancelled caller)."""
        return self._value is not _UNSET

    def _resolve(self, value: Any) -> bool:
        """Answer the caller; False if it was answered already."""
        if self._value is not _UNSET:
            return False
        self._value = value
        if self._event is not None:
            self._event.set()
        return True

    async def _wait(self) -> Any:
        if self._value is _UNSET:
            self._event = anyio.Event()
            await self._event.wait()
        return self._value

    def __repr__(self) -> str:
        return f"<Caller #{self.id}{' done' if self.done else ''}>"


class _Unset:
    __slots__ = ()


_UNSET = _Unset()
