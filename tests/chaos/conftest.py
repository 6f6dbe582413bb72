"""Chaos fixtures: the real RabbitMQ, an echo server in its own process, a report."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """asyncio (the aiormq backend) and trio (the anyio-native AMQP backend)."""
    backend: str = request.param
    return backend


@pytest.fixture
def echo_queue(rabbitmq: Any) -> Iterator[str]:
    """The queue of an echo RPCServer running in a separate process."""
    queue = f"chaos.echo.{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen(
        [sys.executable, str(HERE / "echo_server.py"), rabbitmq.url, queue],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30.0)
        line = process.stdout.readline() if ready else ""
        if line.strip() != "ready":
            process.kill()
            _, err = process.communicate(timeout=10)
            pytest.fail(f"echo server did not start: {line!r}\n{err[-2000:]}")
        yield queue
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


_report: list[dict[str, Any]] = []


@pytest.fixture
def report(anyio_backend: str) -> Any:
    """Record a fault's figures; they are printed at the end of the run."""
    backend = "aiormq/asyncio" if anyio_backend == "asyncio" else "anyio/trio"

    def add(row: dict[str, Any]) -> None:
        _report.append({"backend": backend, **row})

    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _report:
        return
    terminalreporter.section("chaos: recovery figures")
    for row in _report:
        terminalreporter.write_line(" ".join(f"{k}={v}" for k, v in row.items()))
