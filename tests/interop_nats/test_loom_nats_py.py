"""Loom's NATS RPC between hare_py and nats-py, both directions.

nats-py plays Loom's Go code: a caller that requests ``loom.rpc.svc.*.method``
(Loom's "any instance" subject) or one instance's subject, and a handler
subscribed to its instance subject that answers ``{ok, payload, error}``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import nats
import pytest
from nats.errors import NoRespondersError

from hare_py import JSON, Caller, RemoteError, Reply, Request, RPCClient, RPCServer
from hare_py.conventions import loom

pytestmark = pytest.mark.anyio


class Agent(RPCServer[list[Request]]):
    async def init(self, arg: Any) -> list[Request]:
        return []

    async def handle_request(self, request: Request, caller: Caller, seen: Any) -> Any:
        seen.append(request)
        if request.payload == "boom":
            raise ValueError("it failed")
        return Reply({"got": request.payload, "by": self.name}, seen)


@pytest.fixture
def svc() -> str:
    return f"agent-{secrets.token_hex(4)}"


@asynccontextmanager
async def agents(url: str, svc: str, *names: str, **kw: Any) -> AsyncIterator[list[Agent]]:
    async with AsyncExitStack() as stack:
        started = [
            await stack.enter_async_context(
                Agent.start(url, codec=JSON, convention=loom(svc, instance_id=n, **kw), name=n)
            )
            for n in names
        ]
        with anyio.fail_after(5):
            while not all(a.connected for a in started):
                await anyio.sleep(0.005)
        yield started


def envelope(method: str, payload: Any) -> bytes:
    return json.dumps({"method": method, "caller_id": "go-caller", "payload": payload}).encode()


async def test_a_loom_wildcard_caller_reaches_one_compat_instance(
    nats_server: Any, svc: str
) -> None:
    """nats-py requesting 'svc.*.method' gets one answer from a compat_wildcard instance."""
    async with agents(nats_server.url, svc, "a", "b", compat_wildcard=True) as started:
        nc = await nats.connect(nats_server.url)
        try:
            with anyio.fail_after(10):
                for i in range(20):
                    msg = await nc.request(
                        f"loom.rpc.{svc}.*.task.assign", envelope("task.assign", i), timeout=5
                    )
                    answer = json.loads(msg.data)
                    assert answer["ok"] is True and answer["payload"]["got"] == i
        finally:
            await nc.close()
    assert sum(len(a._state) for a in started) == 20  # each call handled once


async def test_without_compat_a_loom_wildcard_caller_gets_no_responders(
    nats_server: Any, svc: str
) -> None:
    """As Loom's docs do not say: without compat_wildcard, 'svc.*.method' reaches nobody."""
    async with agents(nats_server.url, svc, "a"):
        nc = await nats.connect(nats_server.url)
        try:
            with anyio.fail_after(10), pytest.raises(NoRespondersError):
                await nc.request(f"loom.rpc.{svc}.*.task.assign", envelope("task.assign", 1))
        finally:
            await nc.close()


async def test_a_loom_caller_of_one_instance_and_of_any(nats_server: Any, svc: str) -> None:
    """nats-py calls instance 'b' by name, and 'any'; a handler error is ok: false."""
    async with agents(nats_server.url, svc, "a", "b"):
        nc = await nats.connect(nats_server.url)
        try:
            with anyio.fail_after(10):

                async def call(instance: str, payload: Any) -> Any:
                    subject = f"loom.rpc.{svc}.{instance}.task.assign"
                    msg = await nc.request(subject, envelope("task.assign", payload))
                    return json.loads(msg.data)

                named = await call("b", 1)
                anyone = await call("any", 2)
                failed = await call("a", "boom")
        finally:
            await nc.close()
    assert named == {"ok": True, "payload": {"got": 1, "by": "b"}, "error": ""}
    assert anyone["ok"] is True and anyone["payload"]["by"] in ("a", "b")
    assert failed["ok"] is False and "it failed" in failed["error"]


async def test_hare_py_calls_a_loom_handler_written_with_nats_py(
    nats_server: Any, svc: str
) -> None:
    """A nats-py Loom handler answers hare_py's calls; ok: false raises RemoteError."""
    nc = await nats.connect(nats_server.url)
    seen: list[dict[str, Any]] = []

    async def handler(msg: Any) -> None:
        request = json.loads(msg.data)
        seen.append(request)
        if request["payload"] == "boom":
            answer: dict[str, Any] = {"ok": False, "payload": None, "error": "handler said no"}
        else:
            answer = {"ok": True, "payload": {"echo": request["payload"]}, "error": ""}
        await msg.respond(json.dumps(answer).encode())

    await nc.subscribe(f"loom.rpc.{svc}.inst1.task.assign", cb=handler)
    await nc.flush()
    try:
        async with RPCClient.start(
            nats_server.url, codec=JSON, convention=loom(svc, caller_id="hare")
        ) as client:
            with anyio.fail_after(10):
                assert await client.request([1, "x"], "inst1.task.assign") == {"echo": [1, "x"]}
                with pytest.raises(RemoteError, match="handler said no"):
                    await client.request("boom", "inst1.task.assign")
    finally:
        await nc.close()
    assert seen[0]["method"] == "task.assign" and seen[0]["caller_id"] == "hare"
    assert len(seen[0]["trace_id"]) == 32
