"""A Cloud.Service.RPC1 server: the service type "Inventory", resource "Stock".

    python examples/cloud_server.py              # in-memory broker: serves, asks itself, exits
    HARE_URL=amqp://guest:guest@localhost/ python examples/cloud_server.py   # serves until ^C

It consumes the durable queue ``Cloud.Service.RPC1.Requests.Inventory``,
bound to the ``Cloud.Service.RPC1.Requests`` exchange (topic) with
``RPC.Cloud.Inventory.*.*``, and answers each RPCRequestDTO with an
RPCResponseDTO on ``Cloud.Service.RPC1.Responses``: ``Status`` 200 and the
result as ``Payload``, or the error's ``status`` (404, 409, 400; else 500) and
its message as ``Error``. A repeated ``RequestId`` is answered from the
server's cache without reserving twice. examples/cloud_client.py calls it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import structlog

from hare_py import JSON, Caller, Connection, Reply, Request, RPCClient, RPCServer
from hare_py.conventions import cloud
from hare_py.testing import SandboxBroker

SERVICE_TYPE = "Inventory"
# RequestClass -> ResponseClass of a successful answer.
RESPONSE_CLASSES = {"GetStock": "StockLevel", "ReserveStock": "Reservation"}

log = structlog.get_logger("cloud_server")


class NotFound(Exception):
    status = 404


class Conflict(Exception):
    status = 409


class BadRequest(Exception):
    status = 400


class Inventory(RPCServer[dict[str, int]]):
    """``Stock.Get {"sku"}`` and ``Stock.Reserve {"sku", "quantity"}`` on a stock table."""

    async def init(self, arg: Any) -> dict[str, int]:
        return {"apple": 5, "pear": 2}

    async def handle_request(self, request: Request, caller: Caller, stock: dict[str, int]) -> Any:
        action = request.routing_key.rsplit(".", 1)[-1]  # RPC.Cloud.Inventory.Stock.<Action>
        sku = request.payload.get("sku") if isinstance(request.payload, dict) else None
        if sku not in stock:
            raise NotFound(f"no such sku: {sku!r}")
        log.info(
            "inventory.request", action=action, sku=sku, request_id=request.headers.get("RequestId")
        )
        if action == "Get":
            return Reply({"sku": sku, "available": stock[sku]}, stock)
        if action == "Reserve":
            quantity = int(request.payload.get("quantity", 1))
            if quantity > stock[sku]:
                raise Conflict(f"only {stock[sku]} {sku} left, {quantity} asked")
            left = stock[sku] - quantity
            return Reply(
                {"sku": sku, "reserved": quantity, "available": left}, {**stock, sku: left}
            )
        raise BadRequest(f"unknown action {action!r}")

    async def handle_call(self, message: Any, caller: Caller, stock: dict[str, int]) -> Any:
        return Reply(dict(stock), stock)


def serve(conn: Connection) -> AbstractAsyncContextManager[Inventory]:
    """The inventory server on ``conn``."""
    return Inventory.start(
        conn, codec=JSON, convention=cloud(SERVICE_TYPE, response_class=RESPONSE_CLASSES.get)
    )


async def main(url: str | None = None, *, serve_for: float | None = None) -> dict[str, Any]:
    """Serve on ``url`` (default ``HARE_URL``) for ``serve_for`` seconds (default: until
    cancelled). On the in-memory broker, which nobody else can reach, ask it once and stop."""
    url = url or os.environ.get("HARE_URL")
    sandbox = None if url else SandboxBroker()
    result: dict[str, Any] = {"reply": None}
    try:
        async with (
            Connection(url or sandbox.url, name="cloud-example-server") as conn,  # type: ignore[union-attr]
            serve(conn) as server,
        ):
            if sandbox is not None:
                async with RPCClient.start(
                    conn, codec=JSON, convention=cloud(SERVICE_TYPE)
                ) as client:
                    result["reply"] = await client.request({"sku": "apple"}, "Stock.Get")
                    log.info("inventory.demo", reply=result["reply"])
            else:
                log.info("inventory.serving", queue=server.queue)
                await anyio.sleep(math.inf if serve_for is None else serve_for)
            result["stock"] = await server.call("stock")
    finally:
        if sandbox is not None:
            sandbox.close()
    return result


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        outcome = anyio.run(main)
    except KeyboardInterrupt:
        sys.exit(0)
    print(outcome)
