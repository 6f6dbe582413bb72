"""A bare echo responder on the transport protocol, for testing clients.

It is deliberately not hare_py's RPCServer: client tests should not depend on
the server they would otherwise be testing too.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from hare_py.transport import backend_for, parse_url
from hare_py.transport.base import ConnectOptions, Delivery, Properties

Handler = Callable[[Delivery], Awaitable[bytes | None]]


async def echo(delivery: Delivery) -> bytes | None:
    return delivery.body


@dataclass
class EchoServer:
    queue: str
    received: list[Delivery] = field(default_factory=list)
    replied: int = 0


@asynccontextmanager
async def echo_server(
    url: str,
    *,
    exchange: str = "",
    exchange_type: str = "direct",
    routing_keys: tuple[str, ...] = ("echo",),
    handler: Handler = echo,
) -> AsyncIterator[EchoServer]:
    """Answer every request on ``routing_keys`` with ``handler(delivery)`` (None: no answer).

    Requests are handled concurrently, so a slow one does not hold up the rest.
    """
    parsed = parse_url(url)
    async with backend_for(parsed).connect(parsed, ConnectOptions(name="echo-server")) as conn:
        channel = await conn.open_channel()
        if exchange:
            await channel.exchange_declare(exchange, exchange_type)  # type: ignore[arg-type]
            queue = (await channel.queue_declare("", exclusive=True)).name
            for key in routing_keys:
                await channel.queue_bind(queue, exchange, key)
        else:
            (key,) = routing_keys
            queue = (await channel.queue_declare(key, exclusive=True, auto_delete=True)).name
        server = EchoServer(queue)
        send, recv = anyio.create_memory_object_stream[Delivery](math.inf)

        async def answer(delivery: Delivery) -> None:
            body = await handler(delivery)
            if body is None or not delivery.properties.reply_to:
                return
            await channel.basic_publish(
                body,
                routing_key=delivery.properties.reply_to,
                properties=Properties(
                    correlation_id=delivery.properties.correlation_id,
                    headers=delivery.properties.headers,
                    content_type=delivery.properties.content_type,
                ),
            )
            server.replied += 1

        async def serve() -> None:
            async with recv, anyio.create_task_group() as tg:
                async for delivery in recv:
                    server.received.append(delivery)
                    tg.start_soon(answer, delivery)

        def on_delivery(delivery: Delivery) -> None:
            send.send_nowait(delivery)

        await channel.basic_consume(queue, on_delivery, no_ack=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            try:
                yield server
            finally:
                send.close()
                tg.cancel_scope.cancel()


def raw(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else str(payload).encode()
