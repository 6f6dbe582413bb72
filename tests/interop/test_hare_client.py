"""A hare_py RPCClient calling servers written with FastStream, aio-pika and pika.

Each server answers on the default exchange to the request's ``reply_to``
(the client's exclusive, server-named reply queue) with the request's
correlation id, which is all a hare_py client needs. See docs/interop.md.
"""

from __future__ import annotations

import json
from typing import Any

import aio_pika
import anyio
import pytest
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.patterns import JsonRPC
from faststream.rabbit import RabbitBroker, RabbitQueue

import hare_py
from hare_py import RemoteError, RequestTimeout, RPCClient

from .conftest import PikaServer
from .peers import JsonRPCClient, aio_pika_server, fib

pytestmark = pytest.mark.anyio


# --- FastStream ---------------------------------------------------------------------


async def test_faststream_subscriber_answers_bytes_and_json_clients(
    hare_url: str, rabbitmq_url: str, queue: str
) -> None:
    """A FastStream subscriber's return value reaches both a bytes and a JSON hare_py client."""
    broker = RabbitBroker(rabbitmq_url, logger=None)
    seen: list[Any] = []

    @broker.subscriber(RabbitQueue(queue, auto_delete=True))
    async def handle(body: Any) -> Any:
        seen.append(body)
        return {"fib": fib(body["n"])} if isinstance(body, dict) else fib(body)

    async with (
        broker,
        RPCClient.start(hare_url) as raw,
        RPCClient.start(hare_url, codec=hare_py.JSON) as typed,
    ):
        await broker.start()
        with anyio.fail_after(10):
            # No content type: FastStream tries JSON, so b"10" is the int 10.
            assert await raw.request(b"10", queue) == b"55"
            assert await typed.request({"n": 10}, queue) == {"fib": 55}
            assert await typed.request(20, queue) == 6765
    assert seen == [10, {"n": 10}, 20]


async def test_faststream_json_round_trip(hare_url: str, rabbitmq_url: str, queue: str) -> None:
    """Nested JSON (unicode, floats, null, lists) survives hare_py -> FastStream -> hare_py."""
    broker = RabbitBroker(rabbitmq_url, logger=None)

    @broker.subscriber(RabbitQueue(queue, auto_delete=True))
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        return {"got": body, "keys": sorted(body)}

    value = {"name": "Zoë ✓", "ratio": 0.25, "none": None, "items": [1, [2, 3], {"x": True}]}
    async with broker, RPCClient.start(hare_url, codec=hare_py.JSON) as client:
        await broker.start()
        with anyio.fail_after(10):
            reply = await client.request(value, queue)
    assert reply == {"got": value, "keys": ["items", "name", "none", "ratio"]}


async def test_faststream_text_reply(hare_url: str, rabbitmq_url: str, queue: str) -> None:
    """A str return value comes back as text/plain: bytes clients get it, JSON clients cannot."""
    broker = RabbitBroker(rabbitmq_url, logger=None)

    @broker.subscriber(RabbitQueue(queue, auto_delete=True))
    async def handle(body: str) -> str:
        return body.upper()

    async with (
        broker,
        RPCClient.start(hare_url) as raw,
        RPCClient.start(hare_url, codec=hare_py.JSON) as typed,
    ):
        await broker.start()
        with anyio.fail_after(10):
            assert await raw.request(b"hello", queue) == b"HELLO"
            # JSON out ("hello" in quotes), text back (HELLO, no quotes): not JSON.
            with pytest.raises(RemoteError) as info:
                await typed.request("hello", queue)
    assert info.value.type == "UndecodableReply"


async def test_faststream_handler_error_sends_no_reply(
    hare_url: str, rabbitmq_url: str, queue: str
) -> None:
    """A FastStream handler that raises answers nothing: the hare_py caller gets RequestTimeout."""
    broker = RabbitBroker(rabbitmq_url, logger=None)
    calls = 0

    @broker.subscriber(RabbitQueue(queue, auto_delete=True))
    async def handle(body: Any) -> Any:
        nonlocal calls
        calls += 1
        raise ValueError("no")

    async with broker, RPCClient.start(hare_url) as client:
        await broker.start()
        with anyio.fail_after(10):
            with pytest.raises(RequestTimeout):
                await client.request(b"1", queue, timeout=0.5)
            assert client.pending == 0
    assert calls == 1  # rejected without requeue: not redelivered


# --- aio-pika -----------------------------------------------------------------------


