"""RPC client tests run on the sandbox broker, on asyncio and on trio (mock clock)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hare_py.testing import SandboxBroker


@pytest.fixture
def anyio_backend(fast_clock_backend: object) -> object:
    return fast_clock_backend


@pytest.fixture
def broker() -> Iterator[SandboxBroker]:
    with SandboxBroker() as broker:
        yield broker
