"""Call the Cloud.Service.RPC1 service type "Inventory".

    python examples/cloud_client.py              # in-memory broker: runs the server here too
    HARE_URL=amqp://guest:guest@localhost/ python examples/cloud_client.py
        # calls whatever serves "Inventory" there (examples/cloud_server.py)

``client.request(payload, "Stock.Get")`` publishes an RPCRequestDTO to
``Cloud.Service.RPC1.Requests`` with the routing key
``RPC.Cloud.Inventory.Stock.Get``; the answer comes back as an RPCResponseDTO
through ``Cloud.Service.RPC1.Responses`` to this client's exclusive queue. A
failed answer raises ``RemoteError`` (``details`` is the response envelope,
with its ``status``). The ``RequestId`` header makes a retry idempotent: the
server answers a repeated one from its cache.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import structlog

from hare_py import JSON, Connection, RemoteError, RPCClient, Unroutable
from hare_py.conventions import cloud
from hare_py.testing import SandboxBroker

SERVICE_TYPE = "Inventory"
HERE = Path(__file__).resolve().parent

log = structlog.get_logger("cloud_client")


async def shop(conn: Connection, *, wait: float = 10.0) -> dict[str, Any]:
    """Look up stock, reserve twice under one RequestId (once in effect), ask for a
    missing sku; returns what happened."""
    out: dict[str, Any] = {}
    async with RPCClient.start(
        conn, codec=JSON, convention=cloud(SERVICE_TYPE), timeout=5.0
    ) as client:
        with anyio.fail_after(wait):  # the server may still be starting: wait for it
            while True:
                try:
                    out["level"] = await client.request(
                        {"sku": "apple"}, "Stock.Get", headers={"RequestClass": "GetStock"}
                    )
                    break
                except Unroutable:
                    await anyio.sleep(0.1)
        order = {"RequestId": "order-1001", "RequestClass": "ReserveStock"}
        out["reserved"] = [
            await client.request({"sku": "apple", "quantity": 2}, "Stock.Reserve", headers=order)
            for _ in range(2)  # a retry: answered from the server's cache, not reserved again
        ]
        try:
            await client.request({"sku": "plum"}, "Stock.Get")
        except RemoteError as exc:
            out["missing"] = (exc.type, exc.message, exc.details.status)
        log.info("inventory.replies", **out)
    return out


async def main(url: str | None = None) -> dict[str, Any]:
    """Call the Inventory service through ``url`` (default ``HARE_URL``, else in memory)."""
    url = url or os.environ.get("HARE_URL")
    if url:
        async with Connection(url, name="cloud-example-client") as conn:
            return await shop(conn)
    # Nobody else can reach an in-memory broker: run the example server in this process.
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from cloud_server import serve

    with SandboxBroker() as broker:
        async with Connection(broker.url) as conn, serve(conn):
            return await shop(conn)


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    print(anyio.run(main))
