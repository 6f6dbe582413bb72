"""``Inbox``: what a sync callback (on_delivery, on_return, on_cancel) is given, to await."""

from __future__ import annotations

from collections import deque
from typing import Any

import anyio
import anyio.lowlevel

__all__ = ["Inbox"]


class Inbox:
    """Collects what a sync callback is given, in order: its one argument, or a
    tuple of several.

    A plain queue, not a memory object stream: a callback may still be called
    after the test is done with the inbox, and there is nothing to close.
    """

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._arrived = anyio.Event()

    def __call__(self, *item: Any) -> None:
        self._items.append(item[0] if len(item) == 1 else item)
        self._arrived.set()

    async def get(self) -> Any:
        await anyio.lowlevel.checkpoint()
        while not self._items:
            if self._arrived.is_set():
                self._arrived = anyio.Event()
            await self._arrived.wait()
        return self._items.popleft()

    async def take(self, n: int) -> list[Any]:
        return [await self.get() for _ in range(n)]

    def pending(self) -> list[Any]:
        items = list(self._items)
        self._items.clear()
        return items

    async def quiet(self, seconds: float = 0.3) -> list[Any]:
        """Whatever else arrives within ``seconds`` (expected: nothing)."""
        await anyio.sleep(seconds)
        return self.pending()
