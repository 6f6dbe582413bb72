"""Shared fixtures: every async test runs on asyncio and on trio unless pinned."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any, NoReturn

import chaos_report
import pytest
import structlog
from nats_kinds import NATS_KINDS, NatsKind
from natsserver import NatsServer, started as nats_started
from rabbitmq import ExternalRabbitMQ, RabbitMQNode, RabbitMQUnavailable, unavailable

from hare_py.testing import SandboxNatsBroker


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test on both anyio backends."""
    return str(request.param)


# --- A real RabbitMQ broker (tests marked ``rabbitmq``) ---------------------
#
# The ``rabbitmq`` fixture starts a private node on first use (see
# tests/rabbitmq.py) and stops it at the end of the session. HARE_TEST_AMQP_URL
# points the tests at a broker run elsewhere instead. Without a broker the
# tests are skipped, except in CI (env CI set), where they fail: CI must never
# pass by skipping them.


def _no_broker(reason: str) -> NoReturn:
    unavailable(f"no RabbitMQ broker: {reason}")


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQNode | ExternalRabbitMQ]:
    """The session's RabbitMQ broker, with ``.url`` and ``.ctl(...)``."""
    external = os.environ.get("HARE_TEST_AMQP_URL")
    if external:
        yield ExternalRabbitMQ(external, os.environ.get("HARE_TEST_RABBITMQCTL"))
        return
    try:
        node = RabbitMQNode()
        node.start()
    except RabbitMQUnavailable as exc:
        _no_broker(str(exc))
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def rabbitmq_url(rabbitmq: RabbitMQNode | ExternalRabbitMQ) -> str:
    """The AMQP URL of the session's RabbitMQ broker (password included)."""
    return rabbitmq.url


# --- A real nats-server (tests marked ``nats``) ---------------------------------
#
# ``nats_server`` is a private server on a free loopback port (tests/natsserver.py),
# started on first use and stopped at the end of the session; ``.url`` is its
# nats:// URL. A test that needs its own configuration (users, permissions, TLS,
# a cluster) uses ``natsserver.started(config=..., args=[...])`` instead. Without
# nats-server the tests skip, except in CI, where they fail.


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """The session's nats-server, with ``.url`` (nats://127.0.0.1:PORT) and ``.port``."""
    with nats_started() as server:
        yield server


@pytest.fixture(params=NATS_KINDS)
def nats_kind(request: pytest.FixtureRequest) -> NatsKind:
    """Which NATS server (the sandbox or nats-server), on which anyio backend."""
    kind: NatsKind = request.param
    return kind


@pytest.fixture
def nats_sandbox(nats_kind: NatsKind) -> Iterator[SandboxNatsBroker | None]:
    """The test's own sandbox NATS broker; None on nats-server."""
    if nats_kind.server != "sandbox":
        yield None
        return
    with SandboxNatsBroker() as broker:
        yield broker


@pytest.fixture
def nats_url(nats_sandbox: SandboxNatsBroker | None, request: pytest.FixtureRequest) -> str:
    """A fresh sandbox's URL, or the session's nats-server URL."""
    if nats_sandbox is not None:
        return nats_sandbox.url
    return str(request.getfixturevalue("nats_server").url)


@pytest.fixture(params=["asyncio", "trio-mockclock"])
def fast_clock_backend(request: pytest.FixtureRequest) -> object:
    """asyncio with real time, and trio with a mock clock that jumps over idle waits.

    Use it to override ``anyio_backend`` in modules whose tests wait on timers.
    """
    if request.param == "asyncio":
        return "asyncio"
    from trio.testing import MockClock

    return ("trio", {"clock": MockClock(autojump_threshold=0)})


# --- The closing line says how many tests ran against the real broker ---------

_real_broker: dict[str, int] = {"passed": 0, "failed": 0, "skipped": 0}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "rabbitmq" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _real_broker[report.outcome] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    chaos_report.write(terminalreporter)
    counts = _real_broker
    if any(counts.values()):
        terminalreporter.write_line(
            f"real RabbitMQ: {counts['passed']} passed, {counts['failed']} failed, "
            f"{counts['skipped']} skipped"
        )


# --- structlog's capture_logs() sees hare_py's events -----------------------------
#
# hare_py logs through stdlib loggers named hare_py.* (docs/logging.md), which
# structlog's capture_logs() does not see by itself. In tests the hare_py logger
# passes everything (debug too) and hands each record to an active capture.


class _ToStructlogCapture(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        chain = structlog.get_config()["processors"]
        if not isinstance(record.msg, dict) or not any(
            isinstance(p, structlog.testing.LogCapture) for p in chain
        ):
            return
        event: Any = dict(record.msg)
        try:
            for processor in chain:
                event = processor(None, record.levelname.lower(), event)
        except structlog.DropEvent:
            pass


@pytest.fixture(autouse=True)
def _hare_py_logs_to_capture_logs() -> Iterator[None]:
    logger = logging.getLogger("hare_py")
    handler, level = _ToStructlogCapture(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield
    logger.removeHandler(handler)
    logger.setLevel(level)
