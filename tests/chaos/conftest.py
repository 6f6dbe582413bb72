"""Chaos fixtures: the real RabbitMQ, an echo server in its own process, a report."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chaos_report
import pytest
from processes import start_ready, stop_ready
from rabbitmq import with_amqp_backend

HERE = Path(__file__).resolve().parent


@pytest.fixture(
    params=[("asyncio", "aiormq"), ("asyncio", None), ("trio", None)],
    ids=["aiormq-asyncio", "anyio-asyncio", "anyio-trio"],
)
def chaos_kind(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """(anyio backend, the URL's backend=): every AMQP backend on every loop it runs on."""
    kind: tuple[str, str | None] = request.param
    return kind


@pytest.fixture
def anyio_backend(chaos_kind: tuple[str, str | None]) -> str:
    return chaos_kind[0]


class _Broker:
    """The session's broker, with ``url`` choosing this test's AMQP backend."""

    def __init__(self, node: Any, url: str) -> None:
        self._node = node
        self.url = url

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)


@pytest.fixture
def rabbitmq(rabbitmq: Any, chaos_kind: tuple[str, str | None]) -> Any:
    """The session's RabbitMQ, its ``url`` with this test's ``backend=`` (clients and the
    echo server alike)."""
    return _Broker(rabbitmq, with_amqp_backend(rabbitmq.url, chaos_kind[1]))


@pytest.fixture
def echo_queue(rabbitmq: Any) -> Iterator[str]:
    """The queue of an echo RPCServer running in a separate process."""
    queue = f"chaos.echo.{uuid.uuid4().hex[:8]}"
    process = start_ready([sys.executable, str(HERE / "echo_server.py"), rabbitmq.url, queue])
    try:
        yield queue
    finally:
        stop_ready(process)


@pytest.fixture
def report(chaos_kind: tuple[str, str | None]) -> Any:
    """Record a fault's figures; they are printed at the end of the run."""
    loop, amqp = chaos_kind
    backend = f"{amqp or 'anyio'}/{loop}"  # the anyio backend is the default on both

    def add(row: dict[str, Any]) -> None:
        chaos_report.ROWS.append({"backend": backend, **row})

    return add
