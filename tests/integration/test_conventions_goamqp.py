"""The goamqp convention on every broker: names, round trips, errors, dedupe, goamqp peers,
and no caller ever getting another caller's answer from a goamqp server."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus

from hare_py import (
    JSON,
    Caller,
    Connection,
    RemoteError,
    Reply,
    Request,
    RequestTimeout,
    RPCClient,
    RPCServer,
)
from hare_py.conventions import goamqp
from hare_py.conventions.goamqp import (
    QUEUE_EXPIRES_MS,
    request_exchange,
    request_queue,
    response_exchange,
    response_queue,
)
from hare_py.transport.base import Delivery, Properties

from .conftest import Target
from .declared import Queue, binding, check_topology, delete, raw_connection

pytestmark = pytest.mark.anyio

EXPIRES = {"x-expires": QUEUE_EXPIRES_MS}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Greeter(RPCServer[list[Any]]):
    """Greets ``{"name": ...}``; an empty name raises. Remembers every payload handled."""

    async def init(self, arg: Any) -> list[Any]:
        self.seen: list[Any] = []
        return self.seen

    async def handle_request(self, request: Request, caller: Caller, seen: list[Any]) -> Any:
        seen.append(request.payload)
        if not request.payload["name"]:
            raise ValueError("empty name")
        return Reply({"greeting": f"hello {request.payload['name']}"}, seen)


async def wait_for(predicate: Any, seconds: float = 10.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.01)


@asynccontextmanager
async def greeter(conn: Connection, service: str, keys: list[str]) -> AsyncIterator[Greeter]:
    async with Greeter.start(
        conn, routing_keys=keys, codec=JSON, convention=goamqp(service)
    ) as server:
        await wait_for(lambda: server.connected)
        yield server


@asynccontextmanager
async def cleaned(target: Target, service: str, *callers: str) -> AsyncIterator[None]:
    """Delete the service's durable exchanges and queues afterwards (they would stay 5 days)."""
    try:
        yield
    finally:
        await delete(
            target,
            queues=(request_queue(service), *(response_queue(service, c) for c in callers)),
            exchanges=(request_exchange(service), response_exchange(service)),
        )


async def test_wire_names_types_and_arguments(target: Target) -> None:
    """Server and client declare goamqp's exchanges, queues and bindings exactly."""
    service, caller = unique("svc"), unique("caller")
    client: RPCClient[Any]
    async with (
        cleaned(target, service, caller),
        Connection(target.url) as conn,
        greeter(conn, service, ["greet", "wave"]),
        RPCClient.start(
            conn, codec=JSON, convention=goamqp(service, caller, routing_keys=["greet", "wave"])
        ) as client,
    ):
        with anyio.fail_after(20):
            await wait_for(lambda: client.connected)
            assert client.reply_queue == response_queue(service, caller)
            await check_topology(
                target,
                exchanges={
                    f"{service}.direct.exchange.request": ("direct", True),
                    f"{service}.headers.exchange.response": ("headers", True),
                },
                queues={
                    f"{service}.direct.exchange.request.queue": Queue(True, arguments=EXPIRES),
                    f"{service}.headers.exchange.response.queue.{caller}": Queue(
                        True, arguments=EXPIRES
                    ),
                },
                bindings={
                    binding(request_exchange(service), request_queue(service), "greet"),
                    binding(request_exchange(service), request_queue(service), "wave"),
                    binding(
                        response_exchange(service),
                        response_queue(service, caller),
                        "greet",
                        service=caller,
                    ),
                    binding(
                        response_exchange(service),
                        response_queue(service, caller),
                        "wave",
                        service=caller,
                    ),
                },
            )
            assert QUEUE_EXPIRES_MS == 432_000_000