def _fib_reply(message: AbstractIncomingMessage) -> aio_pika.Message:
    if message.content_type == "application/json":
        return aio_pika.Message(
            json.dumps(fib(json.loads(message.body))).encode(), content_type="application/json"
        )
    return aio_pika.Message(str(fib(int(message.body))).encode())


async def test_aio_pika_plain_server(hare_url: str, rabbitmq_url: str, queue: str) -> None:
    """A plain aio-pika consumer that replies to reply_to with the correlation id serves hare_py."""
    async with (
        aio_pika_server(rabbitmq_url, queue, _fib_reply),
        RPCClient.start(hare_url) as raw,
        RPCClient.start(hare_url, codec=hare_py.JSON) as typed,
    ):
        with anyio.fail_after(10):
            assert await raw.request(b"10", queue) == b"55"
            assert await typed.request(10, queue) == 55
            results: dict[int, bytes] = {}

            async def one(n: int) -> None:
                results[n] = await raw.request(str(n).encode(), queue)

            async with anyio.create_task_group() as tg:
                for n in range(20):
                    tg.start_soon(one, n)
    assert results == {n: str(fib(n)).encode() for n in range(20)}


async def test_aio_pika_json_rpc_server(hare_url: str, rabbitmq_url: str, queue: str) -> None:
    """aio-pika's JsonRPC server takes a JSON object of kwargs; its errors arrive as values."""

    async def fib_method(*, n: int) -> int:
        if n < 0:
            raise ValueError(f"negative: {n}")
        return fib(n)

    connection = await aio_pika.connect(rabbitmq_url)
    async with connection, RPCClient.start(hare_url, codec=hare_py.JSON) as client:
        rpc = await JsonRPC.create(await connection.channel())
        await rpc.register(queue, fib_method, auto_delete=True)
        with anyio.fail_after(10):
            assert await client.request({"n": 10}, queue) == 55
            # The error reply (AMQP type "error") carries no x-error-* headers:
            # hare_py hands its JSON body back as the value.
            error = await client.request({"n": -1}, queue)
            # kwargs that do not fit the function fail the same way.
            bad = await client.request({"m": 1}, queue)
            async with JsonRPCClient.start(hare_url, codec=hare_py.JSON) as wrapped:
                assert await wrapped.request({"n": 12}, queue) == 144
                with pytest.raises(RemoteError) as info:
                    await wrapped.request({"n": -2}, queue)
        await rpc.close()
    assert error == {
        "error": {
            "type": "ValueError",
            "message": "ValueError('negative: -1')",
            "args": ["negative: -1"],
        }
    }
    assert bad["error"]["type"] == "TypeError"
    assert (info.value.type, info.value.message) == ("ValueError", "ValueError('negative: -2')")


# --- pika, the RabbitMQ tutorial ---------------------------------------------------


async def test_pika_tutorial_server(hare_url: str, pika_fib_server: PikaServer) -> None:
    """The tutorial's pika server answers hare_py callers, each reply to its own caller."""
    queue = pika_fib_server.queue
    async with (
        RPCClient.start(hare_url) as raw,
        RPCClient.start(hare_url, codec=hare_py.JSON) as typed,
    ):
        with anyio.fail_after(20):
            assert await raw.request(b"10", queue) == b"55"
            # The JSON text of 10 is b"10", which int() reads; the reply b"55" is JSON too.
            assert await typed.request(10, queue) == 55
            results: dict[int, int] = {}

            async def one(n: int) -> None:
                results[n] = await typed.request(n, queue)

            async with anyio.create_task_group() as tg:
                for n in range(15):
                    tg.start_soon(one, n)
    assert results == {n: fib(n) for n in range(15)}


async def test_pika_tutorial_server_poison_request_expires(
    hare_url: str, rabbitmq_url: str, pika_fib_server: PikaServer
) -> None:
    """A body int() rejects kills the tutorial's server; the request's TTL then drops it."""
    queue = pika_fib_server.queue
    async with RPCClient.start(hare_url) as client:
        with anyio.fail_after(20):
            with pytest.raises(RequestTimeout):
                await client.request(b"ten", queue, timeout=1.0)
            while pika_fib_server.process.poll() is None:
                await anyio.sleep(0.05)
            # Unacked, so requeued when the server died; expired, so then dropped.
            connection = await aio_pika.connect(rabbitmq_url)
            async with connection:
                channel = await connection.channel()
                while True:
                    declared = await channel.declare_queue(queue, passive=True)
                    if declared.declaration_result.message_count == 0:
                        break
                    await anyio.sleep(0.1)
    assert pika_fib_server.process.returncode == 1
