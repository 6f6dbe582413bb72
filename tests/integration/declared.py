"""Assert what a convention declared, on the sandbox and on RabbitMQ alike.

Exchanges and queues are checked with declares from a separate connection: a
passive declare proves the name exists, a declare with the expected flags and
arguments succeeds only if they are equivalent, and one with another type or
durability is refused (406), which proves the type. An exclusive queue owned
by another connection is refused with 405. Bindings cannot be declared
passively: the sandbox lists them (``broker.bindings``), RabbitMQ through
``rabbitmqctl list_bindings``. On the sandbox the exact state is compared too.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from hare_py import BrokerError
from hare_py.transport import backend_for, parse_url
from hare_py.transport.base import Channel, ConnectOptions, TransportConnection

from .conftest import SandboxTarget, Target

PRECONDITION_FAILED, RESOURCE_LOCKED = 406, 405


@dataclass(frozen=True)
class Queue:
    durable: bool = False
    exclusive: bool = False
    auto_delete: bool = False
    arguments: Mapping[str, Any] = field(default_factory=dict)


@asynccontextmanager
async def raw_connection(url: str, name: str = "inspector") -> AsyncIterator[TransportConnection]:
    parsed = parse_url(url)
    async with backend_for(parsed).connect(parsed, ConnectOptions(name=name)) as conn:
        yield conn


async def _refused(conn: TransportConnection, code: int, operation: Any) -> None:
    channel = await conn.open_channel()
    with pytest.raises(BrokerError) as info:
        await operation(channel)
    assert info.value.code == code, info.value


async def check_exchange(conn: TransportConnection, name: str, kind: str, durable: bool) -> None:
    channel = await conn.open_channel()
    await channel.exchange_declare(name, passive=True)
    await channel.exchange_declare(name, kind, durable=durable)  # type: ignore[arg-type]
    other = "fanout" if kind != "fanout" else "direct"

    async def other_type(ch: Channel) -> None:
        await ch.exchange_declare(name, other, durable=durable)  # type: ignore[arg-type]

    async def other_durability(ch: Channel) -> None:
        await ch.exchange_declare(name, kind, durable=not durable)  # type: ignore[arg-type]

    await _refused(conn, PRECONDITION_FAILED, other_type)
    await _refused(conn, PRECONDITION_FAILED, other_durability)


async def check_queue(conn: TransportConnection, name: str, queue: Queue) -> None:
    if queue.exclusive:  # owned by the client's connection: nobody else may touch it

        async def passive(ch: Channel) -> None:
            await ch.queue_declare(name, passive=True)

        await _refused(conn, RESOURCE_LOCKED, passive)
        return
    channel = await conn.open_channel()
    await channel.queue_declare(name, passive=True)
    await channel.queue_declare(
        name,
        durable=queue.durable,
        auto_delete=queue.auto_delete,
        arguments=dict(queue.arguments) or None,
    )

    async def other_durability(ch: Channel) -> None:
        await ch.queue_declare(
            name,
            durable=not queue.durable,
            auto_delete=queue.auto_delete,
            arguments=dict(queue.arguments) or None,
        )

    await _refused(conn, PRECONDITION_FAILED, other_durability)


async def bindings_of(target: Target, queues: set[str]) -> set[tuple[str, str, str, str]]:
    """(exchange, queue, routing key, arguments as sorted JSON) of every binding to ``queues``."""
    if isinstance(target, SandboxTarget):
        rows = [
            (b.exchange, b.queue, b.routing_key, dict(b.arguments)) for b in target.broker.bindings
        ]
    else:
        node: Any = target.node  # type: ignore[attr-defined]
        out = await anyio.to_thread.run_sync(
            lambda: node.ctl(
                "list_bindings",
                "source_name",
                "destination_name",
                "routing_key",
                "arguments",
                "--formatter",
                "json",
                "--quiet",
            )
        )
        rows = [
            (b["source_name"], b["destination_name"], b["routing_key"], _table(b["arguments"]))
            for b in json.loads(out or "[]")
        ]
    return {
        (exchange, queue, key, json.dumps(args, sort_keys=True))
        for exchange, queue, key, args in rows
        if exchange and queue in queues  # "" : the default exchange's implicit bindings
    }


def _table(value: Any) -> dict[str, Any]:
    # rabbitmqctl's JSON renders an AMQP table as a list of [name, type, value]
    # (or as an object, depending on the version).
    if isinstance(value, list):
        return {item[0]: item[-1] for item in value}
    return dict(value or {})


def binding(exchange: str, queue: str, key: str, **arguments: Any) -> tuple[str, str, str, str]:
    return (exchange, queue, key, json.dumps(arguments, sort_keys=True))


async def check_topology(
    target: Target,
    *,
    exchanges: Mapping[str, tuple[str, bool]],
    queues: Mapping[str, Queue],
    bindings: set[tuple[str, str, str, str]],
) -> None:
    """Exactly these exchanges (name -> (type, durable)), queues and bindings to them."""
    if isinstance(target, SandboxTarget):
        broker = target.broker
        for name, (kind, durable) in exchanges.items():
            info = broker.exchanges[name]
            assert (info.type, info.durable) == (kind, durable), info
        for name, queue in queues.items():
            details = broker.queues[name]
            assert (details.durable, details.exclusive, details.auto_delete) == (
                queue.durable,
                queue.exclusive,
                queue.auto_delete,
            ), details
            assert dict(details.arguments) == dict(queue.arguments), details
    async with raw_connection(target.url) as conn:
        for name, (kind, durable) in exchanges.items():
            await check_exchange(conn, name, kind, durable)
        for name, queue in queues.items():
            await check_queue(conn, name, queue)
    assert await bindings_of(target, set(queues)) == bindings


async def delete(
    target: Target, *, queues: tuple[str, ...] = (), exchanges: tuple[str, ...] = ()
) -> None:
    """Remove what a test declared that outlives it (durable names on a shared broker)."""
    async with raw_connection(target.url, "cleanup") as conn:
        channel = await conn.open_channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
