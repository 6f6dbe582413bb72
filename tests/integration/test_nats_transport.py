"""The NATS transport (``nats://``, ``tls://``) against real nats-server 2.9 processes.

Every failure mode is driven for real: a stalled TCP proxy, a killed server,
a refused login, a message over max_payload, a permission violation, a
cluster member that goes away, lame duck mode. Each test says what a session
sees.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from chaos.proxy import FaultProxy
from natsserver import NatsServer, started
from rabbitmq import unavailable

from hare_py import Backoff, Connection
from hare_py.errors import BrokerError, ConnectFailed, UnsendableMessage
from hare_py.transport import backend_for, parse_url
from hare_py.transport.base import (
    ConnectOptions,
    Delivery,
    Message,
    NatsSession,
    Properties,
    ReturnedMessage,
    TLSOptions,
    TransportConnection,
)
from hare_py.transport.nats import NatsClientSession

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

TIMEOUT = 20.0
PASSWORD = "Wond3r-land:pw"
TOKEN = "T0ken-s3cret"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both anyio backends (the package's conftest pairs backends with brokers instead)."""
    return str(request.param)


@asynccontextmanager
async def nats(url: str, **options: Any) -> AsyncIterator[TransportConnection]:
    parsed = parse_url(url)
    async with backend_for(parsed).connect(parsed, ConnectOptions(**options)) as conn:
        yield conn


async def session_of(conn: TransportConnection, **kwargs: Any) -> NatsSession:
    session = await conn.open_session(**kwargs)
    assert isinstance(session, NatsSession)
    return session


