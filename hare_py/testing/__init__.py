"""Test helpers: ``SandboxBroker``, an in-memory broker with a backdoor, and ``break_channel``.

Example::

    with SandboxBroker() as broker:
        async with Connection(broker.url) as conn:
            ...
        broker.ops("basic_publish")          # what was done
        broker.kill_connection(1)            # what goes wrong next

Every backdoor method is described in ``docs/testing.md`` and on ``SandboxBroker``.
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
    "break_channel",
]
