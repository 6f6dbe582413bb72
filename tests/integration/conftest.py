"""RPC clients and servers held against every broker: the sandbox and RabbitMQ.

``target`` gives a broker URL and the faults the tests need, done the way
each broker allows: the sandbox's backdoor, or rabbitmqctl for RabbitMQ. Both
are driven through the same methods, so one test proves both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from rabbitmq import with_amqp_backend

from hare_py.testing import SandboxBroker
from hare_py.transport import backend_for, parse_url
from hare_py.transport.base import ConnectOptions, Properties


@dataclass(frozen=True)
class Kind:
    broker: str
    anyio_backend: str
    amqp_backend: str | None = None  # the URL's backend=; None: the default for the loop


@pytest.fixture(
    params=[
        pytest.param(Kind("sandbox", "asyncio"), id="sandbox-asyncio"),
        pytest.param(Kind("sandbox", "trio"), id="sandbox-trio"),
        pytest.param(
            Kind("rabbitmq", "asyncio", "aiormq"),
            id="rabbitmq-asyncio-aiormq",
            marks=pytest.mark.rabbitmq,
        ),
        pytest.param(
            Kind("rabbitmq", "asyncio", "anyio"),
            id="rabbitmq-asyncio-anyio",
            marks=pytest.mark.rabbitmq,
        ),
        pytest.param(Kind("rabbitmq", "trio"), id="rabbitmq-trio", marks=pytest.mark.rabbitmq),
    ]
)
def kind(request: pytest.FixtureRequest) -> Kind:
    value: Kind = request.param
    return value


@pytest.fixture
def anyio_backend(kind: Kind) -> str:
    return kind.anyio_backend


@dataclass(frozen=True)
class Topology:
    """Exchanges (name -> (type, durable)), queues (name -> (durable, exclusive,
    auto_delete, arguments)) and bindings (exchange, queue, routing key, arguments)."""

    exchanges: dict[str, tuple[str, bool]]
    queues: dict[str, tuple[bool, bool, bool, dict[str, Any]]]
    bindings: list[tuple[str, str, str, dict[str, Any]]]


class Target:
    """A broker under test and the faults it can suffer."""

    url: str

    async def kill_connection(self, name: str) -> None:
        """Make the broker close the connection whose client-provided name is ``name``."""
        raise NotImplementedError

    async def delete_queue(self, queue: str) -> None:
        """Delete ``queue`` from outside, cancelling its consumers."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Take the broker down: connections drop, connects fail."""
        raise NotImplementedError

    async def start(self) -> None:
        """Bring the broker back."""
        raise NotImplementedError

    async def topology(self) -> Topology:
        """The broker's exchanges, queues and bindings, as the broker reports them."""
        raise NotImplementedError

    async def inject(self, routing_key: str, body: bytes, properties: Properties) -> None:
        """Publish a message through the default exchange from outside any client."""
        url = parse_url(self.url)
        async with backend_for(url).connect(url, ConnectOptions(name="injector")) as conn:
            channel = await conn.open_channel(publisher_confirms=True)
            await channel.basic_publish(body, routing_key=routing_key, properties=properties)


class SandboxTarget(Target):
    def __init__(self, broker: SandboxBroker) -> None:
        self.broker = broker
        self.url = broker.url

    async def topology(self) -> Topology:
        return Topology(
            {x.name: (x.type, x.durable) for x in self.broker.exchanges.values()},
            {
                q.name: (q.durable, q.exclusive, q.auto_delete, dict(q.arguments))
                for q in self.broker.queues.values()
            },
            [(b.exchange, b.queue, b.routing_key, dict(b.arguments)) for b in self.broker.bindings],
        )

    async def kill_connection(self, name: str) -> None:
        ids = [c.id for c in self.broker.connections.values() if c.name == name]
        assert ids, f"no connection named {name!r}"
        for conn_id in ids:
            self.broker.kill_connection(conn_id)

    async def delete_queue(self, queue: str) -> None:
        self.broker.delete_queue(queue)

    async def stop(self) -> None:
        self.broker.down()

    async def start(self) -> None:
        self.broker.up()


class RabbitTarget(Target):
    def __init__(self, node: Any, amqp_backend: str | None) -> None:
        self.node = node
        self.url = with_amqp_backend(node.url, amqp_backend)

    async def topology(self) -> Topology:
        def listing(*args: str) -> list[dict[str, Any]]:
            out = self.node.ctl(*args, "--formatter", "json", "--quiet")
            return list(json.loads(out or "[]"))

        def table(value: Any) -> dict[str, Any]:
            # rabbitmqctl's json renders AMQP tables as [[name, type, value], ...]
            if isinstance(value, list):
                return {item[0]: item[2] for item in value if len(item) == 3}
            return dict(value or {})

        exchanges = await anyio.to_thread.run_sync(
            listing, "list_exchanges", "name", "type", "durable"
        )
        queues = await anyio.to_thread.run_sync(
            listing, "list_queues", "name", "durable", "exclusive", "auto_delete", "arguments"
        )
        bindings = await anyio.to_thread.run_sync(
            listing, "list_bindings", "source_name", "destination_name", "routing_key", "arguments"
        )
        return Topology(
            {x["name"]: (x["type"], bool(x["durable"])) for x in exchanges},
            {
                q["name"]: (
                    bool(q["durable"]),
                    bool(q["exclusive"]),
                    bool(q["auto_delete"]),
                    table(q["arguments"]),
                )
                for q in queues
            },
            [
                (b["source_name"], b["destination_name"], b["routing_key"], table(b["arguments"]))
                for b in bindings
                if b["source_name"]  # the default exchange's implicit bindings
            ],
        )

    async def kill_connection(self, name: str) -> None:
        await anyio.to_thread.run_sync(self.node.close_connection, name)

    async def delete_queue(self, queue: str) -> None:
        await anyio.to_thread.run_sync(self.node.ctl, "delete_queue", queue)

    async def stop(self) -> None:
        await anyio.to_thread.run_sync(self.node.stop_app)

    async def start(self) -> None:
        await anyio.to_thread.run_sync(self.node.start_app)


@pytest.fixture
def target(kind: Kind, request: pytest.FixtureRequest) -> Iterator[Target]:
    if kind.broker == "sandbox":
        with SandboxBroker() as broker:
            yield SandboxTarget(broker)
    else:
        yield RabbitTarget(request.getfixturevalue("rabbitmq"), kind.amqp_backend)
