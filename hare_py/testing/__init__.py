"""Test helpers: in-memory brokers with a backdoor, and ``break_channel``.

``SandboxBroker`` serves AMQP 0-9-1 at ``sandbox://NAME``; ``SandboxNatsBroker``
serves NATS at ``sandbox+nats://NAME``. Example::

    with SandboxBroker() as broker:
        async with Connection(broker.url) as conn:
            ...
        broker.ops("basic_publish")          # what was done
        broker.kill_connection(1)            # what goes wrong next

Every backdoor method is described in ``docs/testing.md`` and on the brokers.
"""

from __future__ import annotations

from ..transport.sandbox import (
    BindingInfo,
    ChannelInfo,
    ConnectionInfo,
    ConsumerInfo,
    ExchangeInfo,
    Fault,
    Op,
    QueueDetails,
    SandboxBroker,
    SandboxMessage,
)
from ..transport.sandbox_nats import SandboxNatsBroker, SandboxNatsMessage
from .faults import break_channel

__all__ = [
    "BindingInfo",
    "ChannelInfo",
    "ConnectionInfo",
    "ConsumerInfo",
    "ExchangeInfo",
    "Fault",
    "Op",
    "QueueDetails",
    "SandboxBroker",
    "SandboxMessage",
    "SandboxNatsBroker",
    "SandboxNatsMessage",
    "break_channel",
]
