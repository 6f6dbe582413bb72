"""The cloud convention on every broker: names, round trips, errors, the request-id cache."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from inbox import Inbox

from hare_py import (
    JSON,
    Caller,
    ConfigError,
    Connection,
    RemoteError,
    Reply,
    Request,
    RPCClient,
    RPCServer,
    Unroutable,
)
from hare_py.conventions import cloud
from hare_py.conventions.cloud import (
    REQUESTS_EXCHANGE,
    RESPONSES_EXCHANGE,
    RPCRequestDTO,
    RPCResponseDTO,
    server_queue,
)
from hare_py.transport.base import Properties

from .conftest import Target
from .declared import Queue, binding, check_topology, delete, raw_connection

pytestmark = pytest.mark.anyio


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"  # one routing-key word: no dots


class NotFound(Exception):
    status = 404


class Stock(RPCServer[list[Request]]):
    """``Stock.Get``/``Stock.Reserve`` on ``{"sku": ...}``; sku 'none' is NotFound, 'bad'
    raises KeyError. Remembers every request handled."""

    async def init(self, arg: Any) -> list[Request]:
        self.seen: list[Request] = []
        return self.seen

    async def handle_request(self, request: Request, caller: Caller, seen: list[Request]) -> Any:
        seen.append(request)
        sku = request.payload["sku"]
        if sku == "none":
            raise NotFound(f"no sku {sku!r}")
        if sku == "bad":
            raise KeyError(sku)
        action = request.routing_key.rsplit(".", 1)[-1]
        return Reply({"sku": sku, "action": action, "handled": len(seen)}, seen)


async def wait_for(predicate: Any, seconds: float = 10.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.01)


@asynccontextmanager
async def stock(
    target: Target, conn: Connection, service_type: str, **options: Any
) -> AsyncIterator[Stock]:
    """A Stock server for ``service_type``; its durable queue is deleted afterwards."""
    queue = options.get("queue") or server_queue(service_type)
    try:
        async with Stock.start(
            conn, codec=JSON, convention=cloud(service_type), **options
        ) as server:
            await wait_for(lambda: server.connected)
            yield server
    finally:
        await delete(target, queues=(queue,))


async def test_wire_names_types_and_arguments(target: Target) -> None:
    """Exchanges, server and reply queues, and bindings are exactly the documented ones."""
    service_type = unique("Inventory")
    async with (
        Connection(target.url) as conn,
        stock(target, conn, service_type),
        RPCClient.start(conn, codec=JSON, convention=cloud(service_type)) as client,
    ):
        with anyio.fail_after(20):
            await wait_for(lambda: client.connected)
            reply_queue = client.reply_queue
            assert reply_queue is not None
            queue = f"Cloud.Service.RPC1.Requests.{service_type}"
            await check_topology(
                target,
                exchanges={
                    "Cloud.Service.RPC1.Requests": ("topic", True),
                    "Cloud.Service.RPC1.Responses": ("direct", True),
                },
                queues={
                    queue: Queue(durable=True),
                    reply_queue: Queue(exclusive=True, auto_delete=True),
                },
                bindings={
                    binding(REQUESTS_EXCHANGE, queue, f"RPC.Cloud.{service_type}.*.*"),
                    binding(RESPONSES_EXCHANGE, reply_queue, reply_queue),
                },
            )


async def test_round_trip_and_resource_binding(target: Target) -> None:
    """Requests reach the service type's server, or a server bound by resource pattern."""
    service_type, caller_type, resource = unique("Inventory"), unique("Shop"), unique("Gadget")
    async with (
        Connection(target.url) as conn,
        stock(target, conn, service_type) as by_type,
        stock(
            target,
            conn,
            unique("Gadgets"),
            queue=f"gadgets.{resource}",
            routing_keys=[f"RPC.Cloud.*.{resource}.*"],
        ) as by_resource,
        RPCClient.start(conn, codec=JSON, convention=cloud(service_type)) as client,
        RPCClient.start(conn, codec=JSON, convention=cloud(caller_type)) as shop,
    ):
        with anyio.fail_after(10):
            reply = await client.request(
                {"sku": "a1"}, "Stock.Get", headers={"RequestClass": "GetStock"}
            )
            assert reply == {"sku": "a1", "action": "Get", "handled": 1}
            request = by_type.seen[0]
            assert request.routing_key == f"RPC.Cloud.{service_type}.Stock.Get"
            assert request.headers["RequestClass"] == "GetStock"
            assert request.headers["RequestId"] == request.correlation_id
            # RPC.Cloud.<Shop>.<Gadget>.Make: only the resource binding matches it.
            reply = await shop.request({"sku": "g1"}, f"{resource}.Make")
            assert reply == {"sku": "g1", "action": "Make", "handled": 1}
            assert by_resource.seen[0].routing_key == f"RPC.Cloud.{caller_type}.{resource}.Make"
            assert len(by_type.seen) == 1


