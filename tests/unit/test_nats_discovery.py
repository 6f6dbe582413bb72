"""The NATS driver learns the cluster from INFO ``connect_urls``, the handshake's INFO
included (a server sends another only when the cluster changes)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import anyio.abc
import pytest

from hare_py.transport.base import ConnectOptions
from hare_py.transport.nats._connection import connect
from hare_py.transport.url import parse_url

pytestmark = pytest.mark.anyio

INFO: dict[str, Any] = {
    "server_id": "NFAKE",
    "server_name": "fake",
    "version": "2.9.10",
    "proto": 1,
    "headers": True,
    "max_payload": 1048576,
}


async def _play(listener: anyio.abc.SocketListener, info: dict[str, Any], later: bytes) -> None:
    """One client: INFO, its CONNECT and PING, our PONG, then ``later``; then hold on."""
    stream = await listener.accept()
    async with stream:
        await stream.send(b"INFO %s \r\n" % json.dumps(info).encode())
        seen = b""
        while b"PING\r\n" not in seen:
            seen += await stream.receive()
        await stream.send(b"PONG\r\n" + later)
        async for data in stream:
            if b"PING\r\n" in data:
                await stream.send(b"PONG\r\n")


async def _discovered(connect_urls: list[str], later: bytes = b"") -> list[tuple[str, int]]:
    multi = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    listener = multi.listeners[0]
    assert isinstance(listener, anyio.abc.SocketListener)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    info = INFO | {
        "port": port,
        "connect_urls": [u.replace("SELF", str(port)) for u in connect_urls],
    }
    with anyio.fail_after(10):
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(_play, listener, info, later)
            url = parse_url(f"nats://127.0.0.1:{port}?heartbeat=0")
            async with connect(url, ConnectOptions()) as conn:
                if later:
                    await conn.round_trip(5)  # the later INFO came before this PONG
                found = [(u.host, u.port) for u in conn.discovered_urls]
            tg.cancel_scope.cancel()
    return found


async def test_the_handshake_info_names_the_other_servers() -> None:
    """connect_urls in the first INFO are discovered, the server's own address left out."""
    found = await _discovered(["127.0.0.1:SELF", "127.0.0.1:4301", "127.0.0.2:4302"])
    assert found == [("127.0.0.1", 4301), ("127.0.0.2", 4302)]


async def test_a_later_info_replaces_the_list() -> None:
    """An INFO after the handshake (the cluster changed) is what the driver knows then."""
    later = b"INFO %s \r\n" % json.dumps(INFO | {"connect_urls": ["127.0.0.1:4303"]}).encode()
    found = await _discovered(["127.0.0.1:4301"], later)
    assert found == [("127.0.0.1", 4303)]
