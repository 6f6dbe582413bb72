"""An actor's mailbox: unbounded, first in first out, one receiving task."""

from __future__ import annotations

from collections import deque
from typing import Any

import anyio

__all__ = ["Mailbox"]


class Mailbox:
    """What an anyio memory object stream of unbounded size does for an actor, for
    the one task that receives: every request and reply passes through it, so each
    message costs a deque append and pop, and a receiver that waits one event.

    ``send_nowait``/``receive_nowait``/``receive``/``close`` behave as the stream's
    (``anyio.WouldBlock`` when empty, ``anyio.ClosedResourceError`` once closed),
    except that ``receive`` returns at once when a message is there.
    """

    __slots__ = ("_closed", "_items", "_wake")

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._wake: anyio.Event | None = None  # set by the next send: the receiver waits
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def send_nowait(self, message: Any) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        self._items.append(message)
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    def receive_nowait(self) -> Any:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._items:
            return self._items.popleft()
        raise anyio.WouldBlock

    async def receive(self) -> Any:
        """The next message, waiting for one (cancellable)."""
        items = self._items
        while not items:
            if self._closed:
                raise anyio.ClosedResourceError
            wake = self._wake = anyio.Event()
            await wake.wait()
        return items.popleft()

    def close(self) -> None:
        self._closed = True
        self._items.clear()
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.set()  # a waiting receiver sees the close
