"""Bad input to RPCClient fails its own call with a HareError, and hurts no other caller."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from hare_py import JSON, ConfigError, HareError, RPCClient
from hare_py.testing import SandboxBroker

from .echo import echo_server

pytestmark = pytest.mark.anyio


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


BAD_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("lone surrogate in the routing key", {"routing_key": "echo\ud800"}),
    ("routing key over 255 bytes", {"routing_key": "é" * 128}),
    ("routing key not a string", {"routing_key": b"echo"}),
    ("timeout not a number", {"timeout": "5"}),
    ("timeout NaN", {"timeout": float("nan")}),
    ("headers not a mapping", {"headers": [("a", 1)]}),
]


@pytest.mark.parametrize(("what", "kwargs"), BAD_CALLS, ids=[w for w, _ in BAD_CALLS])
async def test_bad_arguments_fail_the_call_alone(
    broker: SandboxBroker, what: str, kwargs: dict[str, Any]
) -> None:
    """Each bad argument is a ConfigError for its caller; a bystander's call still succeeds."""
    args = {"routing_key": "echo", **kwargs}
    with anyio.fail_after(5):
        async with echo_server(broker.url), RPCClient.start(broker.url) as client:
            with pytest.raises(ConfigError):
                await client.request(b"x", args.pop("routing_key"), **args)
            assert await client.request(b"fine", "echo") == b"fine"
            assert client.running


async def test_a_timeout_beyond_any_float_waits_forever_not_overflows(
    broker: SandboxBroker,
) -> None:
    """timeout=10**400 is as good as no deadline: the call is answered, nothing overflows."""
    with anyio.fail_after(5):
        async with echo_server(broker.url), RPCClient.start(broker.url) as client:
            assert await client.request(b"x", "echo", timeout=10**400) == b"x"
            assert await client.request(b"y", "echo", timeout=1e300) == b"y"
            assert await client.request(b"z", "echo", timeout=86_400 * 100) == b"z"


@pytest.mark.parametrize(
    "payload", [_nested(100_000), float("nan"), {"k": object()}], ids=["deep", "nan", "object"]
)
async def test_a_json_payload_that_cannot_be_encoded_is_a_config_error(
    broker: SandboxBroker, payload: Any
) -> None:
    """A JSON payload nested too deep, NaN, or not JSON is a ConfigError, never RecursionError."""
    with anyio.fail_after(5):
        async with echo_server(broker.url), RPCClient.start(broker.url, codec=JSON) as client:
            with pytest.raises(ConfigError):
                await client.request(payload, "echo")
            assert await client.request({"ok": 1}, "echo") == {"ok": 1}


async def test_a_reply_nested_too_deep_fails_only_its_caller(broker: SandboxBroker) -> None:
    """A JSON reply nested 100,000 deep is a HareError for its caller; the client runs on."""
    deep = b"[" * 100_000 + b"]" * 100_000

    async def hostile(delivery: Any) -> bytes:
        return deep if delivery.body == b'"deep"' else delivery.body

    with anyio.fail_after(5):
        async with (
            echo_server(broker.url, handler=hostile),
            RPCClient.start(broker.url, codec=JSON) as client,
        ):
            with pytest.raises(HareError):
                await client.request("deep", "echo")
            assert await client.request("fine", "echo") == "fine"


# Real clocks: a mock clock would jump its deadlines while the loop waits on a thread.
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_request_from_another_thread_is_refused_at_once(broker: SandboxBroker) -> None:
    """request() from a thread with its own event loop raises ConfigError, not a hang."""
    errors: list[BaseException] = []

    def elsewhere(client: RPCClient[Any]) -> None:
        async def call() -> None:
            with anyio.fail_after(2):
                await client.request(b"x", "echo")

        try:
            anyio.run(call)
        except BaseException as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        async with echo_server(broker.url), RPCClient.start(broker.url) as client:
            thread = threading.Thread(target=elsewhere, args=(client,))
            thread.start()
            await anyio.to_thread.run_sync(thread.join)
            assert await client.request(b"here", "echo") == b"here"
    assert len(errors) == 1 and isinstance(errors[0], ConfigError), errors
    assert "thread" in str(errors[0])


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_from_thread_is_the_way_to_call_from_a_worker_thread(broker: SandboxBroker) -> None:
    """A worker thread that the client's loop started calls it through anyio.from_thread."""

    def worker(client: RPCClient[Any]) -> Any:
        return anyio.from_thread.run(client.request, b"from a thread", "echo")

    with anyio.fail_after(5):
        async with echo_server(broker.url), RPCClient.start(broker.url) as client:
            assert await anyio.to_thread.run_sync(worker, client) == b"from a thread"


def _deep_table(depth: int) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for _ in range(depth):
        table = {"n": table}
    return table


BAD_HEADERS: list[tuple[str, Any]] = [
    ("a key that is not a string", {1: 2}),
    ("a value with no AMQP type", {"x": object()}),
    ("an integer beyond 64 bits", {"x": 2**70}),
    ("a key over 128 bytes", {"k" * 129: 1}),
    ("a lone surrogate", {"x": "\udc80"}),
    ("nesting 5,000 deep", _deep_table(5000)),
]


@pytest.mark.parametrize(("what", "headers"), BAD_HEADERS, ids=[w for w, _ in BAD_HEADERS])
async def test_headers_amqp_cannot_carry_fail_the_call_alone(
    broker: SandboxBroker, what: str, headers: Any
) -> None:
    """Unsendable headers are a ConfigError for their caller; the client never crashes."""
    with anyio.fail_after(5):
        async with echo_server(broker.url), RPCClient.start(broker.url) as client:
            for _ in range(5):  # more than the restart intensity, were each a crash
                with pytest.raises(ConfigError):
                    await client.request(b"x", "echo", headers=headers)
            assert await client.request(b"fine", "echo", headers={"ok": [1, "two"]}) == b"fine"


def test_a_convention_of_another_protocol_is_a_config_error(broker: SandboxBroker) -> None:
    """A client or server whose convention runs on another protocol fails at start, naming both."""
    from hare_py import Connection, RPCServer
    from hare_py.conventions import Convention, hare

    class OtherWire(Convention):
        name = "other-wire"

        def client(self, *args: Any) -> Any:
            half = hare().client(*args)
            half.wire_protocol = "nats"  # type: ignore[misc]  # a half that claims NATS
            return half

        def server(self, options: Any) -> Any:
            half = hare().server(options)
            half.wire_protocol = "nats"  # type: ignore[misc]  # a half that claims NATS
            return half

    conn = Connection(broker.url)
    with pytest.raises(ConfigError, match=r"runs on nats.*speaks amqp-0-9-1"):
        RPCClient(conn, convention=OtherWire())
    with pytest.raises(ConfigError, match=r"runs on nats.*speaks amqp-0-9-1"):
        RPCServer(conn, queue="q", convention=OtherWire())
