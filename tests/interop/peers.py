"""The hare_py servers and the plainly written aio-pika peers the interop tests use."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aio_pika
import anyio
from aio_pika.abc import AbstractIncomingMessage

from hare_py import Caller, Codec, RemoteError, Reply, Request, Response, RPCClient, RPCServer

ServerT = TypeVar("ServerT", bound=RPCServer[Any])


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class Fib(RPCServer[int]):
    """fib(n), where n is the body's digits (bytes codec) or a JSON int or ``{"n": int}``.

    A negative n raises ValueError, so the server sends an error reply.
    """

    last_request: Request | None = None

    async def init(self, arg: Any) -> int:
        return 0

    async def handle_request(self, request: Request, caller: Caller, served: int) -> Any:
        self.last_request = request
        payload = request.payload
        if isinstance(payload, bytes):
            n = int(payload)
        elif isinstance(payload, dict):
            n = payload["n"]
        else:
            n = payload
        if n < 0:
            raise ValueError(f"fib of a negative number: {n}")
        value = fib(n)
        return Reply(str(value).encode() if isinstance(payload, bytes) else value, served + 1)


class Echo(RPCServer[None]):
    """Echoes the payload; b'boom' or {"boom": ...} raises KeyError."""

    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        if request.payload == b"boom" or (
            isinstance(request.payload, dict) and "boom" in request.payload
        ):
            raise KeyError("boom")
        return Reply(request.payload, state)


@asynccontextmanager
async def hare_server(
    cls: type[ServerT], url: str, queue: str, codec: Codec | None = None
) -> AsyncIterator[ServerT]:
    """A hare_py server consuming ``queue`` by the time the block starts."""
    async with cls.start(url, queue=queue, auto_delete=True, codec=codec) as server:
        with anyio.fail_after(10):
            while not server.connected:
                await anyio.sleep(0.01)
        yield server


class JsonRPCClient(RPCClient[None]):
    """For aio-pika's JsonRPC servers: their error replies become RemoteError (docs/interop.md)."""

    async def handle_response(self, response: Response, caller: Caller, state: None) -> Any:
        body = response.payload
        if isinstance(body, dict) and body.keys() == {"error"} and isinstance(body["error"], dict):
            error = body["error"]
            return Reply(RemoteError(str(error.get("type")), str(error.get("message"))), state)
        return await super().handle_response(response, caller, state)


# --- aio-pika, written plainly (no patterns) ---------------------------------------


@asynccontextmanager
async def aio_pika_server(
    url: str, queue: str, handler: Callable[[AbstractIncomingMessage], aio_pika.Message]
) -> AsyncIterator[None]:
    """Consume ``queue``; publish ``handler(message)`` to ``reply_to``, same correlation id."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, auto_delete=True)

        async def on_message(message: AbstractIncomingMessage) -> None:
            async with message.process():
                reply = handler(message)
                reply.correlation_id = message.correlation_id
                await channel.default_exchange.publish(reply, routing_key=message.reply_to or "")

        await declared.consume(on_message)
        yield
    finally:
        await connection.close()


class AioPikaClient:
    """The classic RPC client: an exclusive callback queue and one future per correlation id."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel) -> None:
        self.channel = channel
        self.futures: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}
        self.callback_queue: aio_pika.abc.AbstractQueue | None = None

    async def setup(self) -> None:
        self.callback_queue = await self.channel.declare_queue(exclusive=True)
        await self.callback_queue.consume(self.on_response, no_ack=True)

    async def on_response(self, message: AbstractIncomingMessage) -> None:
        future = self.futures.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message)

    async def call(
        self, body: bytes, queue: str, content_type: str | None = None
    ) -> tuple[str, AbstractIncomingMessage]:
        """Send ``body`` to ``queue``; the correlation id sent and the reply message."""
        assert self.callback_queue is not None
        correlation_id = str(uuid.uuid4())
        future: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()
        self.futures[correlation_id] = future
        await self.channel.default_exchange.publish(
            aio_pika.Message(
                body,
                content_type=content_type,
                correlation_id=correlation_id,
                reply_to=self.callback_queue.name,
            ),
            routing_key=queue,
        )
        return correlation_id, await future


@asynccontextmanager
async def aio_pika_client(url: str) -> AsyncIterator[AioPikaClient]:
    connection = await aio_pika.connect(url)
    try:
        client = AioPikaClient(await connection.channel())
        await client.setup()
        yield client
    finally:
        await connection.close()
