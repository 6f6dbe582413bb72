"""The transport contract, held against every broker kind.

``broker_kind`` runs each test on the sandbox (asyncio and trio) and on a real
RabbitMQ through each AMQP backend: aiormq (asyncio only) and the anyio-native
one (on trio, and on asyncio with ``?backend=anyio``). ``amqp`` opens
connections, makes unique names and deletes what the test declared, so tests
never collide on a shared broker.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import anyio
import anyio.to_thread
import pytest
from contract_helpers import Amqp, ForceClose
from rabbitmq import unavailable, with_amqp_backend

from hare_py.testing import SandboxBroker


@dataclass(frozen=True)
class BrokerKind:
    broker: str  # "sandbox" or "rabbitmq"
    anyio_backend: str
    amqp_backend: str | None = None  # the URL's backend=; None: the default for the loop


@pytest.fixture(
    params=[
        pytest.param(BrokerKind("sandbox", "asyncio"), id="sandbox-asyncio"),
        pytest.param(BrokerKind("sandbox", "trio"), id="sandbox-trio"),
        pytest.param(
            BrokerKind("rabbitmq", "asyncio", "aiormq"),
            id="rabbitmq-asyncio-aiormq",
            marks=pytest.mark.rabbitmq,
        ),
        pytest.param(
            BrokerKind("rabbitmq", "asyncio", "anyio"),
            id="rabbitmq-asyncio-anyio",
            marks=pytest.mark.rabbitmq,
        ),
        pytest.param(
            BrokerKind("rabbitmq", "trio"), id="rabbitmq-trio", marks=pytest.mark.rabbitmq
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
def sandbox(broker_kind: BrokerKind) -> Iterator[SandboxBroker | None]:
    """The test's own sandbox broker; None on RabbitMQ."""
    if broker_kind.broker != "sandbox":
        yield None
        return
    with SandboxBroker() as broker:
        yield broker


@pytest.fixture
def broker_url(
    sandbox: SandboxBroker | None, broker_kind: BrokerKind, request: pytest.FixtureRequest
) -> str:
    """A fresh sandbox broker's URL, or the session's RabbitMQ URL."""
    if sandbox is not None:
        return sandbox.url
    try:
        url = str(request.getfixturevalue("rabbitmq_url"))
    except pytest.FixtureLookupError:
        env = os.environ.get("HARE_TEST_AMQP_URL")
        if not env:
            unavailable("no RabbitMQ: set HARE_TEST_AMQP_URL")
        url = env
    return with_amqp_backend(url, broker_kind.amqp_backend)


@pytest.fixture
def force_close(
    broker_url: str, sandbox: SandboxBroker | None, request: pytest.FixtureRequest
) -> ForceClose:
    """``await force_close(name, reason)``: the broker closes the connection called ``name``.

    On RabbitMQ this is ``rabbitmqctl close_connection``, which sends
    ``320 CONNECTION_FORCED - <reason>``; the sandbox does the same.
    """
    if sandbox is not None:
        broker = sandbox

        async def close_sandbox(name: str, reason: str) -> None:
            ids = [c.id for c in broker.connections.values() if c.name == name]
            assert ids, f"no connection named {name!r}"
            for connection_id in ids:
                broker.kill_connection(connection_id, 320, f"CONNECTION_FORCED - {reason}")

        return close_sandbox
    try:
        node = request.getfixturevalue("rabbitmq")
    except pytest.FixtureLookupError:
        unavailable("needs rabbitmqctl: the rabbitmq fixture is missing")

    async def close_rabbitmq(name: str, reason: str) -> None:
        try:
            await anyio.to_thread.run_sync(node.close_connection, name, reason)
        except RuntimeError as exc:  # RabbitMQError: no rabbitmqctl for this broker
            unavailable(str(exc))

    return close_rabbitmq


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
