"""The sandbox backend: a faithful in-memory AMQP 0-9-1 broker, on any anyio backend.

``_model`` is the broker itself (sans-I/O: exchanges, queues, bindings,
routing, consumers, unacked messages); ``_backend`` puts the transport
protocol on top of it with anyio; ``_broker`` is the named ``SandboxBroker``
that ``sandbox://NAME`` URLs reach, with its backdoor for tests.
"""

from __future__ import annotations

from ._backend import SandboxBackend, SandboxChannel, SandboxConnection
from ._broker import SandboxBroker
from ._faults import Fault
from ._views import (
    BindingInfo,
    ChannelInfo,
    ConnectionInfo,
    ConsumerInfo,
    ExchangeInfo,
    Op,
    QueueDetails,
    SandboxMessage,
)

__all__ = [
    "BindingInfo",
    "ChannelInfo",
    "ConnectionInfo",
    "ConsumerInfo",
    "ExchangeInfo",
    "Fault",
    "Op",
    "QueueDetails",
    "SandboxBackend",
    "SandboxBroker",
    "SandboxChannel",
    "SandboxConnection",
    "SandboxMessage",
]
