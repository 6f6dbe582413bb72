"""Where a NATS test runs: the in-memory sandbox or the session's nats-server.

The ``nats_kind`` fixture (tests/conftest.py) runs a test once per
``NATS_KINDS``: ``SandboxNatsBroker`` and nats-server (marker ``nats``), each
on asyncio and trio; ``nats_url`` is then a fresh sandbox's URL or the
server's. A module or folder that uses them sets its anyio backend to match::

    @pytest.fixture
    def anyio_backend(nats_kind: NatsKind) -> str:
        return nats_kind.anyio_backend
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class NatsKind:
    server: str  # "sandbox" or "nats-server"
    anyio_backend: str


NATS_KINDS = [
    pytest.param(NatsKind("sandbox", "asyncio"), id="sandbox-asyncio"),
    pytest.param(NatsKind("sandbox", "trio"), id="sandbox-trio"),
    pytest.param(NatsKind("nats-server", "asyncio"), id="nats-asyncio", marks=pytest.mark.nats),
    pytest.param(NatsKind("nats-server", "trio"), id="nats-trio", marks=pytest.mark.nats),
]
