"""AMQP 1.0 connections: idle-timeout heartbeats, SASL, TLS, the listener's bounds."""

from __future__ import annotations

import socket
from typing import Any

import anyio
import anyio.abc
import pytest

from hare_py import Caller, Connection, Reply, Request, RPCClient, RPCServer
from hare_py.conventions import amqp10
from hare_py.errors import ConnectFailed
from hare_py.transport import backend_for, parse_url
from hare_py.transport.base import ConnectOptions, TLSOptions

from .conftest import listening
from .peers import free_port

pytestmark = pytest.mark.anyio


class Echo(RPCServer[None]):
    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        return Reply(b"echo:" + request.payload, state)


class FreezingProxy:
    """A TCP relay to ``port`` that can stop relaying (a peer gone silent, socket still up)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.frozen = anyio.Event()

    async def relay(self, source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream) -> None:
        try:
            while True:
                data = await source.receive()
                if self.frozen.is_set():
                    await anyio.sleep_forever()
                await sink.send(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def handle(self, client: anyio.abc.SocketStream) -> None:
        async with client, await anyio.connect_tcp("127.0.0.1", self.port) as upstream:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.relay, client, upstream)
                tg.start_soon(self.relay, upstream, client)


async def test_silent_peer_is_detected_by_idle_timeout(listen_url: str) -> None:
    """Heartbeats keep a quiet connection up; a peer that goes silent ends it by idle-timeout."""
    upstream = int(listen_url.rsplit(":", 1)[1].split("/")[0])
    proxy = FreezingProxy(upstream)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with (
        Echo.start(listening(listen_url) + "&heartbeat=1", queue="hb", convention=amqp10()) as echo,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(listener.serve, proxy.handle)
        url = parse_url(f"amqp://127.0.0.1:{port}/?protocol=1.0&heartbeat=1")
        with anyio.fail_after(15):
            while not echo.connected:  # the listener is up
                await anyio.sleep(0.01)
            async with backend_for(url).connect(url, ConnectOptions()) as conn:
                await anyio.sleep(3)  # three idle-timeouts with no traffic but heartbeats
                assert conn.close_reason is None
                proxy.frozen.set()
                reason = await conn.wait_closed()
        assert reason.by == "network"
        assert "idle" in reason.text
        tg.cancel_scope.cancel()
    await listener.aclose()


@pytest.mark.rabbitmq
async def test_wrong_password_is_connect_failed_without_the_password(rabbitmq_url: str) -> None:
    """A refused PLAIN login is ConnectFailed, and its text never holds the password."""
    port = rabbitmq_url.rsplit(":", 1)[1].strip("/")
    url = parse_url(f"amqp://guest:not-the-s3cret@127.0.0.1:{port}/?protocol=1.0")
    with anyio.fail_after(15), pytest.raises(ConnectFailed) as caught:
        async with backend_for(url).connect(url, ConnectOptions()):
            pass
    assert "refused the login" in str(caught.value)
    assert "s3cret" not in str(caught.value) and "s3cret" not in repr(caught.value)


@pytest.mark.rabbitmq
async def test_anonymous_login_without_credentials(rabbitmq_url: str) -> None:
    """A URL without credentials logs in with ANONYMOUS (RabbitMQ maps it to its default user)."""
    port = rabbitmq_url.rsplit(":", 1)[1].strip("/")
    url = parse_url(f"amqp://127.0.0.1:{port}/?protocol=1.0")
    with anyio.fail_after(15):
        async with backend_for(url).connect(url, ConnectOptions()) as conn:
            session = await conn.open_session()
            assert session.is_open
            await session.close()


async def test_listener_refuses_plain_logins(listen_url: str) -> None:
    """A listener takes ANONYMOUS only: a client with credentials is refused, not let in."""
    port = listen_url.rsplit(":", 1)[1].split("/")[0]
    url = parse_url(f"amqp://user:pw@127.0.0.1:{port}/?protocol=1.0")
    async with Echo.start(listening(listen_url), queue="sasl", convention=amqp10()) as server:
        with anyio.fail_after(15):
            while not server.connected:
                await anyio.sleep(0.01)
            with pytest.raises(ConnectFailed):
                async with backend_for(url).connect(url, ConnectOptions(connect_timeout=5)):
                    pass


@pytest.mark.rabbitmq
async def test_tls_through_anyio_with_rabbitmq(rabbitmq: Any) -> None:
    """amqps://...?protocol=1.0 runs RPC over TLS (anyio's), verifying RabbitMQ's certificate."""
    if not rabbitmq.tls_url or not rabbitmq.ca_file:
        pytest.fail("the private RabbitMQ has no TLS listener (openssl missing)")
    url = rabbitmq.tls_url.rstrip("/") + "/?protocol=1.0"
    tls = TLSOptions(ca_file=rabbitmq.ca_file)
    async with Connection(url, tls=tls) as conn:
        async with (
            Echo.start(conn, queue="tls10", convention=amqp10("/queue/")),
            RPCClient.start(conn, convention=amqp10("/queue/"), timeout=10) as client,
        ):
            with anyio.fail_after(15):
                assert await client.request(b"secure", "tls10") == b"echo:secure"


