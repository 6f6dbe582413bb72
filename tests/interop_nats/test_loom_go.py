"""Loom's NATS RPC between hare_py and a Go peer on nats.go, both directions.

``gopeer/main.go`` plays Loom's Go code with Loom's envelope structs: a
handler subscribed to its instance's subjects, and a caller that sends
``nc.Request`` with an empty ``trace_id`` (omitted, as Loom's ``omitempty``
does) to one instance's subject or to Loom's "any instance" wildcard subject.
The Go peer is a separate process, so the hare_py side runs on both anyio
backends.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from processes import start_ready, stop_ready

from hare_py import JSON, Caller, RemoteError, Reply, Request, RPCClient, RPCServer, Unroutable
from hare_py.conventions import loom

pytestmark = pytest.mark.anyio

NO_RESPONDERS = "nats: no responders available for request"  # nats.go's ErrNoResponders


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends: the nats.go peer runs in a process of its own."""
    return str(request.param)


@pytest.fixture
def svc() -> str:
    return f"agent-{secrets.token_hex(4)}"


class Agent(RPCServer[list[Request]]):
    """Answers ``{"got": payload, "by": name}``; ``"boom"`` raises."""

    async def init(self, seen: list[Request]) -> list[Request]:
        return seen

    async def handle_request(self, request: Request, caller: Caller, seen: Any) -> Any:
        seen.append(request)
        if request.payload == "boom":
            raise ValueError("it failed")
        return Reply({"got": request.payload, "by": self.name}, seen)


@asynccontextmanager
async def agents(
    url: str, svc: str, *names: str, **kw: Any
) -> AsyncIterator[dict[str, list[Request]]]:
    """hare_py Loom instances ``names`` serving ``task.assign``; yields what each handled."""
    seen: dict[str, list[Request]] = {n: [] for n in names}
    async with AsyncExitStack() as stack:
        started = [
            await stack.enter_async_context(
                Agent.start(
                    url,
                    codec=JSON,
                    convention=loom(svc, instance_id=n, **kw),
                    routing_keys=["task.assign"],
                    name=n,
                    arg=seen[n],
                )
            )
            for n in names
        ]
        with anyio.fail_after(5):
            while not all(a.connected for a in started):
                await anyio.sleep(0.005)
        yield seen


