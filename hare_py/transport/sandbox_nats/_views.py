"""Read-only snapshots of the sandbox NATS server, for tests to assert on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConnectionInfo", "Op", "SandboxNatsMessage", "SessionInfo", "SubscriptionInfo"]


@dataclass(frozen=True, slots=True)
class Op:
    """One recorded operation: what, on which connection and session, with what."""

    name: str
    connection: int | None = None
    session: int | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    error: Exception | None = None

    def __getitem__(self, key: str) -> Any:
        """``op["subject"]`` is ``op.args["subject"]``."""
        return self.args[key]


@dataclass(frozen=True, slots=True)
class SandboxNatsMessage:
    """A message on its way to one subscription (what a fault's ``match`` sees).

    ``headers`` is as a subscriber receives them: None without headers, a
    repeated key as a list. ``status`` is 503 for a no-responders status.
    """

    subject: str
    reply: str | None
    body: bytes
    headers: Mapping[str, str | list[str]] | None
    connection: int  # the receiving connection
    sid: int
    queue: str | None
    status: int | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionInfo:
    """A subscription: where it lives, its subject and queue group."""

    connection: int
    session: int | None
    sid: int
    subject: str
    queue: str | None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """An open session and the sids of its subscriptions."""

    id: int
    connection: int
    subscriptions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """An open connection."""

    id: int
    name: str | None
    sessions: tuple[int, ...]
    subscriptions: tuple[int, ...]
    stalled: bool
