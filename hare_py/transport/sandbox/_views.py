"""Read-only snapshots of sandbox broker state, for tests to assert on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..base import Properties

__all__ = [
    "BindingInfo",
    "ChannelInfo",
    "ConnectionInfo",
    "ConsumerInfo",
    "ExchangeInfo",
    "Op",
    "QueueDetails",
    "SandboxMessage",
]


@dataclass(frozen=True, slots=True)
class Op:
    """One recorded broker operation: what, on which connection/channel, with what."""

    name: str
    connection: int | None = None
    channel: int | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    error: Exception | None = None

    def __getitem__(self, key: str) -> Any:
        """``op["queue"]`` is ``op.args["queue"]``."""
        return self.args[key]


@dataclass(frozen=True, slots=True)
class SandboxMessage:
    """A message as it sits in (or leaves) a queue."""

    queue: str
    exchange: str
    routing_key: str
    body: bytes
    properties: Properties
    redelivered: bool = False


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """A consumer: its tag, queue and where it lives."""

    tag: str
    queue: str
    channel: int
    connection: int
    no_ack: bool
    exclusive: bool
    prefetch: int
    unacked: int


@dataclass(frozen=True, slots=True)
class QueueDetails:
    """A queue with its flags, counts and consumers."""

    name: str
    durable: bool
    exclusive_owner: int | None  # connection id
    auto_delete: bool
    arguments: Mapping[str, Any]
    messages: int  # ready, not counting unacked
    unacked: int
    consumers: tuple[ConsumerInfo, ...]

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None


@dataclass(frozen=True, slots=True)
class ExchangeInfo:
    """An exchange with its flags."""

    name: str
    type: str
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class BindingInfo:
    """A binding of a queue to an exchange."""

    exchange: str
    queue: str
    routing_key: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """An open channel."""

    id: int
    connection: int
    number: int
    publisher_confirms: bool
    prefetch_count: int
    global_prefetch_count: int
    consumers: tuple[str, ...]
    unacked: int


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """An open connection."""

    id: int
    name: str | None
    channels: tuple[int, ...]
