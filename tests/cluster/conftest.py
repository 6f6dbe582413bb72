"""The cluster suite: a private 3-node RabbitMQ cluster on loopback, for the session.

Every test here is marked ``cluster`` and ``rabbitmq``. The cluster starts on
first use (about 20 s on 2 cores) and stops at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from rabbitmq import RabbitMQCluster, RabbitMQUnavailable, unavailable


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder ``cluster`` and ``rabbitmq`` (before ``-m`` selects)."""
    for item in items:
        if "/cluster/" in str(item.path):
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.rabbitmq)


@pytest.fixture(scope="session")
def cluster() -> Iterator[RabbitMQCluster]:
    """Three RabbitMQ nodes joined in one cluster, each with its own ports and data."""
    nodes = RabbitMQCluster(3)
    try:
        nodes.start()
    except RabbitMQUnavailable as exc:
        unavailable(f"no RabbitMQ cluster: {exc}")
    try:
        yield nodes
    finally:
        nodes.stop()
