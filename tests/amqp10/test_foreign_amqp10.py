"""hare_py and peers written on python-qpid-proton's own reactor API, calling each other."""

from __future__ import annotations

import secrets
import uuid
from functools import partial
from typing import Any

import anyio
import proton
import pytest

from hare_py import Caller, Reply, Request, RPCClient, RPCServer
from hare_py.conventions import amqp10

from .conftest import Peer
from .peers import ForeignServer, foreign_call, free_port

pytestmark = pytest.mark.anyio


class Echo(RPCServer[None]):
    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        if request.payload == b"boom":
            raise ValueError("boom")
        return Reply(b"echo:" + request.payload, state)


TYPED_IDS: list[Any] = [
    "a-string-id",
    proton.ulong(2**40 + 7),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    b"\x00binary\xff",
]


async def test_foreign_client_gets_its_correlation_ids_back_typed(peer: Peer) -> None:
    """A proton reactor client's string, ulong, uuid and binary correlation-ids come back
    from a hare_py server with their type unchanged."""
    reply = None if peer.dynamic else f"/queue/foreign-reply-{secrets.token_hex(8)}"
    requests = [(cid, b"%d" % i) for i, cid in enumerate(TYPED_IDS)]
    async with Echo.start(peer.server_url, queue="typed", convention=amqp10(peer.base)) as server:
        with anyio.fail_after(20):
            while not server.connected:
                await anyio.sleep(0.01)
            call = partial(
                foreign_call, peer.client_url, peer.base + "typed", requests, reply=reply
            )
            replies = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
    assert len(replies) == len(TYPED_IDS)
    for i, cid in enumerate(TYPED_IDS):
        kind = int if isinstance(cid, int) else type(cid)  # proton reads a ulong as an int
        [key] = [k for k in replies if k == cid and type(k) is kind]
        assert replies[key] == (b"echo:%d" % i, None)


async def test_foreign_client_sees_a_hare_error_reply(peer: Peer) -> None:
    """A proton reactor client can tell a hare_py error reply by its content type."""
    reply = None if peer.dynamic else f"/queue/foreign-reply-{secrets.token_hex(8)}"
    async with Echo.start(peer.server_url, queue="ferr", convention=amqp10(peer.base)) as server:
        with anyio.fail_after(20):
            while not server.connected:
                await anyio.sleep(0.01)
            call = partial(
                foreign_call, peer.client_url, peer.base + "ferr", [("e1", b"boom")], reply=reply
            )
            replies = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
    assert replies == {"e1": (b"boom", "application/vnd.hare-py.error; type=ValueError")}


@pytest.mark.parametrize("where", ["proton-broker", "listening"])
async def test_hare_client_calls_a_foreign_server(
    where: str, proton_broker_peer: Any, anyio_backend: str
) -> None:
    """A hare_py client calls a server written on proton's reactor, through proton's broker
    or peer to peer (the foreign server listens)."""
    if where == "listening":
        port = free_port()
        url = f"amqp://127.0.0.1:{port}/?protocol=1.0"
        foreign = ForeignServer(url, "fsvc", listen=f"127.0.0.1:{port}")
    else:
        url = proton_broker_peer.url
        foreign = ForeignServer(url, f"fsvc-{anyio_backend}")
    address = "fsvc" if where == "listening" else f"fsvc-{anyio_backend}"
    with foreign:
        async with RPCClient.start(url, convention=amqp10(), timeout=10) as client:
            with anyio.fail_after(15):
                assert await client.request(b"hi", address) == b"foreign:hi"
                assert await client.request(b"again", address) == b"foreign:again"
    assert len(foreign.handler.seen) == 2
    assert all(isinstance(cid, str) for cid in foreign.handler.seen)


@pytest.mark.rabbitmq
async def test_hare_client_calls_a_foreign_server_through_rabbitmq(
    rabbitmq10_url: str, anyio_backend: str
) -> None:
    """A hare_py client calls a proton reactor server through RabbitMQ 3.x's /queue/ addresses."""
    address = f"/queue/fsvc-{anyio_backend}-{secrets.token_hex(4)}"
    with ForeignServer(rabbitmq10_url, address):
        async with RPCClient.start(rabbitmq10_url, convention=amqp10(), timeout=10) as client:
            with anyio.fail_after(15):
                assert await client.request(b"hi", address) == b"foreign:hi"
