"""RPCClient and RPCServer over AMQP 1.0, on every peer: proton's broker, peer to peer, RabbitMQ."""

from __future__ import annotations

import secrets
from typing import Any

import anyio
import pytest

from hare_py import (
    Caller,
    ConnectionLost,
    NoReply,
    RemoteError,
    Reply,
    Request,
    RequestTimeout,
    RPCClient,
    RPCServer,
    Unroutable,
)
from hare_py.conventions import amqp10
from hare_py.errors import UnsendableMessage

from .conftest import Peer, listening

pytestmark = pytest.mark.anyio


class Echo(RPCServer[None]):
    """Echoes, raises for b"boom", holds b"hold" until released."""

    async def init(self, arg: Any) -> None:
        self.held: list[Caller] = []

    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        if request.payload == b"boom":
            raise KeyError("boom")
        if request.payload == b"hold":
            self.held.append(caller)
            return NoReply(state)
        return Reply(b"echo:" + request.payload, state)

    async def handle_call(self, message: Any, caller: Caller, state: None) -> Any:
        held, self.held = self.held, []
        return Reply(held, state)


async def test_round_trip(peer: Peer) -> None:
    """A request reaches the server at base + routing key and its reply comes back."""
    convention = amqp10(peer.base)
    async with (
        Echo.start(peer.server_url, queue="echo", convention=convention),
        RPCClient.start(peer.client_url, convention=convention, timeout=10) as client,
    ):
        with anyio.fail_after(15):
            results = [await client.request(b"%d" % i, "echo") for i in range(3)]
            assert results == [b"echo:0", b"echo:1", b"echo:2"]
            reply = client.reply_queue
            assert reply is not None
            if peer.dynamic:
                assert not reply.startswith("/queue/")
            else:
                assert reply.startswith("/queue/hare-reply-")


async def test_concurrent_callers_get_their_own_replies(peer: Peer) -> None:
    """32 concurrent callers each get the reply to their own request."""
    convention = amqp10(peer.base)
    async with (
        Echo.start(peer.server_url, queue="many", convention=convention, prefetch=8),
        RPCClient.start(peer.client_url, convention=convention, timeout=10) as client,
    ):
        got: dict[int, bytes] = {}

        async def call(i: int) -> None:
            got[i] = await client.request(b"%d" % i, "many")

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(32):
                    tg.start_soon(call, i)
        assert got == {i: b"echo:%d" % i for i in range(32)}


async def test_error_reply_is_remote_error(peer: Peer) -> None:
    """A handler that raises reaches the caller as RemoteError with its type and message."""
    convention = amqp10(peer.base)
    async with (
        Echo.start(peer.server_url, queue="err", convention=convention),
        RPCClient.start(peer.client_url, convention=convention, timeout=10) as client,
    ):
        with anyio.fail_after(15), pytest.raises(RemoteError) as caught:
            await client.request(b"boom", "err")
    assert caught.value.type == "KeyError"
    assert "boom" in caught.value.message


async def test_unserved_address_is_unroutable_peer_to_peer(listen_url: str) -> None:
    """A listener refuses a link to an address it does not serve: the caller fails fast."""
    async with (
        Echo.start(listening(listen_url), queue="here", convention=amqp10()),
        RPCClient.start(listen_url, convention=amqp10(), timeout=30) as client,
    ):
        with anyio.fail_after(10):
            assert await client.request(b"x", "here") == b"echo:x"
            with pytest.raises(Unroutable) as caught:
                await client.request(b"x", "elsewhere")
    assert caught.value.code == 404
    assert caught.value.routing_key == "elsewhere"


async def test_request_in_flight_fails_when_the_server_goes(listen_url: str) -> None:
    """A request in flight when the listening server stops fails at once with ConnectionLost,
    and calls go through again once a server is back."""
    async with RPCClient.start(listen_url, convention=amqp10(), timeout=30) as client:
        async with Echo.start(listening(listen_url), queue="gone", convention=amqp10()) as server:
            with anyio.fail_after(10):
                while not client.connected:
                    await anyio.sleep(0.01)
                assert await client.request(b"up", "gone") == b"echo:up"
            failed: list[BaseException] = []

            async def call() -> None:
                try:
                    await client.request(b"hold", "gone")
                except ConnectionLost as exc:
                    failed.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                with anyio.fail_after(10):
                    while server.pending == 0:
                        await anyio.sleep(0.01)
                    await server.stop("shutdown")
                    while not failed:
                        await anyio.sleep(0.01)
        assert isinstance(failed[0], ConnectionLost)
        # A new server on the same port: the client's supervised connection comes back.
        async with Echo.start(listening(listen_url), queue="gone", convention=amqp10()):
            with anyio.fail_after(20):
                while True:
                    try:
                        assert await client.request(b"back", "gone", timeout=2) == b"echo:back"
                        break
                    except (ConnectionLost, Unroutable, RequestTimeout):
                        await anyio.sleep(0.05)