def all_texts(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


def collect(bodies: list[bytes]) -> Callable[[Delivery], None]:
    return lambda delivery: bodies.append(delivery.body)


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await anyio.sleep(0.01)


# -- sessions on one server -------------------------------------------------------------


async def test_sessions_share_a_connection_and_carry_headers(nats_server: NatsServer) -> None:
    """A message from one session reaches another's subscription with its reply subject and
    headers, a repeated key as a list, in order."""
    got: list[Delivery] = []
    with anyio.fail_after(TIMEOUT):
        async with nats(nats_server.url) as conn:
            assert conn.wire_protocol == "nats"
            receiver, sender = await session_of(conn), await session_of(conn)
            sid = await receiver.subscribe("tx.headers.*", got.append)
            await receiver.flush(TIMEOUT)
            headers = {"X-Tag": ["a", "b c"], "Nats-Msg-Id": "42", "X-Utf8": "é"}
            await sender.send(
                [
                    Message("", "tx.headers.1", b"\x00one\r\n", Properties(headers=headers)),
                    Message("", "tx.headers.2", b"two", Properties(reply_to="_INBOX.h.2")),
                ]
            )
            await sender.flush(TIMEOUT)
            await receiver.flush(TIMEOUT)
    assert [(d.routing_key, d.body, d.consumer_tag) for d in got] == [
        ("tx.headers.1", b"\x00one\r\n", sid),
        ("tx.headers.2", b"two", sid),
    ]
    assert got[0].properties.headers == headers and got[0].properties.reply_to is None
    assert got[1].properties == Properties(reply_to="_INBOX.h.2")


async def test_a_queue_group_shares_the_messages_each_once(nats_server: NatsServer) -> None:
    """Two members of one queue group get every message exactly once between them, both some."""
    seen: dict[str, list[bytes]] = {"a": [], "b": []}
    with anyio.fail_after(TIMEOUT):
        async with nats(nats_server.url) as conn:
            for name in seen:
                member = await session_of(conn)
                await member.subscribe("tx.work", collect(seen[name]), queue="workers")
                await member.flush(TIMEOUT)
            sender = await session_of(conn)
            await sender.send([Message("", "tx.work", b"%d" % i) for i in range(60)])
            await sender.flush(TIMEOUT)
            await until(lambda: len(seen["a"]) + len(seen["b"]) == 60)
    assert sorted(seen["a"] + seen["b"]) == sorted(b"%d" % i for i in range(60))
    assert seen["a"] and seen["b"]


async def test_a_request_nobody_serves_comes_back_through_on_return(
    nats_server: NatsServer,
) -> None:
    """With no subscriber, the server's 503 on the reply subject is a ReturnedMessage."""
    returned: list[ReturnedMessage] = []
    with anyio.fail_after(TIMEOUT):
        async with nats(nats_server.url) as conn:
            session = await session_of(conn, on_return=returned.append)
            await session.subscribe("_INBOX.tx503.*", lambda d: None)
            reply = Properties(reply_to="_INBOX.tx503.9", headers={"K": "v"})
            await session.send([Message("", "tx.nobody.home", b"?", reply)], mandatory=True)
            await session.flush(TIMEOUT)
    assert returned == [
        ReturnedMessage(b"", Properties(), "", "_INBOX.tx503.9", 312, "NO_RESPONDERS")
    ]


async def test_drain_unsubscribes_and_lets_the_other_member_take_over(
    nats_server: NatsServer,
) -> None:
    """After drain() returns the server routes nothing more to the drained member; the
    session can still send."""
    seen: dict[str, list[bytes]] = {"old": [], "new": []}
    with anyio.fail_after(TIMEOUT):
        async with nats(nats_server.url) as conn:
            old, new = await session_of(conn), await session_of(conn)
            for name, member in (("old", old), ("new", new)):
                await member.subscribe("tx.drain", collect(seen[name]), queue="q")
                await member.flush(TIMEOUT)
            assert isinstance(old, NatsClientSession)  # drain() is this backend's own
            await old.drain(TIMEOUT)
            before = len(seen["old"])
            await old.send([Message("", "tx.drain", b"%d" % i) for i in range(30)])
            await old.flush(TIMEOUT)
            await until(lambda: len(seen["new"]) == 30)
    assert len(seen["old"]) == before == 0 and len(seen["new"]) == 30


# -- limits and refusals ------------------------------------------------------------------

RESTRICTED = f"""
max_payload: 4096
authorization {{
  users = [
    {{
      user: alice
      password: "{PASSWORD}"
      permissions: {{
        publish: {{ allow: ["allowed.>", "_INBOX.>"] }}
        subscribe: {{ allow: ["allowed.>", "_INBOX.>"] }}
      }}
    }}
  ]
}}
"""


@pytest.fixture(scope="module")
def restricted() -> Iterator[NatsServer]:
    """max_payload 4096; user alice may use only ``allowed.>`` and ``_INBOX.>``."""
    with started(config=RESTRICTED) as server:
        yield server


def alice(server: NatsServer, password: str = PASSWORD) -> str:
    return f"nats://alice:{password.replace(':', '%3A')}@127.0.0.1:{server.port}"


async def test_a_message_over_max_payload_fails_alone_and_the_connection_stays(
    restricted: NatsServer,
) -> None:
    """The message over the server's max_payload is UnsendableMessage(index) and nothing of
    its batch leaves; the connection and session go on, and a message at the limit passes."""
    got: list[Delivery] = []
    with anyio.fail_after(TIMEOUT):
        async with nats(alice(restricted)) as conn:
            session = await session_of(conn)
            assert session.max_payload == 4096
            await session.subscribe("allowed.big", got.append)
            small = Message("", "allowed.big", b"small")
            with pytest.raises(UnsendableMessage, match="max_payload") as caught:
                await session.send([small, Message("", "allowed.big", b"x" * 4097), small])
            assert caught.value.index == 1
            await session.send([Message("", "allowed.big", b"y" * 4096)])
            await session.flush(TIMEOUT)
            assert conn.is_open and session.is_open
    assert [len(d.body) for d in got] == [4096]


async def test_a_wrong_password_is_connect_failed_without_the_password(
    restricted: NatsServer,
) -> None:
    """nats-server's 'Authorization Violation' is ConnectFailed; no text shows the password."""
    wrong = "Not-" + PASSWORD
    with anyio.fail_after(TIMEOUT), pytest.raises(ConnectFailed, match="refused the login") as e:
        async with nats(alice(restricted, wrong)):
            pass
    assert wrong not in all_texts(e.value) and "Not-" not in all_texts(e.value)


async def test_a_permission_violation_closes_the_session_that_subscribed(
    restricted: NatsServer,
) -> None:
    """A denied SUB closes its own session by "broker" (flush raises BrokerError); another
    session and the connection go on; a denied publish closes nothing."""
    got: list[Delivery] = []
    with anyio.fail_after(TIMEOUT):
        async with nats(alice(restricted)) as conn:
            denied, other = await session_of(conn), await session_of(conn)
            await other.subscribe("allowed.ok", got.append)
            await denied.subscribe("denied.>", lambda d: None)
            with pytest.raises(BrokerError, match="Permissions Violation"):
                await denied.flush(TIMEOUT)
            reason = await denied.wait_closed()
            await other.send([Message("", "denied.x", b"no"), Message("", "allowed.ok", b"ok")])
            await other.flush(TIMEOUT)
            assert other.is_open and conn.is_open
    assert reason.by == "broker" and 'Subscription to "denied.>"' in reason.text
    assert [d.body for d in got] == [b"ok"]


async def test_a_token_in_either_url_form_logs_in() -> None:
    """A token server takes nats://TOKEN@host and ?token=TOKEN; a wrong token is refused."""
    config = f'authorization {{ token: "{TOKEN}" }}\n'
    with started(config=config) as server, anyio.fail_after(TIMEOUT):
        for url in (
            f"nats://{TOKEN}@127.0.0.1:{server.port}",
            f"nats://127.0.0.1:{server.port}?token={TOKEN}",
        ):
            async with nats(url) as conn:
                await (await session_of(conn)).flush(TIMEOUT)
                assert TOKEN not in repr(conn)
        with pytest.raises(ConnectFailed, match="refused the login") as e:
            async with nats(f"nats://wrong-{TOKEN}@127.0.0.1:{server.port}"):
                pass
    assert TOKEN not in all_texts(e.value)


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA and a server certificate for 127.0.0.1 and localhost, made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl is not installed: the TLS tests need it to make certificates")
    d: Path = tmp_path_factory.mktemp("nats-tls")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, capture_output=True, check=True, timeout=30)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=hare-test-ca")  # fmt: skip
    (d / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2",
        "-extfile", "server.ext")  # fmt: skip
    return {name: str(d / f"{name}") for name in ("ca.pem", "server.pem", "server.key")}


