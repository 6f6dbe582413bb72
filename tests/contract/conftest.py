"""The transport contract, held against every broker kind.

``broker_kind`` runs each test on the sandbox (asyncio and trio) and on a real
RabbitMQ through the aiormq backend (asyncio only: that combination is not
generated for trio at all). ``amqp`` opens connections, makes unique names
and deletes what the test declared, so tests never collide on a shared broker.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import anyio
import pytest
from contract_helpers import Amqp

from hare_py.testing import SandboxBroker


@dataclass(frozen=True)
class BrokerKind:
    broker: str  # "sandbox" or "rabbitmq"
    anyio_backend: str


@pytest.fixture(
    params=[
        pytest.param(BrokerKind("sandbox", "asyncio"), id="sandbox-asyncio"),
        pytest.param(BrokerKind("sandbox", "trio"), id="sandbox-trio"),
        pytest.param(
            BrokerKind("rabbitmq", "asyncio"), id="rabbitmq-asyncio", marks=pytest.mark.rabbitmq
        ),
    ]
)
def broker_kind(request: pytest.FixtureRequest) -> BrokerKind:
    """Which broker, on which anyio backend."""
    kind: BrokerKind = request.param
    return kind


@pytest.fixture
def anyio_backend(broker_kind: BrokerKind) -> str:
    """The anyio backend that goes with the broker kind."""
    return broker_kind.anyio_backend


@pytest.fixture
def broker_url(broker_kind: BrokerKind, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh sandbox broker's URL, or the session's RabbitMQ URL."""
    if broker_kind.broker == "sandbox":
        with SandboxBroker() as broker:
            yield broker.url
        return
    try:
        url = str(request.getfixturevalue("rabbitmq_url"))
    except pytest.FixtureLookupError:
        env = os.environ.get("HARE_TEST_AMQP_URL")
        if not env:
            pytest.skip("no RabbitMQ: set HARE_TEST_AMQP_URL")
        url = env
    yield url


@pytest.fixture
async def amqp(broker_url: str) -> AsyncIterator[Amqp]:
    """Open connections with ``await amqp.connect()``; everything is closed after the test."""
    async with anyio.create_task_group() as tg:
        helper = Amqp(broker_url, tg)
        try:
            yield helper
        finally:
            helper.close_all()
    await helper.cleanup()
