"""Across protocols through RabbitMQ 3.x: hare_py on AMQP 1.0 and on AMQP 0-9-1, both ways."""

from __future__ import annotations

import secrets
from typing import Any

import anyio
import pytest

from hare_py import Caller, RemoteError, Reply, Request, RPCClient, RPCServer
from hare_py.conventions import amqp10, hare

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq]


class Echo(RPCServer[None]):
    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        if request.payload == b"boom":
            raise LookupError("no such thing")
        return Reply(b"echo:" + request.payload, state)


async def test_amqp10_client_calls_amqp091_server(rabbitmq_url: str, rabbitmq10_url: str) -> None:
    """A 1.0 client reaches a 0-9-1 server's queue at /queue/NAME; the reply and an error
    reply (recognised by its content type: RabbitMQ drops the 0-9-1 headers) come back."""
    queue = f"x091-{secrets.token_hex(4)}"
    async with Echo.start(rabbitmq_url, queue=queue, convention=hare()) as server:
        with anyio.fail_after(15):
            while not server.connected:
                await anyio.sleep(0.01)
        async with RPCClient.start(rabbitmq10_url, convention=amqp10("/queue/"), timeout=10) as c:
            with anyio.fail_after(15):
                assert await c.request(b"hi", queue) == b"echo:hi"
                with pytest.raises(RemoteError) as caught:
                    await c.request(b"boom", queue)
    assert caught.value.type == "LookupError"
    assert caught.value.message == "no such thing"


async def test_amqp091_client_calls_amqp10_server(rabbitmq_url: str, rabbitmq10_url: str) -> None:
    """A 0-9-1 client's amq.gen- reply queue is answered by a 1.0 server (at /amq/queue/),
    and its error reply is recognised by its content type (1.0 properties arrive as a blob)."""
    queue = f"x10-{secrets.token_hex(4)}"
    async with Echo.start(rabbitmq10_url, queue=queue, convention=amqp10("/queue/")) as server:
        with anyio.fail_after(15):
            while not server.connected:
                await anyio.sleep(0.01)
        async with RPCClient.start(rabbitmq_url, convention=hare(), timeout=10) as client:
            with anyio.fail_after(15):
                assert await client.request(b"hi", queue) == b"echo:hi"
                assert client.reply_queue is not None
                assert client.reply_queue.startswith("amq.gen-")
                with pytest.raises(RemoteError) as caught:
                    await client.request(b"boom", queue)
                assert await client.request(b"after", queue) == b"echo:after"
    assert caught.value.type == "LookupError"
    assert caught.value.message == "no such thing"