@pytest.mark.rabbitmq
async def test_tls_listener_peer_to_peer(rabbitmq: Any) -> None:
    """A listener with amqps:// serves TLS; a client verifying its certificate calls it."""
    if not rabbitmq.ca_file:
        pytest.fail("no test certificates (openssl missing)")
    from pathlib import Path

    certs = Path(rabbitmq.ca_file).parent
    port = free_port()
    server_tls = TLSOptions(cert_file=str(certs / "server.pem"), key_file=str(certs / "server.key"))
    client_tls = TLSOptions(ca_file=rabbitmq.ca_file)
    base = f"amqps://localhost:{port}/?protocol=1.0"
    async with (
        Connection(base + "&listen=1", tls=server_tls) as server_conn,
        Echo.start(server_conn, queue="tlsp2p", convention=amqp10()),
        Connection(base, tls=client_tls) as client_conn,
        RPCClient.start(client_conn, convention=amqp10(), timeout=10) as client,
    ):
        with anyio.fail_after(15):
            assert await client.request(b"p2p", "tlsp2p") == b"echo:p2p"


async def test_listener_port_in_use_is_retried_not_fatal(listen_url: str) -> None:
    """A listener whose port is taken fails to connect (ConnectFailed) and is retried."""
    port = int(listen_url.rsplit(":", 1)[1].split("/")[0])
    url = parse_url(listening(listen_url))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with anyio.fail_after(10), pytest.raises(ConnectFailed, match="cannot listen"):
            async with backend_for(url).connect(url, ConnectOptions()):
                pass


async def test_cancelled_while_opening_does_not_hang() -> None:
    """A connect cancelled while the peer has not opened yet ends at once, socket closed."""
    accepted: list[anyio.abc.SocketStream] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def mute(stream: anyio.abc.SocketStream) -> None:
        accepted.append(stream)
        await anyio.sleep_forever()  # takes the connection and never speaks AMQP

    url = parse_url(f"amqp://127.0.0.1:{port}/?protocol=1.0&connect_timeout=60")
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, mute)
        with anyio.fail_after(10):
            with anyio.move_on_after(0.5) as scope:
                async with backend_for(url).connect(url, ConnectOptions()):
                    pass
            assert scope.cancelled_caught
            assert accepted
            with pytest.raises(anyio.EndOfStream):
                await accepted[0].receive(1 << 16)  # the SASL header first, then EOF
                await accepted[0].receive(1 << 16)
        tg.cancel_scope.cancel()
    for stream in accepted:
        await stream.aclose()
    await listener.aclose()
