"""The NATS contract, held against the sandbox and a real nats-server alike.

``nats_kind`` (tests/conftest.py) runs each test on the in-memory
``SandboxNatsBroker`` and on the session's private nats-server (marker
``nats``), each on asyncio and trio, through the ``NatsSession`` API only.
``nats`` opens connections and makes subjects unique to the test, so that
tests never meet on the shared server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from nats_contract_helpers import Nats
from nats_kinds import NatsKind


@pytest.fixture
def anyio_backend(nats_kind: NatsKind) -> str:
    """The anyio backend that goes with the server kind."""
    return nats_kind.anyio_backend


@pytest.fixture
async def nats(nats_url: str) -> AsyncIterator[Nats]:
    """Open connections and sessions with ``await nats.session()``; closed after the test."""
    async with anyio.create_task_group() as tg:
        helper = Nats(nats_url, tg)
        try:
            yield helper
        finally:
            helper.close_all()