async def go_call(
    gopeer: Path, url: str, subject: str, method: str, *payloads: str, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """Loom's Go caller: one concurrent ``nc.Request`` per JSON payload; the answers in order."""
    command = [str(gopeer), "call", "-url", url, "-subject", subject, "-method", method]
    command += ["-timeout", f"{timeout}s", *payloads]
    with anyio.fail_after(timeout + 10):
        done = await anyio.run_process(command, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(line["n"] for line in lines) == list(range(len(payloads)))
    return sorted(lines, key=lambda line: line["n"])


@pytest.fixture
def go_handler(gopeer: Path, nats_server: Any, svc: str) -> Iterator[str]:
    """A Loom handler on nats.go for instance ``go1`` of ``svc``; yields the instance id."""
    process = start_ready(
        [str(gopeer), "serve", "-url", nats_server.url, "-svc", svc, "-inst", "go1"]
    )
    try:
        yield "go1"
    finally:
        stop_ready(process)


async def test_hare_py_calls_a_loom_handler_on_nats_go(
    nats_server: Any, svc: str, go_handler: str
) -> None:
    """The Go handler answers by instance; ok: false is RemoteError; nil payloads both ways."""
    async with RPCClient.start(
        nats_server.url, codec=JSON, convention=loom(svc, caller_id="hare")
    ) as client:
        with anyio.fail_after(20):
            answer = await client.request({"task": [1, "x"]}, f"{go_handler}.task.assign")
            nil = await client.request(None, f"{go_handler}.task.assign")
            nothing = await client.request({"a": 1}, f"{go_handler}.task.nothing")
            with pytest.raises(RemoteError) as failed:
                await client.request("boom", f"{go_handler}.task.fail")
            with pytest.raises(Unroutable):
                await client.request(1, f"{go_handler}.task.unknown")
            answers: dict[int, Any] = {}

            async def one(i: int) -> None:
                answers[i] = await client.request(i, f"{go_handler}.task.assign")

            async with anyio.create_task_group() as tg:
                for i in range(16):
                    tg.start_soon(one, i)
    trace_id = answer.pop("trace_id")
    assert answer == {
        "got": {"task": [1, "x"]},
        "by": "go1",
        "method": "task.assign",
        "caller_id": "hare",
    }
    assert len(trace_id) == 32 and int(trace_id, 16) > 0
    assert nil["got"] is None
    assert nothing is None  # {"ok": true} with the payload omitted
    assert failed.value.message == 'go handler refused "boom"'
    assert {i: a["got"] for i, a in answers.items()} == {i: i for i in range(16)}


async def test_a_loom_caller_on_nats_go_calls_a_hare_py_instance(
    gopeer: Path, nats_server: Any, svc: str
) -> None:
    """Each of 20 concurrent Go calls gets its own answer; a handler error is ok: false."""
    async with agents(nats_server.url, svc, "a", "b") as seen:
        payloads = [str(i) for i in range(20)] + ['"boom"', "null", '{"k":[1,2]}']
        results = await go_call(
            gopeer, nats_server.url, f"loom.rpc.{svc}.a.task.assign", "task.assign", *payloads
        )
    *counted, boom, nil, obj = results
    assert [(r["ok"], r["payload"], r["error"]) for r in counted] == [
        (True, {"got": i, "by": "a"}, "") for i in range(20)
    ]
    assert (boom["ok"], boom["payload"], boom["error"]) == (False, None, "it failed")
    assert (nil["ok"], nil["payload"]) == (True, {"got": None, "by": "a"})
    assert obj["payload"] == {"got": {"k": [1, 2]}, "by": "a"}
    assert not seen["b"] and len(seen["a"]) == len(payloads)
    assert {r.routing_key for r in seen["a"]} == {"task.assign"}
    assert {r.trace_id for r in seen["a"]} == {None}  # Loom's Go caller sends none


async def test_a_loom_wildcard_caller_on_nats_go_reaches_one_compat_instance(
    gopeer: Path, nats_server: Any, svc: str
) -> None:
    """Go requesting 'svc.*.method' gets each call answered once by one compat instance."""
    async with agents(nats_server.url, svc, "a", "b", compat_wildcard=True) as seen:
        results = await go_call(
            gopeer,
            nats_server.url,
            f"loom.rpc.{svc}.*.task.assign",
            "task.assign",
            *(str(i) for i in range(20)),
        )
        missing = await go_call(
            gopeer,
            nats_server.url,
            f"loom.rpc.{svc}.nosuch.task.assign",
            "task.assign",
            "1",
            timeout=0.5,
        )
    assert [(r["ok"], r["payload"]["got"]) for r in results] == [(True, i) for i in range(20)]
    assert {r["payload"]["by"] for r in results} <= {"a", "b"}
    assert len(seen["a"]) + len(seen["b"]) == 20  # each call handled once
    # The documented cost: the compat group takes (and drops) what no instance serves.
    assert missing[0]["fault"] == "nats: timeout"


async def test_without_compat_a_loom_wildcard_caller_on_nats_go_gets_no_responders(
    gopeer: Path, nats_server: Any, svc: str
) -> None:
    """Without compat_wildcard, nats-server answers Go's 'svc.*.method' with no responders."""
    async with agents(nats_server.url, svc, "a", "b") as seen:
        began = time.monotonic()
        results = await go_call(
            gopeer, nats_server.url, f"loom.rpc.{svc}.*.task.assign", "task.assign", "1", "2"
        )
        took = time.monotonic() - began
    assert [r["fault"] for r in results] == [NO_RESPONDERS, NO_RESPONDERS]
    assert took < 4.0  # at once, not after the 5 s timeout
    assert not seen["a"] and not seen["b"]