@pytest.fixture(scope="module")
def tls_server(tls_files: dict[str, str]) -> Iterator[NatsServer]:
    config = (
        f'tls {{ cert_file: "{tls_files["server.pem"]}"\n'
        f'  key_file: "{tls_files["server.key"]}" }}\n'
    )
    with started(config=config) as server:
        yield server


async def test_tls_urls_and_servers_that_require_tls_connect_verified(
    tls_server: NatsServer, tls_files: dict[str, str]
) -> None:
    """tls:// with the CA connects; so does nats:// to a server whose INFO requires TLS;
    both carry messages."""
    tls = TLSOptions(ca_file=tls_files["ca.pem"])
    got: list[Delivery] = []
    with anyio.fail_after(TIMEOUT):
        for scheme in ("tls", "nats"):
            async with nats(f"{scheme}://127.0.0.1:{tls_server.port}", tls=tls) as conn:
                session = await session_of(conn)
                await session.subscribe("tx.tls", got.append)
                await session.send([Message("", "tx.tls", scheme.encode())])
                await session.flush(TIMEOUT)
    assert [d.body for d in got] == [b"tls", b"nats"]


async def test_tls_with_an_unknown_ca_is_connect_failed(tls_server: NatsServer) -> None:
    """A server certificate that does not verify (no CA given) is ConnectFailed, not a hang."""
    with anyio.fail_after(TIMEOUT), pytest.raises(ConnectFailed, match="TLS"):
        async with nats(f"tls://127.0.0.1:{tls_server.port}"):
            pass


# -- dead servers ------------------------------------------------------------------------------


async def test_a_stalled_server_is_declared_dead_by_unanswered_pings(
    nats_server: NatsServer,
) -> None:
    """Behind a proxy that stops forwarding, two unanswered PINGs end the connection by
    "network", and its sessions by "connection"."""
    proxy = FaultProxy(nats_server.port)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            await tg.start(proxy.run)
            async with nats(f"nats://127.0.0.1:{proxy.port}?heartbeat=0.2") as conn:
                session = await session_of(conn)
                await session.flush(TIMEOUT)
                proxy.stall()
                reason = await session.wait_closed()
            tg.cancel_scope.cancel()
    assert conn.close_reason is not None and conn.close_reason.by == "network"
    assert "no PONG" in conn.close_reason.text
    assert reason.by == "connection"


