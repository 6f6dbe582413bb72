"""Interop tests: hare_py against real third-party peers on a real RabbitMQ.

The peers are FastStream, aio-pika (plain and its ``patterns.JsonRPC``) and
pika in the RabbitMQ tutorial's style, installed from PyPI with the ``dev``
extra. Every test here talks to the session's private broker (the
``rabbitmq`` fixture, 127.0.0.1 only) and is marked ``rabbitmq``.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rabbitmq import with_amqp_backend

HERE = Path(__file__).resolve().parent
PIKA_TUTORIAL = HERE / "pika_tutorial.py"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder ``rabbitmq`` (before ``-m`` selects)."""
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.rabbitmq)


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: the peers (FastStream, aio-pika) run in this process, on asyncio."""
    return "asyncio"


@pytest.fixture(params=["aiormq", "anyio"])
def hare_url(rabbitmq_url: str, request: pytest.FixtureRequest) -> str:
    """The URL for hare_py's side: through each of its AMQP backends on asyncio."""
    return with_amqp_backend(rabbitmq_url, request.param)


@pytest.fixture
def queue() -> str:
    """A queue name no other test uses."""
    return f"interop.{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class PikaServer:
    queue: str
    process: subprocess.Popen[bytes]


@pytest.fixture
def pika_fib_server(rabbitmq_url: str, queue: str) -> Iterator[PikaServer]:
    """The pika tutorial's Fibonacci server in a subprocess, consuming ``queue``."""
    process = subprocess.Popen(
        [sys.executable, str(PIKA_TUTORIAL), rabbitmq_url, queue],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _wait_for_line(process, b"Awaiting RPC requests", seconds=20)
        yield PikaServer(queue, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


def _wait_for_line(process: subprocess.Popen[bytes], marker: bytes, *, seconds: float) -> None:
    """Read the process's output until ``marker``; fail if it exits or ``seconds`` pass."""
    assert process.stdout is not None
    deadline = time.monotonic() + seconds
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while marker not in seen:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"pika server not ready in {seconds} s; output: {seen!r}")
            if selector.select(timeout=left):
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    code = process.wait(timeout=5)
                    pytest.fail(f"pika server exited with {code}; output: {seen!r}")
                seen += chunk
