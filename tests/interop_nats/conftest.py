"""Interop on NATS: hare_py against nats-py, a client hare_py did not write.

Every test talks to the session's private nats-server (127.0.0.1 only) and
is marked ``nats``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder ``nats`` (before ``-m`` selects)."""
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.nats)


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: nats-py, the peer, runs in this process and is asyncio-only."""
    return "asyncio"
