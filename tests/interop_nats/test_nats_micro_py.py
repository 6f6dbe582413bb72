"""The nats() convention and the NATS service API between hare_py and nats-py.

nats-py plays the NATS tooling and the other services of a system: a plain
requester, a ``nats.micro`` service beside hare_py's, and a discoverer that
sends ``$SRV.PING``/``INFO``/``STATS`` and reads every answer, with nats-py's
own micro readers as well as micro's schema.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import nats as nats_py
import pytest
from micro_schema import check, shape
from nats.aio.client import Client as NatsPy
from nats.micro import add_service
from nats.micro.request import Request as MicroRequest, ServiceError
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

from hare_py import JSON, Caller, RemoteError, Reply, Request, RPCClient, RPCServer
from hare_py.conventions import loom, nats

pytestmark = pytest.mark.anyio


class Upper(RPCServer[int]):
    async def init(self, arg: Any) -> int:
        return 0

    async def handle_request(self, request: Request, caller: Caller, seen: int) -> Any:
        if request.payload == b"boom":
            raise ValueError("it failed")
        return Reply(request.payload.upper(), seen + 1)


@pytest.fixture
def svc() -> str:
    return f"svc-{secrets.token_hex(4)}"


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[NatsPy]:
    nc = await nats_py.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


@asynccontextmanager
async def started(*runners: Any) -> AsyncIterator[list[Any]]:
    async with AsyncExitStack() as stack:
        actors = [await stack.enter_async_context(r) for r in runners]
        with anyio.fail_after(5):
            while not all(a.connected for a in actors):
                await anyio.sleep(0.005)
        yield actors


async def gather(nc: NatsPy, subject: str, names: set[str]) -> dict[str, Any]:
    """Ask ``subject`` and collect the answers (by service name) until ``names`` answered."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    answers: dict[str, Any] = {}
    try:
        while not names <= set(answers):
            doc = json.loads((await sub.next_msg(timeout=5)).data)
            answers[doc["name"]] = doc
    finally:
        await sub.unsubscribe()
    return answers


async def test_nats_py_calls_a_hare_py_nats_service(nats_server: Any, svc: str) -> None:
    """A nats-py request gets the reply, and an error as micro's headers with an empty body."""
    runner = Upper.start(nats_server.url, convention=nats(svc), routing_keys=[f"{svc}.upper"])
    async with started(runner), connected(nats_server.url) as nc:
        with anyio.fail_after(10):
            assert (await nc.request(f"{svc}.upper", b"hi", timeout=5)).data == b"HI"
            failed = await nc.request(f"{svc}.upper", b"boom", timeout=5)
    assert failed.data == b""
    assert failed.headers is not None
    assert failed.headers["Nats-Service-Error-Code"] == "500"
    assert failed.headers["Nats-Service-Error"] == "ValueError: it failed"


async def test_a_hare_py_client_calls_a_nats_py_micro_service(nats_server: Any, svc: str) -> None:
    """hare_py's nats() client gets a micro service's replies, and its errors as RemoteError."""

    async def handler(request: MicroRequest) -> None:
        if request.data == b"missing":
            raise ServiceError("404", "no such key")
        if request.data == b"boom":
            raise ValueError("it failed")
        await request.respond(request.data.upper())

    async with connected(nats_server.url) as nc:
        service = await add_service(nc, name=svc, version="1.0.0")
        await service.add_endpoint(name="upper", subject=f"{svc}.upper", handler=handler)
        try:
            async with started(RPCClient.start(nats_server.url, convention=nats())) as (client,):
                with anyio.fail_after(10):
                    assert await client.request(b"hi", f"{svc}.upper") == b"HI"
                    with pytest.raises(RemoteError) as missing:
                        await client.request(b"missing", f"{svc}.upper")
                    with pytest.raises(RemoteError) as failed:
                        await client.request(b"boom", f"{svc}.upper")
        finally:
            await service.stop()
    assert (missing.value.type, missing.value.message) == ("404", "no such key")
    assert failed.value.type == "500" and "it failed" in failed.value.message


async def test_nats_py_discovers_hare_py_services_beside_its_own_micro_service(
    nats_server: Any, svc: str
) -> None:
    """$SRV.PING/INFO/STATS: hare_py's answers have nats-py micro's keys and types, and parse."""
    ours, theirs, agent = f"{svc}-hare", f"{svc}-py", f"{svc}-loom"
    config: dict[str, Any] = {
        "version": "1.0.0",
        "description": "upper-cases",
        "metadata": {"team": "x"},
    }

    async def handler(request: MicroRequest) -> None:
        if request.data == b"boom":
            raise ValueError("it failed")
        await request.respond(request.data.upper())

    runners = (
        Upper.start(nats_server.url, convention=nats(ours, **config), routing_keys=[f"{ours}.up"]),
        Upper.start(
            nats_server.url,
            codec=JSON,
            convention=loom(agent, instance_id="inst1"),
            routing_keys=["task.assign"],
        ),
    )
    async with connected(nats_server.url) as nc, started(*runners) as (server, _):
        service = await add_service(nc, name=theirs, **config)
        await service.add_endpoint(name="up", subject=f"{theirs}.up", handler=handler)
        try:
            with anyio.fail_after(20):
                for name in (ours, theirs):
                    await nc.request(f"{name}.up", b"a", timeout=5)
                    await nc.request(f"{name}.up", b"boom", timeout=5)
                answers = {
                    verb: await gather(nc, f"$SRV.{verb}", {ours, theirs, agent})
                    for verb in ("PING", "INFO", "STATS")
                }
        finally:
            await service.stop()
    for verb, by_name in answers.items():
        for name in (ours, theirs, agent):
            check(verb, by_name[name])
        assert shape(by_name[ours]) == shape(by_name[theirs]), verb
    ServicePing.from_dict(answers["PING"][ours])
    assert ServiceInfo.from_dict(answers["INFO"][ours]).endpoints[0].subject == f"{ours}.up"
    stats = ServiceStats.from_dict(answers["STATS"][ours])
    assert stats.id == server.convention.service_id
    assert [(e.num_requests, e.num_errors) for e in stats.endpoints] == [(2, 1)]
    theirs_stats = answers["STATS"][theirs]["endpoints"][0]
    assert (theirs_stats["num_requests"], theirs_stats["num_errors"]) == (2, 1)
