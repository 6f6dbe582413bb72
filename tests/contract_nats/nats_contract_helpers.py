"""Helpers for the NATS contract tests: connections, sessions, subjects, inboxes."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from anyio.abc import TaskGroup
from held_connections import HeldConnections
from inbox import Inbox

from hare_py.transport import TransportConnection
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


class Nats(HeldConnections):
    """Connections, sessions and unique subjects for one test."""

    def __init__(self, url: str, tg: TaskGroup) -> None:
        super().__init__(url, tg)
        self._prefix = uuid.uuid4().hex[:12]

    def subject(self, label: str = "s") -> str:
        """A subject (or prefix of tokens) no other test uses."""
        return f"contract.{self._prefix}.{label}"

    def inbox(self) -> str:
        """A private reply prefix, as RPC clients make them."""
        return f"_INBOX.{uuid.uuid4().hex}"

    async def session(
        self, conn: TransportConnection | None = None, *, on_return: OnReturn | None = None
    ) -> NatsSession:
        """A session on ``conn`` (a new connection if None)."""
        if conn is None:
            conn = await self.connect()
        session = await conn.open_session(on_return=on_return)
        assert isinstance(session, NatsSession)
        return session
