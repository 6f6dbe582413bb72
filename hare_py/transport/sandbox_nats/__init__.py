"""The in-memory NATS broker: nats-server's semantics for core NATS, on any anyio backend.

``_model`` is the server itself (sans-I/O: connections, subscriptions,
subject matching, queue groups, no-responders, stalls); ``_wire`` is what a
client refuses to send; ``_backend`` plays the client on top of them with
anyio (``NatsSession``); ``_broker`` is the named ``SandboxNatsBroker`` that
``sandbox+nats://NAME`` URLs reach, with its backdoor for tests.
"""

from __future__ import annotations

from ._backend import SandboxNatsBackend, SandboxNatsConnection, SandboxNatsSession
from ._broker import SandboxNatsBroker
from ._faults import Fault
from ._views import ConnectionInfo, Op, SandboxNatsMessage, SessionInfo, SubscriptionInfo

__all__ = [
    "ConnectionInfo",
    "Fault",
    "Op",
    "SandboxNatsBackend",
    "SandboxNatsBroker",
    "SandboxNatsConnection",
    "SandboxNatsMessage",
    "SandboxNatsSession",
    "SessionInfo",
    "SubscriptionInfo",
]