async def test_round_trip_and_error_reply(target: Target) -> None:
    """A hare_py client and server round-trip JSON; a raising handler gives RemoteError."""
    service, caller = unique("svc"), unique("caller")
    client: RPCClient[Any]
    async with (
        cleaned(target, service, caller),
        Connection(target.url) as conn,
        greeter(conn, service, ["greet"]),
        RPCClient.start(conn, codec=JSON, convention=goamqp(service, caller)) as client,
    ):
        with anyio.fail_after(10):
            assert await client.request({"name": "ann"}, "greet") == {"greeting": "hello ann"}
            with pytest.raises(RemoteError) as info:
                await client.request({"name": ""}, "greet")
            assert (info.value.type, info.value.message) == ("ValueError", "empty name")
            # Concurrent requests on one key: each gets its own answer (correlation ids).
            names = [f"n{i}" for i in range(50)]
            got: dict[str, Any] = {}
            async with anyio.create_task_group() as tg:
                for name in names:

                    async def ask(name: str = name) -> None:
                        got[name] = await client.request({"name": name}, "greet")

                    tg.start_soon(ask)
            assert got == {n: {"greeting": f"hello {n}"} for n in names}


async def test_repeated_message_id_is_answered_from_the_cache(target: Target) -> None:
    """Two requests with one message_id: the handler runs once, both callers get the answer."""
    service, caller = unique("svc"), unique("caller")
    async with (
        cleaned(target, service, caller),
        Connection(target.url) as conn,
        greeter(conn, service, ["greet"]) as server,
        raw_caller(target.url, service, caller, "greet") as (channel, replies),
    ):
        with anyio.fail_after(10):
            for cid in ("c1", "c2"):
                await channel.basic_publish(
                    b'{"name":"bo"}',
                    exchange=request_exchange(service),
                    routing_key="greet",
                    properties=Properties(
                        content_type="application/json",
                        headers={"service": caller},
                        correlation_id=cid,
                        message_id="same-request",
                    ),
                )
            first, second = await replies.receive(), await replies.receive()
            assert [first.properties.correlation_id, second.properties.correlation_id] == [
                "c1",
                "c2",
            ]
            assert json.loads(first.body) == json.loads(second.body) == {"greeting": "hello bo"}
            assert server.seen == [{"name": "bo"}]


@asynccontextmanager
async def raw_caller(
    url: str, service: str, caller: str, key: str
) -> AsyncIterator[tuple[Any, Any]]:
    """A goamqp-like caller: its response queue and binding, and a stream of responses."""
    send, receive = anyio.create_memory_object_stream[Delivery](100)
    with send, receive:
        async with raw_connection(url, "goamqp-like-caller") as conn:
            channel = await conn.open_channel(publisher_confirms=True)
            queue = response_queue(service, caller)
            await channel.exchange_declare(response_exchange(service), "headers", durable=True)
            await channel.queue_declare(queue, durable=True, arguments=EXPIRES)
            await channel.queue_bind(queue, response_exchange(service), key, {"service": caller})
            await channel.basic_consume(queue, send.send_nowait, no_ack=True)
            yield channel, receive


async def test_a_goamqp_caller_is_answered(target: Target) -> None:
    """A goamqp-like caller gets its responses; a failure sends nothing and is not requeued."""
    service, caller = unique("svc"), unique("caller")
    async with (
        cleaned(target, service, caller),
        Connection(target.url) as conn,
        greeter(conn, service, ["greet"]) as server,
        raw_caller(target.url, service, caller, "greet") as (channel, replies),
    ):
        with anyio.fail_after(10):
            for name in ("", "cy"):  # the failing one first: no response for it
                await channel.basic_publish(
                    json.dumps({"name": name}).encode(),
                    exchange=request_exchange(service),
                    routing_key="greet",
                    properties=Properties(
                        content_type="application/json",
                        delivery_mode=2,
                        headers={"service": caller},
                    ),
                )
            reply = await replies.receive()
            assert json.loads(reply.body) == {"greeting": "hello cy"}
            assert reply.routing_key == "greet"
            assert reply.exchange == response_exchange(service)
            assert reply.properties.headers == {"service": caller}
            assert reply.properties.correlation_id is None
            assert reply.properties.content_type == "application/json"
            assert server.seen == [{"name": ""}, {"name": "cy"}]
            await anyio.sleep(0.2)
            assert server.seen == [{"name": ""}, {"name": "cy"}]  # not redelivered
        with anyio.move_on_after(0.2):
            extra = await replies.receive()
            pytest.fail(f"unexpected response {extra!r}")