async def test_idempotent_request_is_sent_again_after_the_server_comes_back(
    listen_url: str,
) -> None:
    """An idempotent request in flight when the listening server goes is sent again on the
    next session and answered by the new server, within its deadline."""
    async with RPCClient.start(listen_url, convention=amqp10(), timeout=30) as client:
        answer: list[bytes] = []
        async with anyio.create_task_group() as tg:
            async with Echo.start(listening(listen_url), queue="idem", convention=amqp10()) as old:
                with anyio.fail_after(10):
                    while not client.connected:
                        await anyio.sleep(0.01)

                async def call() -> None:
                    answer.append(await client.request(b"hold", "idem", idempotent=True))

                tg.start_soon(call)
                with anyio.fail_after(10):
                    while old.pending == 0:
                        await anyio.sleep(0.01)
                await old.stop("shutdown")

            class Answers(Echo):
                async def handle_request(
                    self, request: Request, caller: Caller, state: None
                ) -> Any:
                    return Reply(b"answered again", state)

            async with Answers.start(listening(listen_url), queue="idem", convention=amqp10()):
                with anyio.fail_after(20):
                    while not answer:
                        await anyio.sleep(0.01)
    assert answer == [b"answered again"]


async def test_credit_bounds_requests_in_hand(peer: Peer) -> None:
    """The server holds at most prefetch unsettled requests (link credit), the rest later."""
    convention = amqp10(peer.base)
    async with (
        Echo.start(peer.server_url, queue="credit", convention=convention, prefetch=2) as server,
        RPCClient.start(peer.client_url, convention=convention, timeout=20) as client,
    ):
        answers: list[bytes] = []

        async def call() -> None:
            answers.append(await client.request(b"hold", "credit"))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(call)
            with anyio.fail_after(15):
                while server.pending < 2:
                    await anyio.sleep(0.01)
                await anyio.sleep(0.3)  # room for a third to arrive, were the bound broken
                assert server.pending == 2
                released = 0
                while released < 5:
                    held = await server.call("held")
                    for caller in held:
                        server.reply(caller, b"released")
                        released += 1
                    await anyio.sleep(0.01)
        assert answers == [b"released"] * 5


async def test_body_over_max_body_size_fails_fast(listen_url: str) -> None:
    """A request over the listener's max_body_size (its max-message-size) fails alone, at once."""
    server_url = listening(listen_url) + "&max_body_size=1000"
    async with (
        Echo.start(server_url, queue="small", convention=amqp10()),
        RPCClient.start(listen_url, convention=amqp10(), timeout=30) as client,
    ):
        with anyio.fail_after(10):
            assert await client.request(b"x" * 10, "small") == b"echo:" + b"x" * 10
            with pytest.raises(UnsendableMessage, match="max-message-size 1000"):
                await client.request(b"x" * 200_000, "small")
            assert await client.request(b"ok", "small") == b"echo:ok"


@pytest.mark.rabbitmq
async def test_server_comes_back_after_its_queue_is_deleted(
    rabbitmq: Any, rabbitmq10_url: str
) -> None:
    """Deleting a 1.0 server's queue on RabbitMQ 3.x drops the server's whole connection
    (no detach); the server reconnects, attaches again, and calls are answered again."""
    queue = f"detach-{secrets.token_hex(4)}"
    convention = amqp10("/queue/")
    async with (
        Echo.start(rabbitmq10_url, queue=queue, convention=convention),
        RPCClient.start(rabbitmq10_url, convention=convention, timeout=10) as client,
    ):
        with anyio.fail_after(15):
            assert await client.request(b"before", queue) == b"echo:before"
        await anyio.to_thread.run_sync(rabbitmq.ctl, "delete_queue", queue)
        with anyio.fail_after(30):
            while True:
                try:
                    assert await client.request(b"after", queue, timeout=2) == b"echo:after"
                    break
                except RequestTimeout:
                    pass
