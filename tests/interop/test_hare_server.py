"""Clients written with FastStream, aio-pika and pika calling a hare_py RPCServer.

The server answers on the default exchange to whatever ``reply_to`` the
request names (an exclusive queue, or RabbitMQ's direct reply-to pseudo-queue)
with the request's correlation id. A handler that raises is answered with an
empty-typed reply whose body is the error message and whose headers are
``x-error-type`` and ``x-error-message``. See docs/interop.md.
"""

from __future__ import annotations

import json
from typing import Any

import aio_pika
import anyio
import pytest
from aio_pika.patterns import JsonRPC
from faststream.rabbit import RabbitBroker

import hare_py

from .peers import Echo, Fib, aio_pika_client, fib, hare_server
from .pika_tutorial import FibonacciRpcClient

pytestmark = pytest.mark.anyio


# --- FastStream ---------------------------------------------------------------------


async def test_faststream_request_bytes(hare_url: str, rabbitmq_url: str, queue: str) -> None:
    """FastStream's request (direct reply-to) gets the bytes reply with its own correlation id."""
    async with (
        hare_server(Fib, hare_url, queue) as server,
        RabbitBroker(rabbitmq_url, logger=None) as broker,
    ):
        with anyio.fail_after(10):
            reply = await broker.request(b"10", queue, correlation_id="cid-10", timeout=5)
            assert reply.body == b"55"
            assert reply.correlation_id == "cid-10"
            assert reply.content_type is None
            # Without a content type FastStream tries JSON: b"55" decodes to 55.
            assert await reply.decode() == 55
            request = server.last_request
            assert request is not None
            assert request.correlation_id == "cid-10"
            assert request.headers == {}

            # Concurrent requests: FastStream runs them one at a time (a lock per broker).
            replies: dict[int, bytes] = {}

            async def one(n: int) -> None:
                replies[n] = (await broker.request(str(n).encode(), queue, timeout=5)).body

            async with anyio.create_task_group() as tg:
                for n in range(10):
                    tg.start_soon(one, n)
    assert replies == {n: str(fib(n)).encode() for n in range(10)}


async def test_faststream_request_json(hare_url: str, rabbitmq_url: str, queue: str) -> None:
    """A dict from FastStream goes as JSON through a JSON hare_py server and back intact."""
    value = {"name": "Zoë ✓", "ratio": 0.25, "none": None, "items": [1, [2, 3], {"x": True}]}
    async with (
        hare_server(Echo, hare_url, queue, codec=hare_py.JSON),
        RabbitBroker(rabbitmq_url, logger=None) as broker,
    ):
        with anyio.fail_after(10):
            reply = await broker.request(value, queue, timeout=5)
            assert reply.content_type == "application/json"
            assert await reply.decode() == value


async def test_faststream_request_error_reply(hare_url: str, rabbitmq_url: str, queue: str) -> None:
    """A raising hare_py handler: FastStream gets a plain message, the error in headers and body."""
    async with (
        hare_server(Fib, hare_url, queue),
        RabbitBroker(rabbitmq_url, logger=None) as broker,
    ):
        with anyio.fail_after(10):
            reply = await broker.request(b"-1", queue, timeout=5)
            assert reply.body == b"fib of a negative number: -1"
            assert reply.headers == {
                "x-error-type": "ValueError",
                "x-error-message": "fib of a negative number: -1",
            }
            # And it still serves.
            assert (await broker.request(b"12", queue, timeout=5)).body == b"144"


async def test_faststream_text_to_json_server_gets_an_error_reply(
    hare_url: str, rabbitmq_url: str, queue: str
) -> None:
    """A str (text/plain) FastStream request to a JSON hare_py server is answered at once
    with an error (the x-error headers), never reaching the handler."""
    async with (
        hare_server(Echo, hare_url, queue, codec=hare_py.JSON) as server,
        RabbitBroker(rabbitmq_url, logger=None) as broker,
    ):
        with anyio.fail_after(10):
            reply = await broker.request("not json", queue, timeout=5)
            assert reply.headers["x-error-type"] == "UndecodableRequest"
            assert "JSONDecodeError" in reply.headers["x-error-message"]
            assert await (await broker.request('"json"', queue, timeout=5)).decode() == "json"
    assert server.handled == 1


# --- aio-pika -----------------------------------------------------------------------


