"""A fault-injecting TCP proxy on loopback: forward, stall, reset or half-close.

It sits between a client and the broker (127.0.0.1 only). ``stall()`` stops
forwarding in both directions without closing anything, so only heartbeats
can notice; ``reset()`` aborts every connection with a TCP RST; ``half_close()``
sends FIN to each current client and stops forwarding for it, leaving the
sockets open. New connections are forwarded unless the proxy is stalled.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus


class _Pair:
    def __init__(self, client: SocketStream, upstream: SocketStream, flowing: bool) -> None:
        self.client = client
        self.upstream = upstream
        self.flowing = anyio.Event()
        if flowing:
            self.flowing.set()
        self.discarding = False  # half-closed: drop data until the client hangs up


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._stalled = False
        self._pairs: set[_Pair] = set()
        self.accepted = 0

    @property
    def connections(self) -> int:
        return len(self._pairs)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            task_status.started()
            await listener.serve(self._handle, task_group=tg)

    def url(self, broker_url: str) -> str:
        """``broker_url`` with its port replaced by the proxy's."""
        head, _, rest = broker_url.rpartition(f":{self.target[1]}")
        return f"{head}:{self.port}{rest}"

    async def _handle(self, client: SocketStream) -> None:
        self.accepted += 1
        try:
            upstream = await anyio.connect_tcp(*self.target)
        except OSError:
            await client.aclose()
            return
        pair = _Pair(client, upstream, not self._stalled)
        self._pairs.add(pair)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump, pair, client, upstream, tg.cancel_scope)
                tg.start_soon(self._pump, pair, upstream, client, tg.cancel_scope)
        finally:
            self._pairs.discard(pair)
            with anyio.CancelScope(shield=True):
                await client.aclose()
                await upstream.aclose()

    async def _pump(
        self, pair: _Pair, source: SocketStream, sink: SocketStream, scope: anyio.CancelScope
    ) -> None:
        try:
            async for chunk in source:
                if pair.discarding:
                    continue
                await pair.flowing.wait()
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        scope.cancel()

    def stall(self) -> None:
        """Stop forwarding bytes on every connection, new ones too; close nothing."""
        self._stalled = True
        for pair in self._pairs:
            pair.flowing = anyio.Event()

    def resume(self) -> None:
        """Forward bytes again."""
        self._stalled = False
        for pair in self._pairs:
            pair.flowing.set()

    async def reset(self) -> int:
        """Abort every proxied connection with a TCP RST; returns how many."""
        pairs = list(self._pairs)
        for pair in pairs:
            for stream in (pair.client, pair.upstream):
                _linger_zero(stream)
                await stream.aclose()
        return len(pairs)

    def half_close(self) -> int:
        """Send FIN to every current client and stop forwarding for it; the sockets stay
        open until the client hangs up."""
        pairs = list(self._pairs)
        for pair in pairs:
            pair.discarding = True
            raw: Any = pair.client.extra(SocketAttribute.raw_socket)
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_WR)
        return len(pairs)


def _linger_zero(stream: SocketStream) -> None:
    raw: Any = stream.extra(SocketAttribute.raw_socket)
    with contextlib.suppress(OSError):
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
