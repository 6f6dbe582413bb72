"""Helpers for the NATS contract tests: connections, sessions, subjects, inboxes."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from inbox import Inbox

from hare_py.transport import ConnectOptions, TransportConnection, backend_for, parse_url
from hare_py.transport.base import Message, NatsSession, OnReturn, Properties

__all__ = ["FLUSH", "Inbox", "Nats", "message"]

FLUSH = 5.0  # seconds a flush may take


def message(
    subject: str,
    body: bytes = b"",
    *,
    reply: str | None = None,
    headers: Mapping[str, Any] | None = None,
) -> Message:
    """A NATS message as the seam takes it."""
    return Message("", subject, body, Properties(headers=headers, reply_to=reply))


class Nats:
    """Connections, sessions and unique subjects for one test."""

    def __init__(self, url: str, tg: TaskGroup) -> None:
        self.url = parse_url(url)
        self._tg = tg
        self._stop = anyio.Event()
        self._prefix = uuid.uuid4().hex[:12]

    def subject(self, label: str = "s") -> str:
        """A subject (or prefix of tokens) no other test uses."""
        return f"contract.{self._prefix}.{label}"

    def inbox(self) -> str:
        """A private reply prefix, as RPC clients make them."""
        return f"_INBOX.{uuid.uuid4().hex}"

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

    async def session(
        self, conn: TransportConnection | None = None, *, on_return: OnReturn | None = None
    ) -> NatsSession:
        """A session on ``conn`` (a new connection if None)."""
        if conn is None:
            conn = await self.connect()
        session = await conn.open_session(on_return=on_return)
        assert isinstance(session, NatsSession)
        return session

    def close_all(self) -> None:
        """Let every connection's ``async with`` block end."""
        self._stop.set()