async def goamqp_like_server(
    url: str, service: str, keys: list[str], *, task_status: TaskStatus[list[str]]
) -> None:
    """A server that behaves like goamqp's: no correlation id in its responses. It answers
    requests in order, except that a b'slow' key's request waits for the next other one."""
    send, receive = anyio.create_memory_object_stream[Delivery](1000)
    with send, receive:
        async with raw_connection(url, "goamqp-like-server") as conn:
            channel = await conn.open_channel()
            await channel.exchange_declare(response_exchange(service), "headers", durable=True)
            await channel.exchange_declare(request_exchange(service), "direct", durable=True)
            await channel.queue_declare(request_queue(service), durable=True, arguments=EXPIRES)
            for key in keys:
                await channel.queue_bind(request_queue(service), request_exchange(service), key)
            await channel.basic_consume(request_queue(service), send.send_nowait)
            received: list[str] = []
            task_status.started(received)
            held: list[Delivery] = []

            async def answer(d: Delivery) -> None:
                request = json.loads(d.body)
                await channel.basic_publish(
                    json.dumps({"echo": request}).encode(),
                    exchange=response_exchange(service),
                    routing_key=d.routing_key,
                    properties=Properties(
                        content_type="application/json",
                        delivery_mode=2,
                        headers={"service": (d.properties.headers or {})["service"]},
                    ),
                )
                await channel.basic_ack(d.delivery_tag)

            async for delivery in receive:
                received.append(delivery.routing_key)
                if delivery.routing_key == "slow":
                    held.append(delivery)
                    continue
                await answer(delivery)
                for d in held:
                    await answer(d)
                held.clear()


async def test_pipelined_replies_are_matched_oldest_first(target: Target) -> None:
    """pipelined=True, against an in-order goamqp-like server: each reply goes to the oldest
    request in flight with its key."""
    service, caller = unique("svc"), unique("caller")
    client: RPCClient[Any]
    async with (
        cleaned(target, service, caller),
        anyio.create_task_group() as tg,
    ):
        received = await tg.start(goamqp_like_server, target.url, service, ["echo", "slow"])
        async with RPCClient.start(
            target.url, codec=JSON, convention=goamqp(service, caller, pipelined=True)
        ) as client:
            with anyio.fail_after(10):
                # In order on one key: every caller gets its own echo.
                got: dict[int, Any] = {}
                async with anyio.create_task_group() as calls:
                    for i in range(20):

                        async def ask(i: int = i) -> None:
                            got[i] = await client.request(i, "echo")

                        calls.start_soon(ask)
                        await wait_for(lambda i=i: len(received) == i + 1)  # publish in order
                assert got == {i: {"echo": i} for i in range(20)}
                # Across keys: the older 'slow' request is answered after the newer 'echo'
                # one, and each still gets its own reply.
                results: dict[str, Any] = {}
                async with anyio.create_task_group() as calls:

                    async def slow() -> None:
                        results["slow"] = await client.request("s", "slow")

                    async def fast() -> None:
                        results["echo"] = await client.request("f", "echo")

                    calls.start_soon(slow)
                    await wait_for(lambda: received[-1] == "slow")
                    calls.start_soon(fast)
                assert results == {"slow": {"echo": "s"}, "echo": {"echo": "f"}}
                # No response at all (as from a failing goamqp handler): the caller times out.
                with pytest.raises(RequestTimeout):
                    await client.request("never answered", "slow", timeout=0.3)
        tg.cancel_scope.cancel()


@dataclass
class Seen:
    """What a goamqp v0.3.1-like server saw: each delivery's name as it arrived
    (redeliveries too)."""

    slow: float = 0.0
    received: list[str] = field(default_factory=list)


