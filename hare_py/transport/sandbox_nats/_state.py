"""The server's entities and the events it sends to clients. Plain data, no logic."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

from ..base import CloseReason

__all__ = [
    "ConnectionClosed",
    "ConnectionState",
    "Event",
    "Headers",
    "LameDuck",
    "Msg",
    "NoResponders",
    "Pong",
    "SessionState",
    "Subscription",
]

Headers: TypeAlias = tuple[tuple[str, str], ...]
"""Header (key, value) pairs in wire order; a key may repeat."""


# Events, each addressed to one connection.


@dataclass(frozen=True, slots=True)
class Msg:
    """MSG or HMSG (``headers`` is None for MSG)."""

    sid: int
    subject: str
    reply: str | None
    body: bytes
    headers: Headers | None
    delay: float = 0.0  # seconds, from a "delay" fault


@dataclass(frozen=True, slots=True)
class NoResponders:
    """The ``NATS/1.0 503`` status a request that reached nobody gets, on its reply subject."""

    sid: int
    subject: str
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Pong:
    """The PONG to the connection's oldest unanswered PING."""


@dataclass(frozen=True, slots=True)
class LameDuck:
    """An INFO with ``ldm``: the server is going away; connect elsewhere."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    reason: CloseReason


Event: TypeAlias = Msg | NoResponders | Pong | LameDuck | ConnectionClosed


# Entities. Identity matters (eq=False).


@dataclass(eq=False, slots=True)
class Subscription:
    connection: ConnectionState
    sid: int
    subject: str
    queue: str | None
    session: int | None  # the client's session, for views only: the server knows none


@dataclass(eq=False, slots=True)
class SessionState:
    id: int
    connection: ConnectionState
    open: bool = True


@dataclass(eq=False, slots=True)
class ConnectionState:
    id: int
    name: str | None
    subs: dict[int, Subscription] = field(default_factory=dict)  # by sid, in SUB order
    sessions: dict[int, SessionState] = field(default_factory=dict)
    stalled: bool = False
    held_in: deque[Callable[[], object]] = field(default_factory=deque)  # its operations
    held_out: deque[Event] = field(default_factory=deque)  # events for it
    reason: CloseReason | None = None