async def test_error_replies_and_unroutable(target: Target) -> None:
    """Failures raise RemoteError with the status; unbound keys Unroutable; bad keys ConfigError."""
    service_type = unique("Inventory")
    async with (
        Connection(target.url) as conn,
        stock(target, conn, service_type),
        RPCClient.start(conn, codec=JSON, convention=cloud(service_type), timeout=30) as client,
        RPCClient.start(conn, codec=JSON, convention=cloud(unique("Nobody")), timeout=30) as lost,
    ):
        with anyio.fail_after(10):
            with pytest.raises(RemoteError) as info:
                await client.request({"sku": "bad"}, "Stock.Get")
            assert (info.value.type, info.value.message) == ("KeyError", "'bad'")
            assert isinstance(info.value.details, RPCResponseDTO)
            assert info.value.details.status == 500
            with pytest.raises(RemoteError) as info:
                await client.request({"sku": "none"}, "Stock.Get")
            assert info.value.type == "NotFound"
            assert info.value.details.status == 404
            with pytest.raises(Unroutable):
                await lost.request({"sku": "x"}, "Stock.Get")  # no server of that type
            with pytest.raises(ConfigError):
                await client.request({"sku": "x"}, "Stock.Get.Now")
            assert await client.request({"sku": "ok"}, "Stock.Get") == {
                "sku": "ok",
                "action": "Get",
                "handled": 3,
            }


async def test_repeated_request_id_is_handled_once(target: Target) -> None:
    """Two requests with one RequestId: the handler runs once and both get its answer."""
    service_type = unique("Inventory")
    async with (
        Connection(target.url) as conn,
        stock(target, conn, service_type) as server,
        RPCClient.start(conn, codec=JSON, convention=cloud(service_type)) as client,
    ):
        with anyio.fail_after(10):
            same = {"RequestId": "reserve-42"}
            first = await client.request({"sku": "r"}, "Stock.Reserve", headers=same)
            second = await client.request({"sku": "r"}, "Stock.Reserve", headers=same)
            assert first == second == {"sku": "r", "action": "Reserve", "handled": 1}
            assert len(server.seen) == 1
            third = await client.request({"sku": "r"}, "Stock.Reserve")  # a new request id
            assert third["handled"] == 2


async def test_envelopes_on_the_wire(target: Target) -> None:
    """A foreign caller's DTOs are answered with PascalCase RPCResponseDTOs, cached by RequestId."""
    service_type = unique("Inventory")
    async with (
        Connection(target.url) as conn,
        stock(target, conn, service_type),
        raw_connection(target.url, "cloud-like-caller") as raw,
    ):
        with anyio.fail_after(10):
            channel = await raw.open_channel()
            reply_queue = (await channel.queue_declare("", exclusive=True)).name
            await channel.queue_bind(reply_queue, RESPONSES_EXCHANGE, "my.reply.key")
            replies = Inbox()
            await channel.basic_consume(reply_queue, replies, no_ack=True)
            for cid in ("c1", "c2"):
                dto = {
                    "replyRoutingKey": "my.reply.key",  # camelCase is read too
                    "requestId": "req-1",
                    "correlationId": cid,
                    "requestClass": "GetStock",
                    "payload": {"sku": "w"},  # an embedded JSON value is read too
                }
                await channel.basic_publish(
                    json.dumps(dto).encode(),
                    exchange=REQUESTS_EXCHANGE,
                    routing_key=f"RPC.Cloud.{service_type}.Stock.Get",
                    properties=Properties(content_type="application/json"),
                )
            first, second = await replies.get(), await replies.get()
            raw_first = json.loads(first.body)
            assert set(raw_first) == {
                "ResponseId",
                "CorrelationId",
                "ResponseClass",
                "ResponseType",
                "Payload",
                "Status",
                "Error",
            }
            one, two = RPCResponseDTO.decode(first.body), RPCResponseDTO.decode(second.body)
            assert (one.correlation_id, two.correlation_id) == ("c1", "c2")
            assert one.response_id == two.response_id  # answered once, from the cache
            assert (one.status, one.error) == (200, None)
            assert json.loads(one.payload or "") == {"sku": "w", "action": "Get", "handled": 1}
            assert one.payload == two.payload
            assert first.properties.correlation_id == "c1"
            assert RPCRequestDTO.decode(json.dumps(dto).encode()).payload == '{"sku":"w"}'