async def test_a_killed_server_closes_every_session_at_once() -> None:
    """Killing the server closes the connection by "network" and every session by
    "connection" without waiting for a heartbeat."""
    with started() as server, anyio.fail_after(TIMEOUT):
        async with nats(server.url, heartbeat=3600) as conn:
            sessions = [await session_of(conn) for _ in range(3)]
            for session in sessions:
                await session.subscribe("tx.killed", lambda d: None)
                await session.flush(TIMEOUT)
            os.kill(server.pid, signal.SIGKILL)
            reasons = [await s.wait_closed() for s in sessions]
    assert conn.close_reason is not None and conn.close_reason.by == "network"
    assert {r.by for r in reasons} == {"connection"}


# -- clusters ---------------------------------------------------------------------------------


def _cluster_config(name: str, seed: NatsServer | None, extra: str = "") -> str:
    routes = ""
    if seed is not None:
        routes = f'  routes: ["{seed.ports["cluster"][0].replace("nats:", "nats-route:")}"]\n'
    return (
        f"server_name: {name}\n{extra}"
        f'cluster {{\n  name: hare\n  listen: "127.0.0.1:-1"\n{routes}}}\n'
    )


@pytest.fixture
def cluster() -> Iterator[list[NatsServer]]:
    """Three nats-servers routed on loopback; B and C route to A."""
    with started(config=_cluster_config("A", None)) as a:
        with started(config=_cluster_config("B", a)) as b:
            with started(config=_cluster_config("C", a)) as c:
                yield [a, b, c]


async def test_the_connection_learns_the_cluster_and_fails_over_to_it(
    cluster: list[NatsServer],
) -> None:
    """Given only A, the Connection learns B and C from INFO connect_urls and, when A dies,
    reconnects to one of them."""
    a, b, c = cluster
    with anyio.fail_after(TIMEOUT):
        backoff = Backoff(initial=0.05, maximum=0.2)
        async with Connection(a.url, backoff=backoff) as conn:
            first = await conn.wait_connected()
            await until(lambda: {b.port, c.port} <= {u.port for u in first.discovered_urls})
            a.stop()
            await first.wait_closed()
            await conn.wait_connected()
            assert conn.url is not None and conn.url.port in (b.port, c.port)
            assert {b.port, c.port} <= {u.port for u in conn.urls}


LAME_DUCK = 'lame_duck_grace_period: "10s"\nlame_duck_duration: "30s"\n'


@pytest.fixture
def lame_pair() -> Iterator[list[NatsServer]]:
    """A (with a 10 s lame duck grace period) and B, routed on loopback."""
    with started(config=_cluster_config("A", None, LAME_DUCK)) as a:
        with started(config=_cluster_config("B", a)) as b:
            yield [a, b]


async def test_lame_duck_moves_first_and_the_old_session_gets_its_reply(
    lame_pair: list[NatsServer],
) -> None:
    """When A enters lame duck mode, the Connection connects to B while the session on A,
    told it is draining, still receives the reply to the request it sent before."""
    a, b = lame_pair
    held: list[Delivery] = []
    replies: list[Delivery] = []
    returned: list[ReturnedMessage] = []
    events: list[str] = []
    with anyio.fail_after(TIMEOUT):
        async with nats(b.url) as server_side:
            responder = await session_of(server_side)
            await responder.subscribe("svc.echo", held.append)
            await responder.flush(TIMEOUT)
            async with Connection(a.url, backoff=Backoff(initial=0.05, maximum=0.2)) as conn:
                old = await conn.wait_connected()
                await until(lambda: b.port in {u.port for u in old.discovered_urls})
                session = await session_of(old, on_return=returned.append)
                await session.subscribe("_INBOX.ldm.*", replies.append)
                while not held:  # until the route carries B's interest to A
                    returned.clear()
                    ask = Properties(reply_to="_INBOX.ldm.1")
                    await session.send([Message("", "svc.echo", b"ping", ask)])
                    await session.flush(TIMEOUT)
                    await anyio.sleep(0.05)
                os.kill(a.pid, signal.SIGUSR2)
                await session.wait_draining()
                events.append(f"draining, open={session.is_open}")
                await conn.wait_connected()
                assert conn.url is not None
                events.append(f"moved to B={conn.url.port == b.port}")
                reply_to = held[0].properties.reply_to
                assert reply_to is not None
                await responder.send([Message("", reply_to, b"pong")])
                await until(lambda: bool(replies))
                events.append("reply on the old session")
                await session.close()
                reason = await old.wait_closed()
    assert events == ["draining, open=True", "moved to B=True", "reply on the old session"]
    assert [r.body for r in replies] == [b"pong"]
    assert (reason.by, reason.text) == ("broker", "lame duck mode")
