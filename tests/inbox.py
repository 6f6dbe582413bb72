"""``Inbox``: what a sync callback (on_delivery, on_return, on_cancel) is given, to await."""

from __future__ import annotations

import math
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["Inbox"]


class Inbox:
    """Collects what a sync callback is given, in order: its one argument, or a
    tuple of several."""

    def __init__(self) -> None:
        self._send: MemoryObjectSendStream[Any]
        self._receive: MemoryObjectReceiveStream[Any]
        self._send, self._receive = anyio.create_memory_object_stream[Any](math.inf)

    def __call__(self, *item: Any) -> None:
        self._send.send_nowait(item[0] if len(item) == 1 else item)

    async def get(self) -> Any:
        return await self._receive.receive()

    async def take(self, n: int) -> list[Any]:
        return [await self.get() for _ in range(n)]

    def pending(self) -> list[Any]:
        items = []
        while True:
            try:
                items.append(self._receive.receive_nowait())
            except anyio.WouldBlock:
                return items

    async def quiet(self, seconds: float = 0.3) -> list[Any]:
        """Whatever else arrives within ``seconds`` (expected: nothing)."""
        await anyio.sleep(seconds)
        return self.pending()
