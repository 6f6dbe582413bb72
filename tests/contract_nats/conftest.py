"""The NATS contract, held against the sandbox and a real nats-server alike.

``nats_kind`` runs each test on the in-memory ``SandboxNatsBroker`` and on
the session's private nats-server (marker ``nats``), each on asyncio and
trio, through the ``NatsSession`` API only. ``nats`` opens connections and
makes subjects unique to the test, so that tests never meet on the shared
server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import anyio
import pytest
from nats_contract_helpers import Nats

from hare_py.testing import SandboxNatsBroker


@dataclass(frozen=True)
class NatsKind:
    server: str  # "sandbox" or "nats-server"
    anyio_backend: str


@pytest.fixture(
    params=[
        pytest.param(NatsKind("sandbox", "asyncio"), id="sandbox-asyncio"),
        pytest.param(NatsKind("sandbox", "trio"), id="sandbox-trio"),
        pytest.param(NatsKind("nats-server", "asyncio"), id="nats-asyncio", marks=pytest.mark.nats),
        pytest.param(NatsKind("nats-server", "trio"), id="nats-trio", marks=pytest.mark.nats),
    ]
)
def nats_kind(request: pytest.FixtureRequest) -> NatsKind:
    """Which server, on which anyio backend."""
    kind: NatsKind = request.param
    return kind


@pytest.fixture
def anyio_backend(nats_kind: NatsKind) -> str:
    """The anyio backend that goes with the server kind."""
    return nats_kind.anyio_backend


@pytest.fixture
def sandbox(nats_kind: NatsKind) -> Iterator[SandboxNatsBroker | None]:
    """The test's own sandbox NATS broker; None on nats-server."""
    if nats_kind.server != "sandbox":
        yield None
        return
    with SandboxNatsBroker() as broker:
        yield broker


@pytest.fixture
def nats_url(sandbox: SandboxNatsBroker | None, request: pytest.FixtureRequest) -> str:
    """A fresh sandbox's URL, or the session's nats-server URL."""
    if sandbox is not None:
        return sandbox.url
    return str(request.getfixturevalue("nats_server").url)


@pytest.fixture
async def nats(nats_url: str) -> AsyncIterator[Nats]:
    """Open connections and sessions with ``await nats.session()``; closed after the test."""
    async with anyio.create_task_group() as tg:
        helper = Nats(nats_url, tg)
        try:
            yield helper
        finally:
            helper.close_all()
