"""RPCServer on the sandbox: replies, late replies, error replies, acks and redelivery."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from hare_py import (
    JSON,
    Caller,
    ConfigError,
    NoReply,
    RemoteError,
    Reply,
    Request,
    RestartIntensityExceeded,
    RPCClient,
    RPCServer,
    Stop,
)
from hare_py.testing import SandboxBroker
from hare_py.transport.base import Properties

pytestmark = pytest.mark.anyio


class Worker(RPCServer[dict[str, Any]]):
    """Echoes; 'later' answers from a task; 'boom' raises; 'stop' stops."""

    async def init(self, arg: Any) -> Any:
        self.seen: list[Request] = []
        return {}

    async def handle_request(self, request: Request, caller: Caller, state: Any) -> Any:
        self.seen.append(request)
        if request.payload == b"boom":
            raise ValueError("handler exploded")
        if request.payload == b"later":
            self.send(("answer", caller))
            return NoReply(state)
        if request.payload == b"never":
            return NoReply(state)
        if request.payload == b"stop":
            return Stop("normal", state)
        return Reply(request.payload.upper(), state)

    async def handle_info(self, message: Any, state: Any) -> Any:
        _, caller = message
        self.reply(caller, b"answered later")
        return NoReply(state)


async def wait_for(predicate: Any, seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.005)


@pytest.fixture
def broker() -> Any:
    with SandboxBroker() as broker:
        yield broker


async def test_round_trip_and_ack_after_reply(broker: SandboxBroker) -> None:
    """A request is answered, and acked only after the reply was published."""
    async with (
        Worker.start(broker.url, queue="work") as server,
        RPCClient.start(broker.url) as client,
    ):
        with anyio.fail_after(5):
            assert await client.request(b"hi", "work") == b"HI"
            await wait_for(lambda: broker.queues["work"].unacked == 0)
    names = [op.name for op in broker.history if op.name in ("basic_publish", "basic_ack")]
    assert names[-2:] == ["basic_publish", "basic_ack"]
    assert server.handled == 1


async def test_no_reply_then_reply_later(broker: SandboxBroker) -> None:
    """NoReply holds the request; server.reply(caller, v) answers and acks it later."""
    async with Worker.start(broker.url, queue="work"), RPCClient.start(broker.url) as client:
        with anyio.fail_after(5):
            assert await client.request(b"later", "work") == b"answered later"


async def test_raising_handler_sends_an_error_reply(broker: SandboxBroker) -> None:
    """A handler that raises answers with an error: the client raises RemoteError; server lives."""
    async with (
        Worker.start(broker.url, queue="work") as server,
        RPCClient.start(broker.url) as client,
    ):
        with anyio.fail_after(5):
            with pytest.raises(RemoteError) as info:
                await client.request(b"boom", "work")
            assert info.value.type == "ValueError"
            assert info.value.message == "handler exploded"
            assert await client.request(b"ok", "work") == b"OK"
    assert server.running is False


async def test_request_without_reply_to_is_processed_not_answered(broker: SandboxBroker) -> None:
    """A request without reply_to runs the handler, is acked, and no reply is published."""
    async with Worker.start(broker.url, queue="work") as server:
        await wait_for(lambda: server.connected)
        broker.publish("", "work", b"fire and forget")
        await wait_for(lambda: server.handled == 1)
        await wait_for(lambda: broker.queues["work"].unacked == 0)
        by_server = [op for op in broker.ops("basic_publish") if op.connection is not None]
        assert by_server == []
        assert server.seen[0].payload == b"fire and forget"


async def test_undecodable_request_gets_an_error_reply_and_is_rejected(
    broker: SandboxBroker,
) -> None:
    """A request the codec cannot decode is answered with an error at once and rejected
    (not requeued, so a dead-letter exchange would keep it); the server goes on."""
    async with (
        Worker.start(broker.url, queue="work", codec=JSON) as server,
        RPCClient.start(broker.url) as raw,
        RPCClient.start(broker.url, codec=JSON) as client,
    ):
        await wait_for(lambda: server.connected)
        with anyio.fail_after(5), pytest.raises(RemoteError) as info:
            await raw.request(b"{not json", "work")
        assert info.value.type == "UndecodableRequest"
        assert "JSONDecodeError" in info.value.message
        with anyio.fail_after(5):
            assert await client.request("fine", "work") == "FINE"
        await wait_for(lambda: len(broker.ops("basic_reject")) == 1)
        assert broker.queues["work"].messages == 0
        assert server.running
        assert server.handled == 1  # only the good one reached the handler


async def test_unanswered_request_is_redelivered_when_the_server_dies(
    broker: SandboxBroker,
) -> None:
    """A request held by a server that stops is redelivered to another instance."""
    async with RPCClient.start(broker.url, timeout=5) as client:
        async with anyio.create_task_group() as tg:
            results: list[bytes] = []

            async def ask() -> None:
                results.append(await client.request(b"never", "work"))

            async with Worker.start(broker.url, queue="work") as first:
                await wait_for(lambda: first.connected)  # its queue exists: not Unroutable
                tg.start_soon(ask)
                await wait_for(lambda: len(first.seen) == 1)
            assert broker.queues["work"].messages == 1  # back in the queue, not lost

            class Second(Worker):
                async def handle_request(self, request: Request, caller: Caller, state: Any) -> Any:
                    return Reply(b"second:" + request.payload, state)

            async with Second.start(broker.url, queue="work"):
                await wait_for(lambda: results == [b"second:never"])


async def test_prefetch_bounds_unacked_requests(broker: SandboxBroker) -> None:
    """With prefetch=2, at most two requests are held unanswered at once."""
    async with Worker.start(broker.url, queue="work", prefetch=2) as server:
        await wait_for(lambda: server.connected)
        for i in range(5):
            broker.publish("", "work", b"never", Properties(reply_to="x", correlation_id=str(i)))
        await wait_for(lambda: len(server.seen) == 2)
        await anyio.sleep(0.05)
        assert len(server.seen) == 2
        assert broker.queues["work"].messages == 3


async def test_server_binds_routing_keys_on_a_named_exchange(broker: SandboxBroker) -> None:
    """With a topic exchange, the queue is bound with each routing key given."""
    async with (
        Worker.start(
            broker.url, queue="svc", exchange="rpc", exchange_type="topic", routing_keys=["svc.*"]
        ),
        RPCClient.start(broker.url, exchange="rpc", exchange_type="topic") as client,
    ):
        with anyio.fail_after(5):
            assert await client.request(b"a", "svc.anything") == b"A"
    assert any(b.routing_key == "svc.*" and b.queue == "svc" for b in broker.bindings)


class TextCodec:
    """A custom codec: str payloads as UTF-8 text (the hook msgspec or protobuf would use)."""

    content_type = "text/plain; charset=utf-8"

    def check(self, payload: Any) -> None:
        if not isinstance(payload, str):
            raise ConfigError(f"TextCodec takes str, got {type(payload).__name__}")

    def encode(self, payload: Any) -> bytes:
        return str(payload).encode()

    def decode(self, body: bytes, content_type: str | None) -> Any:
        return body.decode()


async def test_custom_codec_on_both_sides(broker: SandboxBroker) -> None:
    """A codec of your own encodes requests and replies on both sides, with its content type."""
    codec = TextCodec()
    async with (
        Worker.start(broker.url, queue="work", codec=codec),
        RPCClient.start(broker.url, codec=codec) as client,
    ):
        with anyio.fail_after(5):
            assert await client.request("héllo", "work") == "HÉLLO"
            with pytest.raises(ConfigError, match="TextCodec takes str"):
                await client.request(b"bytes", "work")
    sent = [op for op in broker.ops("basic_publish") if op.connection is not None]
    assert {op["properties"].content_type for op in sent} == {codec.content_type}


class Strict(RPCServer[None]):
    """'bad' returns a wrong type; 'last' stops with a reply."""

    async def handle_request(self, request: Request, caller: Caller, state: Any) -> Any:
        if request.payload == b"bad":
            return "not a result"
        return Stop("normal", state, reply=b"goodbye")


async def test_a_wrong_handle_request_result_names_every_valid_one(
    broker: SandboxBroker,
) -> None:
    """A bad handle_request result crashes the server with a message listing Reply too."""
    with anyio.fail_after(5), pytest.raises(RestartIntensityExceeded) as info:
        async with Strict.start(broker.url, queue="strict", max_restarts=0) as server:
            await wait_for(lambda: server.connected)
            async with RPCClient.start(broker.url) as client:
                with pytest.raises(Exception):  # noqa: B017, PT011 - the server dies under it
                    await client.request(b"bad", "strict", timeout=1)
            await anyio.sleep(1)
    text = repr(info.value.__cause__)
    assert "expected Reply, NoReply or Stop" in text, text


async def test_stop_with_a_reply_answers_the_request(broker: SandboxBroker) -> None:
    """Stop(reason, state, reply=value) from handle_request answers the caller before stopping."""
    async with Strict.start(broker.url, queue="strict") as server:
        await wait_for(lambda: server.connected)
        async with RPCClient.start(broker.url) as client:
            with anyio.fail_after(5):
                assert await client.request(b"last", "strict") == b"goodbye"
