"""The broker's entities and the events it sends to clients. Plain data, no logic."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

from ..base import CloseReason, Delivery, Properties, ReturnedMessage

__all__ = [
    "ChannelClosed",
    "ConnectionClosed",
    "ConsumerCancelled",
    "Deliver",
    "Event",
    "Return",
]


# Events, each addressed to one connection (and channel) of the broker.


@dataclass(frozen=True, slots=True)
class Deliver:
    channel: int
    delivery: Delivery
    delay: float = 0.0  # seconds, from a "delay" fault


@dataclass(frozen=True, slots=True)
class Return:
    channel: int
    message: ReturnedMessage


@dataclass(frozen=True, slots=True)
class ConsumerCancelled:
    channel: int
    consumer_tag: str
    reason: CloseReason


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    channel: int
    reason: CloseReason


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    connection: int
    reason: CloseReason


Event: TypeAlias = Deliver | Return | ConsumerCancelled | ChannelClosed | ConnectionClosed


# Entities. Identity matters (eq=False): two equal-looking messages are distinct.


@dataclass(eq=False, slots=True)
class Message:
    body: bytes
    properties: Properties
    exchange: str
    routing_key: str
    seq: int = 0  # position in its queue, so requeued messages go back in order
    redelivered: bool = False
    expires_at: float | None = None
    immediate: bool = False  # TTL 0: deliver now or drop


@dataclass(eq=False, slots=True)
class Exchange:
    name: str
    type: str
    durable: bool
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    had_binding: bool = False


@dataclass(eq=False, slots=True)
class Binding:
    exchange: str
    queue: str
    routing_key: str
    arguments: dict[str, Any]

    def same(self, exchange: str, queue: str, routing_key: str, arguments: dict[str, Any]) -> bool:
        return (self.exchange, self.queue, self.routing_key, self.arguments) == (
            exchange,
            queue,
            routing_key,
            arguments,
        )


@dataclass(eq=False, slots=True)
class Consumer:
    tag: str
    queue: str
    channel: ChannelState
    no_ack: bool
    exclusive: bool
    prefetch: int
    unacked: int = 0

    def has_capacity(self) -> bool:
        if self.no_ack:
            return True
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        ch = self.channel
        return not ch.global_prefetch or len(ch.unacked) < ch.global_prefetch


@dataclass(eq=False, slots=True)
class Queue:
    name: str
    durable: bool
    exclusive_owner: int | None
    auto_delete: bool
    arguments: dict[str, Any]
    ready: list[Message] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)  # round-robin order
    had_consumer: bool = False
    next_seq: int = 0


@dataclass(eq=False, slots=True)
class Pending:
    """A delivered, not yet acknowledged message."""

    tag: int
    message: Message
    queue: str
    consumer: Consumer


@dataclass(eq=False, slots=True)
class ChannelState:
    id: int
    connection: ConnectionState
    number: int
    confirms: bool
    prefetch: int = 0  # for consumers started after basic.qos(global=False)
    global_prefetch: int = 0
    next_tag: int = 1
    unacked: dict[int, Pending] = field(default_factory=dict)  # in delivery order
    consumers: dict[str, Consumer] = field(default_factory=dict)
    reply_consumer: Consumer | None = None  # of the direct reply-to pseudo-queue
    reply_address: str | None = None  # "amq.rabbitmq.reply-to.<key>" for this channel
    reason: CloseReason | None = None


@dataclass(eq=False, slots=True)
class ConnectionState:
    id: int
    name: str | None
    user: str  # RabbitMQ checks a message's user_id against it
    channels: dict[int, ChannelState] = field(default_factory=dict)
    next_number: int = 1
    reason: CloseReason | None = None
