"""One trace from caller to server and on, on every transport and convention hare_py has."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from hare_py import Caller, Reply, Request, RPCClient, RPCServer

from .conftest import CODEC, PLACES, Otel, Site

pytestmark = pytest.mark.anyio


class Back(RPCServer[None]):
    """The last hop: answers with what it got."""

    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        return Reply({"back": request.payload}, state)


class Front(RPCServer[Any]):
    """Asks Back (through the client it is given) before it answers: a nested call."""

    async def init(self, arg: Any) -> Any:
        return arg  # (client of Back, its routing key)

    async def handle_request(self, request: Request, caller: Caller, state: Any) -> Any:
        back, key = state
        answer = await back.request(request.payload, key)
        return Reply({"front": answer}, state)


async def wait_connected(*actors: Any) -> None:
    with anyio.fail_after(10):
        while not all(actor.connected for actor in actors):
            await anyio.sleep(0.005)


async def chain(site: Site, otel: Otel, payload: Any) -> Any:
    """client -> Front -> (nested client) -> Back; returns the answer."""
    telemetry = otel.telemetry
    async with AsyncExitStack() as stack:
        back = await stack.enter_async_context(
            Back.start(site.url, codec=CODEC, telemetry=telemetry, **site.server_options("back"))
        )
        to_back = await stack.enter_async_context(
            RPCClient.start(
                site.url,
                codec=CODEC,
                telemetry=telemetry,
                timeout=10,
                **site.client_options("back"),
            )
        )
        front = await stack.enter_async_context(
            Front.start(
                site.url,
                arg=(to_back, site.key("back")),
                codec=CODEC,
                telemetry=telemetry,
                **site.server_options("front"),
            )
        )
        client = await stack.enter_async_context(
            RPCClient.start(
                site.url,
                codec=CODEC,
                telemetry=telemetry,
                timeout=10,
                **site.client_options("front"),
            )
        )
        await wait_connected(back, to_back, front, client)
        tracer = otel.tracer_provider.get_tracer("tests")
        with anyio.fail_after(15), tracer.start_as_current_span("caller"):
            return await client.request(payload, site.key("front"))


def by_kind(spans: list[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.kind is kind), key=lambda s: s.start_time or 0)


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_nested_call_chain_is_one_trace(site: Site, otel: Otel) -> None:
    """Caller, client, Front, nested client, Back: one trace, each span the child of the last."""
    answer = await chain(site, otel, {"n": 1})
    assert answer == {"front": {"back": {"n": 1}}}

    spans = otel.finished()
    (caller,) = [s for s in spans if s.name == "caller"]
    outer, nested = by_kind(spans, SpanKind.CLIENT)
    front, back = by_kind(spans, SpanKind.SERVER)
    assert site.service("front") in front.name and site.service("back") in back.name
    assert {s.context.trace_id for s in spans} == {caller.context.trace_id}
    assert parent_of(outer) == caller.context.span_id
    assert parent_of(front) == outer.context.span_id
    assert front.parent is not None and front.parent.is_remote
    assert parent_of(nested) == front.context.span_id
    assert parent_of(back) == nested.context.span_id
    for span in (outer, nested, front, back):
        assert span.status.status_code is StatusCode.UNSET
        assert span.attributes is not None
        assert span.attributes["hare_py.outcome"] == "ok"
        assert span.attributes["rpc.system"] == "hare_py"
    # The client span covers the server's (request to reply).
    assert outer.start_time is not None and front.start_time is not None
    assert outer.end_time is not None and front.end_time is not None
    assert outer.start_time <= front.start_time and front.end_time <= outer.end_time


async def test_attributes_follow_the_semantic_conventions(site: Site, otel: Otel) -> None:
    """Client and server spans name the system, destination, operation, ids and body size."""
    await chain(site, otel, {"n": 2})
    spans = otel.finished()
    outer = by_kind(spans, SpanKind.CLIENT)[0]
    front = by_kind(spans, SpanKind.SERVER)[0]
    system = {"hare": "rabbitmq", "loom": "nats", "nats": "nats", "amqp10": "amqp"}
    for span, operation in ((outer, "send"), (front, "process")):
        attributes = span.attributes or {}
        assert attributes["messaging.system"] == system[site.place.convention]
        assert attributes["messaging.operation.type"] == operation
        assert attributes["messaging.destination.name"]
        body = attributes["messaging.message.body.size"]
        assert isinstance(body, int) and body > 0
    out = outer.attributes or {}
    assert out["rpc.method"] == site.key("front")
    assert isinstance(out["messaging.message.conversation_id"], str)
    if site.place.convention == "hare":  # the client's correlation id reaches the server
        conversation = (front.attributes or {})["messaging.message.conversation_id"]
        assert conversation == out["messaging.message.conversation_id"]
        key = "messaging.rabbitmq.destination.routing_key"
        assert out[key] == (front.attributes or {})[key] == site.service("front")


LOOM = [p for p in PLACES if p.values[0].convention == "loom"]


@pytest.mark.parametrize("place", LOOM, indirect=True)
async def test_loom_envelopes_carry_the_trace_id(site: Site, otel: Otel) -> None:
    """On Loom the envelope's trace_id is the current trace's id, as the server sees it."""
    seen: list[str | None] = []

    class Recorder(RPCServer[None]):
        async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
            seen.append(request.trace_id)
            return Reply(None, state)

    async with (
        Recorder.start(
            site.url, codec=CODEC, telemetry=otel.telemetry, **site.server_options("rec")
        ) as server,
        RPCClient.start(
            site.url, codec=CODEC, telemetry=otel.telemetry, **site.client_options("rec")
        ) as client,
    ):
        await wait_connected(server, client)
        with anyio.fail_after(10):
            await client.request(1, site.key("rec"))
    (span,) = by_kind(otel.finished(), SpanKind.CLIENT)
    assert seen == [format(span.context.trace_id, "032x")]
