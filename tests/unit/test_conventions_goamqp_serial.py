"""goamqp responses carry no correlation id: on the sandbox, against a server that
behaves like goamqp v0.3.1, no caller ever gets another caller's answer."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus

from hare_py import JSON, ClientCrashed, RequestTimeout, RPCClient
from hare_py.conventions import goamqp
from hare_py.conventions.goamqp import (
    QUEUE_EXPIRES_MS,
    request_exchange,
    request_queue,
    response_exchange,
)
from hare_py.testing import SandboxBroker
from hare_py.transport import backend_for, parse_url
from hare_py.transport.base import ConnectOptions, Delivery, Properties

pytestmark = pytest.mark.anyio

SERVICE, CALLER = "greeter", "web"
EXPIRES = {"x-expires": QUEUE_EXPIRES_MS}


@dataclass
class Seen:
    """What the server saw: each delivery's name as it arrived (redeliveries too), and
    how many had arrived when it answered each request."""

    slow: float = 0.0
    received: list[str] = field(default_factory=list)
    seen_when_answering: list[int] = field(default_factory=list)


async def serve_like_goamqp(
    url: str, keys: list[str], seen: Seen, *, task_status: TaskStatus[None]
) -> None:
    """goamqp v0.3.1's RequestResponseHandler: prefetch 20, one delivery at a time, no
    correlation id on responses; a failing handler (empty name) is nacked and requeued at
    once, and the next delivery is answered; the name "slow" takes ``seen.slow`` seconds."""
    parsed = parse_url(url)
    send, receive = anyio.create_memory_object_stream[Delivery](math.inf)
    with send, receive:
        async with backend_for(parsed).connect(parsed, ConnectOptions(name="go-server")) as conn:
            channel = await conn.open_channel()
            await channel.basic_qos(20, global_=True)
            await channel.exchange_declare(response_exchange(SERVICE), "headers", durable=True)
            await channel.exchange_declare(request_exchange(SERVICE), "direct", durable=True)
            await channel.queue_declare(request_queue(SERVICE), durable=True, arguments=EXPIRES)
            for key in keys:
                await channel.queue_bind(request_queue(SERVICE), request_exchange(SERVICE), key)

            def arrived(delivery: Delivery) -> None:
                seen.received.append(json.loads(delivery.body)["name"])
                send.send_nowait(delivery)

            await channel.basic_consume(request_queue(SERVICE), arrived)
            task_status.started()
            async for delivery in receive:
                name = json.loads(delivery.body)["name"]
                if not name:
                    await channel.basic_nack(delivery.delivery_tag, requeue=True)
                    await anyio.sleep(0.002)  # goamqp does not wait; this spares a shared CPU
                    continue
                if name == "slow":
                    await anyio.sleep(seen.slow)
                seen.seen_when_answering.append(len(seen.received))
                await channel.basic_publish(
                    json.dumps({"greeting": f"hello {name}"}).encode(),
                    exchange=response_exchange(SERVICE),
                    routing_key=delivery.routing_key,
                    properties=Properties(
                        content_type="application/json",
                        delivery_mode=2,
                        headers={"service": (delivery.properties.headers or {})["service"]},
                    ),
                )
                await channel.basic_ack(delivery.delivery_tag)


class Crashable(RPCClient[None]):
    """Crashes on any cast; its supervisor restarts it."""

    async def handle_cast(self, message: Any, state: None) -> Any:
        raise RuntimeError(f"crash on {message!r}")


@asynccontextmanager
async def setup(
    seen: Seen, keys: list[str] | None = None, **convention: Any
) -> AsyncIterator[Crashable]:
    """A sandbox broker, the goamqp-like server, and a connected hare_py client."""
    client: Crashable
    with SandboxBroker() as broker:
        async with anyio.create_task_group() as tg:
            await tg.start(serve_like_goamqp, broker.url, keys or ["greet"], seen)
            async with Crashable.start(
                broker.url,
                codec=JSON,
                timeout=10.0,
                convention=goamqp(SERVICE, CALLER, **convention),
            ) as client:
                while not client.connected:
                    await anyio.sleep(0.01)
                yield client
            tg.cancel_scope.cancel()


async def outcome(request: Awaitable[Any]) -> Any:
    """The reply, or the type of the error raised."""
    try:
        return await request
    except Exception as exc:
        return type(exc)


async def wait_until_received(seen: Seen, name: str) -> None:
    while name not in seen.received:
        await anyio.sleep(0.005)


def greeting(name: str) -> dict[str, str]:
    return {"greeting": f"hello {name}"}


async def test_a_failing_request_among_several_never_gets_another_callers_answer() -> None:
    """A request the server rejects and requeues times out; the others get their own answers."""
    seen = Seen()
    got: dict[str, Any] = {}
    with anyio.fail_after(20):
        async with setup(seen, late_reply_grace=0.1) as client:
            async with anyio.create_task_group() as tg:

                async def ask(name: str, timeout: float = 10.0) -> None:
                    got[name] = await outcome(
                        client.request({"name": name}, "greet", timeout=timeout)
                    )

                tg.start_soon(ask, "", 0.5)
                await wait_until_received(seen, "")  # the failing one is out first
                for name in ("bo", "cy", "dee"):
                    tg.start_soon(ask, name)
    assert got == {
        "": RequestTimeout,
        "bo": greeting("bo"),
        "cy": greeting("cy"),
        "dee": greeting("dee"),
    }


async def test_a_late_answer_is_dropped_not_given_to_the_next_caller() -> None:
    """An answer that comes after its caller's deadline reaches nobody, not the next caller."""
    seen = Seen(slow=0.6)
    got: dict[str, Any] = {}
    with anyio.fail_after(20):
        async with setup(seen) as client:
            async with anyio.create_task_group() as tg:

                async def ask(name: str, timeout: float = 10.0) -> None:
                    got[name] = await outcome(
                        client.request({"name": name}, "greet", timeout=timeout)
                    )

                tg.start_soon(ask, "slow", 0.3)
                await wait_until_received(seen, "slow")
                tg.start_soon(ask, "bo")
    assert got == {"slow": RequestTimeout, "bo": greeting("bo")}
    assert seen.received == ["slow", "bo"]  # bo left only once slow's late answer was in