async def test_aio_pika_plain_client(hare_url: str, rabbitmq_url: str, queue: str) -> None:
    """aio-pika with a callback queue and a future per correlation id, bytes and JSON."""
    async with (
        hare_server(Fib, hare_url, queue),
        hare_server(Echo, hare_url, queue + ".json", codec=hare_py.JSON),
        aio_pika_client(rabbitmq_url) as client,
    ):
        with anyio.fail_after(10):
            sent, reply = await client.call(b"10", queue)
            assert (reply.body, reply.correlation_id) == (b"55", sent)

            value = {"a": [1, 2.5, None], "b": "ü"}
            _, reply = await client.call(
                json.dumps(value).encode(), queue + ".json", content_type="application/json"
            )
            assert reply.content_type == "application/json"
            assert json.loads(reply.body) == value

            replies: dict[int, bytes] = {}

            async def one(n: int) -> None:
                replies[n] = (await client.call(str(n).encode(), queue))[1].body

            async with anyio.create_task_group() as tg:
                for n in range(20):
                    tg.start_soon(one, n)
    assert replies == {n: str(fib(n)).encode() for n in range(20)}


async def test_aio_pika_plain_client_error_reply(
    hare_url: str, rabbitmq_url: str, queue: str
) -> None:
    """A raising hare_py handler: the aio-pika client sees the error headers and message body."""
    async with (
        hare_server(Echo, hare_url, queue),
        aio_pika_client(rabbitmq_url) as client,
    ):
        with anyio.fail_after(10):
            sent, reply = await client.call(b"boom", queue)
    assert reply.correlation_id == sent
    assert reply.body == b"'boom'"  # str(KeyError("boom"))
    assert reply.headers == {"x-error-type": "KeyError", "x-error-message": "'boom'"}
    assert reply.content_type == "application/vnd.hare-py.error; type=KeyError"
    assert reply.type is None


async def test_aio_pika_json_rpc_client_rejects_hare_replies(
    hare_url: str, rabbitmq_url: str, queue: str
) -> None:
    """aio-pika's JsonRPC client wants AMQP type "result" on a reply; hare_py sets none."""
    async with hare_server(Fib, hare_url, queue, codec=hare_py.JSON) as server:
        connection = await aio_pika.connect(rabbitmq_url)
        async with connection:
            rpc = await JsonRPC.create(await connection.channel())
            with (
                anyio.fail_after(10),
                pytest.raises(RuntimeError, match="Unknown message type None"),
            ):
                await rpc.call(queue, {"n": 10})
            await rpc.close()
    # The request itself was understood and answered: fib(n=10).
    assert server.handled == 1
    assert server.last_request is not None
    assert server.last_request.payload == {"n": 10}


# --- pika, the RabbitMQ tutorial ---------------------------------------------------


async def test_pika_tutorial_client(hare_url: str, rabbitmq_url: str, queue: str) -> None:
    """The tutorial's blocking FibonacciRpcClient (in a thread) gets fib(n) from hare_py."""

    def run() -> dict[int, int]:
        client = FibonacciRpcClient(rabbitmq_url, queue)
        try:
            return {n: client.call(n, timeout=5) for n in (0, 1, 10, 30)}
        finally:
            client.close()

    async with hare_server(Fib, hare_url, queue):
        with anyio.fail_after(30):
            results = await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
    assert results == {0: 0, 1: 1, 10: 55, 30: 832040}


async def test_pika_tutorial_client_error_reply(
    hare_url: str, rabbitmq_url: str, queue: str
) -> None:
    """A raising hare_py handler: the tutorial client's int() fails on the error text it gets."""
    seen: dict[str, Any] = {}

    def run() -> None:
        client = FibonacciRpcClient(rabbitmq_url, queue)
        try:
            with pytest.raises(ValueError, match="invalid literal for int"):
                client.call(-1, timeout=5)
            seen["body"] = client.response
            seen["headers"] = client.props.headers
            seen["after"] = client.call(7, timeout=5)
        finally:
            client.close()

    async with hare_server(Fib, hare_url, queue):
        with anyio.fail_after(30):
            await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
    assert seen == {
        "body": b"fib of a negative number: -1",
        "headers": {
            "x-error-type": "ValueError",
            "x-error-message": "fib of a negative number: -1",
        },
        "after": 13,
    }
