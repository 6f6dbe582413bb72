"""``HeldConnections``: connections for one test, each held open in a task of its own."""

from __future__ import annotations

from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from hare_py.transport import ConnectOptions, TransportConnection, backend_for, parse_url

__all__ = ["HeldConnections"]


class HeldConnections:
    """Connections to ``url`` for one test, held open in ``tg`` until ``close_all()``."""

    def __init__(self, url: str, tg: TaskGroup) -> None:
        self.url = parse_url(url)
        self._tg = tg
        self._stop = anyio.Event()

    async def connect(self, name: str | None = None) -> TransportConnection:
        """A connection that stays open until the test ends (unless closed before)."""
        conn: TransportConnection = await self._tg.start(self._hold, name)
        return conn

    async def _hold(self, name: str | None, *, task_status: TaskStatus[Any]) -> None:
        # Each connection lives in its own task, so that its task group never
        # straddles the test's cancel scopes (fail_after).
        backend = backend_for(self.url)
        async with backend.connect(self.url, ConnectOptions(name=name)) as conn:
            task_status.started(conn)
            await self._stop.wait()

    def close_all(self) -> None:
        """Let every connection's ``async with`` block end."""
        self._stop.set()
