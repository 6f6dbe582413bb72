"""AMQP 1.0 tests: every test here is marked ``amqp10``, and runs on asyncio and trio.

Peers, all on 127.0.0.1 and started by the test set-up:

- ``proton_broker``: qpid-proton's example broker (dynamic nodes, no
  unroutable signal: it queues anything), for the session;
- ``listen_url``: a free port for a hare_py server that listens (peer to peer);
- ``rabbitmq10_url``: the session's private RabbitMQ with ``rabbitmq_amqp1_0``
  (tests that use it are marked ``rabbitmq`` too).

``peer`` runs a test on each of the three: its ``client_url``, its
``server_url`` (the listening one for peer to peer) and the ``base`` of
the addresses there (``/queue/`` on RabbitMQ).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .peers import ProtonBroker, free_port, proton_broker

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder ``amqp10`` (before ``-m`` selects)."""
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.amqp10)


@pytest.fixture(scope="session")
def proton_broker_peer() -> Iterator[ProtonBroker]:
    """qpid-proton's example broker, for the session."""
    with proton_broker() as broker:
        yield broker


@pytest.fixture
def listen_url() -> str:
    """A free loopback port for a listening hare_py server (dial it without ``listen=1``)."""
    return f"amqp://127.0.0.1:{free_port()}/?protocol=1.0"


def listening(url: str) -> str:
    return f"{url}&listen=1"


@pytest.fixture(scope="session")
def rabbitmq10_url(rabbitmq_url: str) -> str:
    """The session's RabbitMQ, spoken to in AMQP 1.0 (same port, PLAIN as guest)."""
    return f"{rabbitmq_url.rstrip('/')}/?protocol=1.0"


@dataclass(frozen=True)
class Peer:
    name: str
    client_url: str
    server_url: str
    base: str

    @property
    def dynamic(self) -> bool:
        return self.name != "rabbitmq"


@pytest.fixture(
    params=["proton-broker", "listener", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
)
def peer(request: pytest.FixtureRequest) -> Peer:
    """Each AMQP 1.0 peer in turn: proton's broker, a listening server, RabbitMQ 3.x."""
    name = request.param
    if name == "proton-broker":
        url = request.getfixturevalue("proton_broker_peer").url
        return Peer(name, url, url, "")
    if name == "listener":
        url = request.getfixturevalue("listen_url")
        return Peer(name, url, listening(url), "")
    url = request.getfixturevalue("rabbitmq10_url")
    return Peer(name, url, url, "/queue/")
