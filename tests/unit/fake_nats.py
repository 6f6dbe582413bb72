"""A scripted fake nats-server on 127.0.0.1: the test plays the server, op by op.

``fake_server()`` listens on a free loopback port; ``server.accept()`` hands
over the next client as a ``Peer``, which reads the client's operations
(``op()``, with their payloads) and sends whatever bytes the test wants,
well-formed or not. ``connected(...)`` runs the real ``connect()`` against
it and returns the connection and its peer after the handshake.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from hare_py.transport.base import ConnectOptions
from hare_py.transport.nats._connection import NatsConnection, connect
from hare_py.transport.url import parse_url

INFO: dict[str, Any] = {
    "server_id": "NFAKE",
    "server_name": "fake",
    "version": "2.9.10",
    "proto": 1,
    "headers": True,
    "max_payload": 1048576,
    "client_id": 1,
}


def info_line(**changes: Any) -> bytes:
    return b"INFO %s \r\n" % json.dumps(INFO | changes).encode()


class Op:
    """One client operation: its verb, its arguments and its payload (PUB/HPUB)."""

    def __init__(self, line: bytes, payload: bytes | None = None) -> None:
        self.line = line
        self.verb, _, rest = line.partition(b" ")
        self.args = rest.split()
        self.payload = payload

    def __repr__(self) -> str:
        return f"Op({self.line!r}, {self.payload!r})"


class Peer:
    """The server's end of one client connection."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.connect: dict[str, Any] = {}

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def _fill(self) -> None:
        self.buf += await self.stream.receive()

    async def _line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            await self._fill()
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    async def _exactly(self, size: int) -> bytes:
        while len(self.buf) < size + 2:
            await self._fill()
        data = bytes(self.buf[:size])
        del self.buf[: size + 2]
        return data

    async def op(self, *, pings: bool = True) -> Op:
        """The client's next operation (its heartbeat PINGs too, unless ``pings=False``:
        those are then answered)."""
        while True:
            op = Op(await self._line())
            if op.verb in (b"PUB", b"HPUB"):
                op.payload = await self._exactly(int(op.args[-1]))
            if op.verb == b"PING" and not pings:
                await self.send(b"PONG\r\n")
                continue
            return op

    async def expect(self, verb: bytes, *, pings: bool = False) -> Op:
        op = await self.op(pings=pings)
        assert op.verb == verb, op
        return op

    async def handshake(self, info: bytes | None = None) -> None:
        await self.send(info if info is not None else info_line())
        op = await self.expect(b"CONNECT")
        self.connect = json.loads(op.line.partition(b" ")[2])
        await self.expect(b"PING", pings=True)
        await self.send(b"PONG\r\n")

    async def until_closed(self) -> bytes:
        """Everything the client sends until it hangs up."""
        rest = bytes(self.buf)
        try:
            while True:
                rest += await self.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return rest

    async def aclose(self) -> None:
        await self.stream.aclose()


class FakeServer:
    def __init__(self, listener: anyio.abc.SocketListener) -> None:
        self.listener = listener
        self.port: int = listener.extra(SocketAttribute.local_port)
        send, self._accepted = anyio.create_memory_object_stream[Peer](16)
        self._send = send
        self.peers: list[Peer] = []
        self._scope = anyio.CancelScope()

    def close(self) -> None:
        """Close the queue of accepted peers (once nothing can add to it)."""
        self._send.close()
        self._accepted.close()

    def stop_listening(self) -> None:
        """Refuse new clients from now on (as a server in lame duck mode does)."""
        self._scope.cancel()

    def url(self, auth: str = "", query: str = "") -> str:
        return f"nats://{auth}127.0.0.1:{self.port}" + (f"?{query}" if query else "")

    async def accept(self) -> Peer:
        return await self._accepted.receive()

    async def serve(self) -> None:
        with self._scope:
            await self._serve()

    async def _serve(self) -> None:
        async with self.listener:
            while True:
                stream = await self.listener.accept()
                peer = Peer(stream)
                self.peers.append(peer)
                await self._send.send(peer)


@asynccontextmanager
async def fake_server() -> AsyncIterator[FakeServer]:
    """A fake server on 127.0.0.1; every socket it accepted is closed on exit."""
    multi = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    listener = multi.listeners[0]
    assert isinstance(listener, anyio.abc.SocketListener)
    server = FakeServer(listener)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            try:
                yield server
            finally:
                tg.cancel_scope.cancel()
                # Shielded: in the cancelled group an await would raise a cancellation
                # that replaces (and so hides) the exception the block is leaving with.
                with anyio.CancelScope(shield=True):
                    for peer in server.peers:
                        await peer.aclose()
    finally:
        server.close()


@asynccontextmanager
async def connected(
    *, info: bytes | None = None, auth: str = "", query: str = "heartbeat=0", **options: Any
) -> AsyncIterator[tuple[NatsConnection, Peer]]:
    """A real ``NatsConnection`` to a fake server, past the handshake."""
    async with fake_server() as server:
        url = parse_url(server.url(auth, query))
        peers: list[Peer] = []
        ready = anyio.Event()

        async def play() -> None:
            peer = await server.accept()
            await peer.handshake(info)
            peers.append(peer)
            ready.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(play)
            async with connect(url, ConnectOptions(**options)) as conn:
                await ready.wait()
                yield conn, peers[0]
