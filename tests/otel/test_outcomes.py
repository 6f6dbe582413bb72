"""Outcomes, faults and metrics: span status per outcome, propagation through reconnects,
republishes and restarts, hostile trace headers, and the metrics each records."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from hare_py import (
    Caller,
    ClientStopped,
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
from hare_py.testing import break_channel

from .conftest import CODEC, PLACES, Otel, Site
from .test_trace_chain import by_kind, parent_of, wait_connected

pytestmark = pytest.mark.anyio

SANDBOX = [p for p in PLACES if p.values[0].transport == "sandbox"]
AMQP_0_9_1 = [p for p in PLACES if p.values[0].transport in ("sandbox", "rabbitmq")]


class Worker(RPCServer[Any]):
    """Echoes; raises for "boom"; holds "hold" for good and the first "again"."""

    async def init(self, arg: Any) -> Any:
        self.held: list[Caller] = []
        self.seen: list[Any] = []
        return arg

    async def handle_request(self, request: Request, caller: Caller, state: Any) -> Any:
        self.seen.append(request.payload)
        if request.payload == "boom":
            raise KeyError("boom")
        if request.payload == "hold" or (request.payload == "again" and len(self.seen) == 1):
            self.held.append(caller)
            return NoReply(state)
        return Reply(request.payload, state)

    async def handle_cast(self, message: Any, state: Any) -> Any:
        raise RuntimeError("crash on purpose")


class Local(RPCClient[Any]):
    """Answers "cached" itself; crashes on a cast."""

    async def handle_request(self, request: Request, caller: Caller, state: Any) -> Any:
        if request.payload == "cached":
            return Reply("from cache", state)
        return await super().handle_request(request, caller, state)

    async def handle_cast(self, message: Any, state: Any) -> Any:
        raise RuntimeError("crash on purpose")


def outcome(span: Any) -> Any:
    return (span.attributes or {}).get("hare_py.outcome")


def error_type(span: Any) -> Any:
    return (span.attributes or {}).get("error.type")


@pytest.mark.parametrize("place", SANDBOX, indirect=True)
async def test_each_outcome_is_recorded_with_its_status(site: Site, otel: Otel) -> None:
    """ok and local leave the status unset; each error sets ERROR and error.type."""
    t = otel.telemetry
    async with (
        Worker.start(site.url, codec=CODEC, telemetry=t, queue="work") as server,
        Local.start(site.url, codec=CODEC, telemetry=t, timeout=0.3) as client,
    ):
        await wait_connected(server, client)
        with anyio.fail_after(10):
            assert await client.request("hi", "work") == "hi"
            assert await client.request("cached", "work") == "from cache"
            with pytest.raises(RemoteError):
                await client.request("boom", "work")
            with pytest.raises(Unroutable):
                await client.request("x", "nowhere")
            with pytest.raises(RequestTimeout):
                await client.request("hold", "work")
            async with anyio.create_task_group() as tg:

                async def lose() -> None:
                    while len(server.seen) < 4:
                        await anyio.sleep(0.005)
                    await break_channel(client)

                tg.start_soon(lose)
                with pytest.raises(ConnectionLost):
                    await client.request("hold", "work", timeout=5)
    clients = by_kind(otel.finished(), SpanKind.CLIENT)
    got = [(outcome(s), s.status.status_code, error_type(s)) for s in clients]
    error = StatusCode.ERROR
    assert got == [
        ("ok", StatusCode.UNSET, None),
        ("local", StatusCode.UNSET, None),
        ("RemoteError", error, "RemoteError"),
        ("Unroutable", error, "Unroutable"),
        ("RequestTimeout", error, "RequestTimeout"),
        ("ConnectionLost", error, "ConnectionLost"),
    ]
    servers = by_kind(otel.finished(), SpanKind.SERVER)
    (boom,) = [s for s in servers if outcome(s) == "KeyError"]
    assert boom.status.status_code is StatusCode.ERROR
    assert [e.name for e in boom.events] == ["exception"]
    points = otel.points("rpc.client.call.duration")
    counts = {p.attributes["hare_py.outcome"]: p.count for p in points}
    assert counts == dict.fromkeys(
        ["ok", "local", "RemoteError", "Unroutable", "RequestTimeout", "ConnectionLost"], 1
    )
    (in_flight,) = otel.points("hare_py.client.requests.in_flight")
    assert in_flight.value == 0
    handled = otel.points("rpc.server.call.duration")
    # The two held requests leave unanswered when the server stops (the broker keeps them).
    counts = {p.attributes["hare_py.outcome"]: p.count for p in handled}
    assert counts == {"ok": 1, "KeyError": 1, "ClientStopped": 2}


@pytest.mark.parametrize("place", AMQP_0_9_1, indirect=True)
async def test_propagation_survives_a_reconnect_and_a_republish(site: Site, otel: Otel) -> None:
    """An idempotent request republished after its channel died keeps its trace: both
    deliveries are children of its one client span, which shows the republish."""
    t = otel.telemetry
    async with (
        Worker.start(site.url, codec=CODEC, telemetry=t, queue=site.service("re")) as server,
        RPCClient.start(site.url, codec=CODEC, telemetry=t, timeout=10) as client,
    ):
        await wait_connected(server, client)
        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:

                async def lose() -> None:
                    while not server.seen:
                        await anyio.sleep(0.005)
                    assert await break_channel(client)

                tg.start_soon(lose)
                answer = await client.request("again", site.service("re"), idempotent=True)
        assert answer == "again"
    (span,) = by_kind(otel.finished(), SpanKind.CLIENT)
    assert [e.name for e in span.events] == ["hare_py.republish"]
    servers = by_kind(otel.finished(), SpanKind.SERVER)
    assert len(servers) == 2  # the held first delivery ends with the server
    assert {parent_of(s) for s in servers} == {span.context.span_id}
    assert {s.context.trace_id for s in servers} == {span.context.trace_id}
    assert sum(p.value for p in otel.points("hare_py.client.republishes")) == 1
    reconnects = otel.points("hare_py.reconnects")
    assert sum(p.value for p in reconnects if p.attributes["hare_py.role"] == "client") >= 1


@pytest.mark.parametrize("place", SANDBOX, indirect=True)
async def test_a_request_retried_after_a_restart_shows_it(site: Site, otel: Otel) -> None:
    """A request that waited through a supervisor restart of its client carries a restart
    event, and the restart is counted."""
    t = otel.telemetry
    async with (
        Worker.start(site.url, codec=CODEC, telemetry=t, queue="work") as server,
        Local.start(site.url, codec=CODEC, telemetry=t, timeout=10, restart_backoff=None) as c,
    ):
        await wait_connected(server, c)
        with anyio.fail_after(10):
            c.cast("crash")  # handled before the request: the next incarnation sends it
            assert await c.request("hi", "work") == "hi"
    (span,) = by_kind(otel.finished(), SpanKind.CLIENT)
    assert [e.name for e in span.events] == ["hare_py.restart"]
    assert outcome(span) == "ok"
    restarts = otel.points("hare_py.actor.restarts")
    assert [(p.attributes["hare_py.role"], p.value) for p in restarts] == [("client", 1)]


@pytest.mark.parametrize("place", SANDBOX, indirect=True)
async def test_a_redelivery_is_counted(site: Site, otel: Otel) -> None:
    """A request the broker redelivers after its server crashed is counted and marked."""
    t = otel.telemetry
    async with (
        Worker.start(site.url, codec=CODEC, telemetry=t, queue="work") as server,
        RPCClient.start(site.url, codec=CODEC, timeout=10) as client,
    ):
        await wait_connected(server, client)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def crash() -> None:
                    while not server.seen:
                        await anyio.sleep(0.005)
                    server.cast("crash")  # the held request goes back to the queue

                tg.start_soon(crash)
                # The restarted server holds it too (first "again" of its incarnation):
                # its deadline ends the call, after the redelivery.
                with pytest.raises(RequestTimeout):
                    await client.request("again", "work", timeout=1)
    spans = by_kind(otel.finished(), SpanKind.SERVER)
    assert [(s.attributes or {}).get("hare_py.redelivered", False) for s in spans] == [False, True]
    points = otel.points("hare_py.server.redeliveries")
    assert [(p.attributes["hare_py.cause"], p.value) for p in points] == [("broker", 1)]
    restarts = otel.points("hare_py.actor.restarts")
    assert [(p.attributes["hare_py.role"], p.value) for p in restarts] == [("server", 1)]


HOSTILE = [
    {},  # a peer that sends no context at all
    {"traceparent": "garbage"},
    {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"},  # all-zero ids: invalid
    {"traceparent": "ff-" + "a" * 32 + "-" + "b" * 16 + "-01"},  # version ff is forbidden
    {"traceparent": "00-" + "a" * 9000},
    {"Traceparent": "nonsense", "tracestate": "=" * 10_000, "baggage": "%%%;;;=,=,"},
    {"baggage": ",".join(f"k{i}=v" for i in range(500)), "tracestate": "a=b," * 100},
]


async def test_malformed_trace_headers_break_nothing(site: Site, otel: Otel) -> None:
    """A peer sending no context or a malformed one gets its answer, and the server's span
    starts a new trace of its own."""
    t = otel.telemetry
    server_options = site.server_options("hostile")
    async with (
        Worker.start(site.url, codec=CODEC, telemetry=t, **server_options) as server,
        # An untraced peer: its headers reach the server as it wrote them.
        RPCClient.start(
            site.url, codec=CODEC, telemetry=False, timeout=10, **site.client_options("hostile")
        ) as client,
    ):
        await wait_connected(server, client)
        with anyio.fail_after(15):
            for i, headers in enumerate(HOSTILE):
                assert await client.request(i, site.key("hostile"), headers=headers) == i
    spans = by_kind(otel.finished(), SpanKind.SERVER)
    assert len(spans) == len(HOSTILE)
    assert all(s.parent is None and outcome(s) == "ok" for s in spans)
    assert len({s.context.trace_id for s in spans}) == len(HOSTILE)


@pytest.mark.parametrize("place", SANDBOX, indirect=True)
async def test_non_string_trace_headers_break_nothing(site: Site, otel: Otel) -> None:
    """AMQP headers of other types under the propagation names are ignored."""
    t = otel.telemetry
    async with (
        Worker.start(site.url, codec=CODEC, telemetry=t, queue="work") as server,
        RPCClient.start(site.url, codec=CODEC, telemetry=False, timeout=10) as client,
    ):
        await wait_connected(server, client)
        with anyio.fail_after(10):
            for headers in (
                {"traceparent": 7},
                {"traceparent": {"nested": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}},
                {"traceparent": ["not", "a", "string"], "baggage": b"\xff\xfe"},
                {"traceparent": b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"},
            ):
                assert await client.request("x", "work", headers=headers) == "x"
    spans = by_kind(otel.finished(), SpanKind.SERVER)
    # Only the last one, bytes holding a valid traceparent, continues a trace.
    assert [s.parent is not None for s in spans] == [False, False, False, True]
    assert spans[-1].context.trace_id == int("a" * 32, 16)


@pytest.mark.parametrize("place", SANDBOX, indirect=True)
async def test_a_request_to_a_stopped_client_ends_its_span(site: Site, otel: Otel) -> None:
    """A request refused because the client has stopped still ends its span, as an error."""
    async with RPCClient.start(site.url, telemetry=otel.telemetry) as client:
        pass
    with pytest.raises(ClientStopped):
        await client.request(b"late", "work")
    (span,) = by_kind(otel.finished(), SpanKind.CLIENT)
    assert outcome(span) == "ClientStopped" and span.status.status_code is StatusCode.ERROR
    (in_flight,) = otel.points("hare_py.client.requests.in_flight")
    assert in_flight.value == 0