async def goamqp_v031_server(
    url: str, service: str, seen: Seen, *, task_status: TaskStatus[None]
) -> None:
    """goamqp v0.3.1's RequestResponseHandler("greet", ...): prefetch 20, one delivery at
    a time, no correlation id on responses; a failing handler (empty name) is nacked and
    requeued at once, and the next delivery is answered; "slow" takes ``seen.slow`` s."""
    send, receive = anyio.create_memory_object_stream[Delivery](math.inf)
    with send, receive:
        async with raw_connection(url, "goamqp-v031-server") as conn:
            channel = await conn.open_channel()
            await channel.basic_qos(20, global_=True)
            await channel.exchange_declare(response_exchange(service), "headers", durable=True)
            await channel.exchange_declare(request_exchange(service), "direct", durable=True)
            await channel.queue_declare(request_queue(service), durable=True, arguments=EXPIRES)
            await channel.queue_bind(request_queue(service), request_exchange(service), "greet")

            def arrived(delivery: Delivery) -> None:
                seen.received.append(json.loads(delivery.body)["name"])
                send.send_nowait(delivery)

            await channel.basic_consume(request_queue(service), arrived)
            task_status.started()
            async for delivery in receive:
                name = json.loads(delivery.body)["name"]
                if not name:
                    await channel.basic_nack(delivery.delivery_tag, requeue=True)
                    await anyio.sleep(0.002)  # goamqp does not wait; this spares a shared CPU
                    continue
                if name == "slow":
                    await anyio.sleep(seen.slow)
                await channel.basic_publish(
                    json.dumps({"greeting": f"hello {name}"}).encode(),
                    exchange=response_exchange(service),
                    routing_key=delivery.routing_key,
                    properties=Properties(
                        content_type="application/json",
                        delivery_mode=2,
                        headers={"service": (delivery.properties.headers or {})["service"]},
                    ),
                )
                await channel.basic_ack(delivery.delivery_tag)


async def outcome(request: Awaitable[Any]) -> Any:
    """The reply, or the type of the error raised."""
    try:
        return await request
    except Exception as exc:
        return type(exc)


def greeting(name: str) -> dict[str, str]:
    return {"greeting": f"hello {name}"}


async def test_a_failing_request_among_several_never_gets_another_callers_answer(
    target: Target,
) -> None:
    """Against goamqp v0.3.1's requeue-on-failure, the failing request times out and every
    other caller gets its own answer."""
    service, caller = unique("svc"), unique("caller")
    client: RPCClient[Any]
    seen = Seen()
    got: dict[str, Any] = {}
    with anyio.fail_after(30):
        async with cleaned(target, service, caller), anyio.create_task_group() as server:
            await server.start(goamqp_v031_server, target.url, service, seen)
            async with RPCClient.start(
                target.url,
                codec=JSON,
                timeout=10.0,
                convention=goamqp(service, caller, late_reply_grace=0.1),
            ) as client:
                await wait_for(lambda: client.connected)
                async with anyio.create_task_group() as tg:

                    async def ask(name: str, timeout: float = 10.0) -> None:
                        request = client.request({"name": name}, "greet", timeout=timeout)
                        got[name] = await outcome(request)

                    tg.start_soon(ask, "", 0.5)
                    await wait_for(lambda: "" in seen.received)  # the failing one is out first
                    for name in ("bo", "cy", "dee"):
                        tg.start_soon(ask, name)
            server.cancel_scope.cancel()
    assert got == {"": RequestTimeout, **{n: greeting(n) for n in ("bo", "cy", "dee")}}


async def test_a_late_answer_is_dropped_not_given_to_the_next_caller(target: Target) -> None:
    """An answer that comes after its caller's deadline reaches nobody, not the next caller."""
    service, caller = unique("svc"), unique("caller")
    client: RPCClient[Any]
    seen = Seen(slow=0.6)
    got: dict[str, Any] = {}
    with anyio.fail_after(30):
        async with cleaned(target, service, caller), anyio.create_task_group() as server:
            await server.start(goamqp_v031_server, target.url, service, seen)
            async with RPCClient.start(
                target.url, codec=JSON, timeout=10.0, convention=goamqp(service, caller)
            ) as client:
                await wait_for(lambda: client.connected)
                async with anyio.create_task_group() as tg:

                    async def ask(name: str, timeout: float = 10.0) -> None:
                        request = client.request({"name": name}, "greet", timeout=timeout)
                        got[name] = await outcome(request)

                    tg.start_soon(ask, "slow", 0.3)
                    await wait_for(lambda: "slow" in seen.received)
                    tg.start_soon(ask, "bo")
            server.cancel_scope.cancel()
    assert got == {"slow": RequestTimeout, "bo": greeting("bo")}
    assert seen.received == ["slow", "bo"]  # bo left only once slow's late answer was in
