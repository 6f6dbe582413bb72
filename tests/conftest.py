"""Shared fixtures: every async test runs on asyncio and on trio unless pinned."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test on both anyio backends."""
    return str(request.param)
