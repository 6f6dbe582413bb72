"""AMQP 1.0 chaos: every test here is marked ``chaos`` and ``amqp10``, on asyncio and trio."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder ``chaos`` and ``amqp10`` (before ``-m`` selects)."""
    for item in items:
        if "/chaos_amqp10/" in str(item.path):
            item.add_marker(pytest.mark.chaos)
            item.add_marker(pytest.mark.amqp10)
