"""The loom convention: Loom's NATS RPC subjects and envelopes, on the sandbox and nats-server.

Every test runs on ``SandboxNatsBroker`` and on the session's private
nats-server, each on asyncio and trio.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
from nats_kinds import NatsKind

from hare_py import (
    JSON,
    Caller,
    ConfigError,
    RemoteError,
    Reply,
    Request,
    RequestTimeout,
    RPCClient,
    RPCServer,
    Unroutable,
)
from hare_py.conventions import loom
from hare_py.testing import SandboxBroker

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(nats_kind: NatsKind) -> str:
    return nats_kind.anyio_backend


@pytest.fixture
def url(nats_url: str) -> str:
    return nats_url


@pytest.fixture
def svc() -> str:
    """A service type of the test's own, so that tests never meet on a shared server."""
    return f"agent-{secrets.token_hex(4)}"


class Agent(RPCServer[list[Request]]):
    """Answers with what it got; 'boom' raises."""

    async def init(self, arg: Any) -> list[Request]:
        return []

    async def handle_request(self, request: Request, caller: Caller, seen: Any) -> Any:
        seen.append(request)
        if request.payload == "boom":
            raise ValueError("the handler failed")
        return Reply({"got": request.payload, "by": self.name, "method": request.routing_key}, seen)


@asynccontextmanager
async def agents(url: str, svc: str, *instances: str, **kw: Any) -> AsyncIterator[list[Agent]]:
    async with AsyncExitStack() as stack:
        started = [
            await stack.enter_async_context(
                Agent.start(
                    url,
                    codec=JSON,
                    convention=loom(svc, instance_id=i, **kw),
                    name=i,
                    routing_keys=["task.assign"],
                )
            )
            for i in instances
        ]
        with anyio.fail_after(5):
            while not all(a.connected for a in started):
                await anyio.sleep(0.005)
        yield started


@asynccontextmanager
async def caller(url: str, svc: str) -> AsyncIterator[RPCClient[Any]]:
    async with RPCClient.start(url, codec=JSON, convention=loom(svc, caller_id="tests")) as client:
        with anyio.fail_after(5):
            while not client.connected:
                await anyio.sleep(0.005)
        yield client


async def test_a_named_instance_answers_with_a_dotted_method(url: str, svc: str) -> None:
    """'inst.task.assign' reaches that instance, whose Request shows method and trace id."""
    async with agents(url, svc, "inst1", "inst2") as (one, two), caller(url, svc) as client:
        with anyio.fail_after(5):
            reply = await client.request({"n": 1}, "inst2.task.assign")
    assert reply == {"got": {"n": 1}, "by": "inst2", "method": "task.assign"}
    assert len(one._state) == 0
    (request,) = two._state
    assert request.trace_id and len(request.trace_id) == 32


async def test_any_instance_spreads_calls_each_handled_once(url: str, svc: str) -> None:
    """'any.task.assign' goes to one instance of the queue group per call, over all of them."""
    async with agents(url, svc, "a", "b", "c") as started, caller(url, svc) as client:
        with anyio.fail_after(20):
            replies = [await client.request(i, "any.task.assign") for i in range(90)]
    assert sorted(r["got"] for r in replies) == list(range(90))
    handled = [len(a._state) for a in started]
    assert sum(handled) == 90 and all(h > 0 for h in handled), handled


async def test_a_handler_error_is_a_remote_error_with_its_text(url: str, svc: str) -> None:
    """ok: false in the response envelope raises RemoteError carrying the error text."""
    async with agents(url, svc, "inst1"), caller(url, svc) as client:
        with anyio.fail_after(5), pytest.raises(RemoteError, match="the handler failed"):
            await client.request("boom", "inst1.task.assign")


async def test_a_method_nobody_serves_is_unroutable_at_once(url: str, svc: str) -> None:
    """No responders: Unroutable naming the subject, well before the deadline."""
    async with agents(url, svc, "inst1"), caller(url, svc) as client:
        with anyio.fail_after(5), pytest.raises(Unroutable, match=f"loom.rpc.{svc}.inst9"):
            await client.request(1, "inst9.task.assign", timeout=60)


async def test_a_wildcard_routing_key_is_refused_for_any(url: str, svc: str) -> None:
    """A hare_py caller asks for 'any.<method>'; a literal '*' subject is refused, not sent."""
    async with agents(url, svc, "a"), caller(url, svc) as client:
        with anyio.fail_after(5), pytest.raises(ConfigError):
            await client.request(1, "*.task.assign")
        assert (await client.request(2, "any.task.assign"))["got"] == 2


def test_bad_names_are_config_errors() -> None:
    """Service types and instance ids with '.', '*', '>' or spaces, and 'any', are refused."""
    for bad in ("a.b", "a*", "a>", "a b", ""):
        with pytest.raises(ConfigError):
            loom(bad)
        with pytest.raises(ConfigError):
            loom("svc", instance_id=bad)
    with pytest.raises(ConfigError, match="reserved"):
        loom("svc", instance_id="any")


async def test_loom_on_an_amqp_connection_is_a_config_error(nats_kind: NatsKind) -> None:
    """The loom convention on an AMQP 0-9-1 URL fails at start, naming both protocols."""
    with SandboxBroker() as amqp:
        with pytest.raises(ConfigError, match=r"runs on nats.*speaks amqp-0-9-1"):
            async with RPCClient.start(amqp.url, convention=loom("svc")):
                pass


async def test_compat_wildcard_instances_still_answer_any_once(url: str, svc: str) -> None:
    """With compat_wildcard, each 'any' call reaches one instance (both group subs match it)."""
    async with agents(url, svc, "a", "b", compat_wildcard=True) as started, caller(url, svc) as c:
        with anyio.fail_after(10):
            replies = [await c.request(i, "any.task.assign") for i in range(20)]
    assert sorted(r["got"] for r in replies) == list(range(20))
    assert sum(len(a._state) for a in started) == 20


async def test_compat_wildcard_makes_a_missing_instance_time_out(url: str, svc: str) -> None:
    """The documented cost: with compat_wildcard, a call to no such instance times out."""
    async with agents(url, svc, "a", compat_wildcard=True), caller(url, svc) as c:
        with anyio.fail_after(5), pytest.raises(RequestTimeout):
            await c.request(1, "nobody.task.assign", timeout=0.5)