async def test_requests_waiting_for_their_key_time_out_unsent_while_other_keys_flow() -> None:
    """A request queued behind an unanswered one times out without being sent; other keys
    are not held up."""
    seen = Seen()
    got: dict[str, Any] = {}
    with anyio.fail_after(20):
        async with setup(seen, ["greet", "wave"], late_reply_grace=math.inf) as client:
            async with anyio.create_task_group() as tg:

                async def ask(name: str, key: str, timeout: float) -> None:
                    got[name] = await outcome(client.request({"name": name}, key, timeout=timeout))

                tg.start_soon(ask, "", "greet", 0.3)
                await wait_until_received(seen, "")
                tg.start_soon(ask, "bo", "greet", 0.6)
                tg.start_soon(ask, "cy", "wave", 10.0)
    assert got == {"": RequestTimeout, "bo": RequestTimeout, "cy": greeting("cy")}
    assert "bo" not in seen.received


async def test_a_late_answer_after_a_restart_reaches_nobody() -> None:
    """A request in flight when the client crashed keeps its key in the restarted client:
    its answer is dropped, not given to the next caller."""
    seen = Seen(slow=0.6)
    got: dict[str, Any] = {}
    with anyio.fail_after(20):
        async with setup(seen) as client:
            async with anyio.create_task_group() as tg:

                async def ask(name: str) -> None:
                    got[name] = await outcome(client.request({"name": name}, "greet"))

                tg.start_soon(ask, "slow")
                await wait_until_received(seen, "slow")
                client.cast("boom")
                while "slow" not in got or not client.connected:
                    await anyio.sleep(0.01)
                tg.start_soon(ask, "bo")
    assert got == {"slow": ClientCrashed, "bo": greeting("bo")}
    assert seen.received == ["slow", "bo"]


@pytest.mark.parametrize(("pipelined", "seen_first"), [(False, 1), (True, 3)])
async def test_one_request_per_key_is_out_unless_pipelined(
    pipelined: bool, seen_first: int
) -> None:
    """By default the server gets a key's next request only after answering the last;
    pipelined=True sends them all at once."""
    seen = Seen(slow=0.3)
    got: dict[str, Any] = {}
    with anyio.fail_after(20):
        async with setup(seen, pipelined=pipelined) as client:
            async with anyio.create_task_group() as tg:

                async def ask(name: str) -> None:
                    got[name] = await outcome(client.request({"name": name}, "greet"))

                tg.start_soon(ask, "slow")
                await wait_until_received(seen, "slow")
                tg.start_soon(ask, "bo")
                tg.start_soon(ask, "cy")
    assert got == {name: greeting(name) for name in ("slow", "bo", "cy")}
    assert seen.seen_when_answering[0] == seen_first
