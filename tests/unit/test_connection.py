"""The supervised Connection: reconnects with backoff, fails over, hides passwords."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus

from hare_py import (
    Backoff,
    ConfigError,
    ConnectFailed,
    Connection,
    ConnectionLost,
    RPCClient,
)
from hare_py.testing import SandboxBroker
from hare_py.transport import TLSOptions

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(fast_clock_backend: object) -> object:
    return fast_clock_backend


async def test_reconnects_after_the_connection_is_killed() -> None:
    """A killed connection is replaced by a new one; wait_connected returns the new one."""
    with SandboxBroker() as broker:
        async with Connection(broker.url) as conn:
            with anyio.fail_after(5):
                first = await conn.wait_connected()
                (conn_id,) = broker.connections
                broker.kill_connection(conn_id)
                await first.wait_closed()
                second = await conn.wait_connected()
            assert second is not first
            assert second.is_open
            assert conn.connects == 2


async def test_connect_failures_back_off_and_then_succeed() -> None:
    """Failed connects are retried with growing delays until one succeeds."""
    with SandboxBroker() as broker:
        broker.script_connect(ConnectFailed("refused 1"), ConnectFailed("refused 2"), None)
        backoff = Backoff(initial=0.2, maximum=1.0, jitter=0)
        async with Connection(broker.url, backoff=backoff) as conn:
            with anyio.fail_after(5):
                start = anyio.current_time()
                await conn.wait_connected()
                assert anyio.current_time() - start >= 0.2 + 0.4
        assert len(broker.ops("connect")) >= 1


async def test_failover_tries_the_next_broker() -> None:
    """With a list of URLs, a broker that refuses is skipped for the next one."""
    with SandboxBroker() as down, SandboxBroker() as up:
        down.down()
        async with Connection([down.url, up.url]) as conn:
            with anyio.fail_after(5):
                await conn.wait_connected()
            assert conn.url is not None
            assert conn.url.host == up.name
            assert conn.last_error is None  # reset by the successful connect


async def test_wait_connected_waits_for_a_broker_that_comes_up() -> None:
    """wait_connected blocks while the broker is down and returns once it is up."""
    with SandboxBroker() as broker:
        broker.down()
        async with Connection(broker.url, backoff=Backoff(initial=0.01, maximum=0.05)) as conn:
            with anyio.move_on_after(0.3) as scope:
                await conn.wait_connected()
            assert scope.cancelled_caught
            assert isinstance(conn.last_error, ConnectFailed)
            broker.up()
            with anyio.fail_after(5):
                await conn.wait_connected()


async def test_closed_connection_refuses_waiters() -> None:
    """After the block, wait_connected raises ConnectionLost instead of waiting forever."""
    with SandboxBroker() as broker:
        async with Connection(broker.url) as conn:
            pass
        with anyio.fail_after(1), pytest.raises(ConnectionLost):
            await conn.wait_connected()


def test_bad_urls_and_options_raise_config_error() -> None:
    """Unknown schemes, empty lists and bad numbers fail at construction, naming the value."""
    with pytest.raises(ConfigError, match="ftp"):
        Connection("ftp://host/")
    with pytest.raises(ConfigError, match="at least one"):
        Connection([])
    with pytest.raises(ConfigError, match="heartbeat"):
        Connection("sandbox://x", heartbeat=-1)


def test_repr_hides_the_password() -> None:
    """The password of an amqp URL is in no repr or str."""
    conn = Connection(["amqp://u:hunter2@h1/", "amqps://u:hunter2@h2/vh"])
    assert "hunter2" not in repr(conn)
    assert "hunter2" not in repr(conn.urls)
    assert "***" in repr(conn)


# --- closing from any task ------------------------------------------------------


async def test_aclose_from_another_task_ends_the_owners_block() -> None:
    """aclose() from a task that did not enter the connection ends the block, then returns."""
    events: list[str] = []
    with SandboxBroker() as broker:

        async def owner(*, task_status: TaskStatus[Connection]) -> None:
            async with Connection(broker.url) as conn:
                task_status.started(conn)
                try:
                    await anyio.sleep_forever()
                finally:
                    events.append("block cancelled")
            events.append("owner went on")

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                conn = await tg.start(owner)
                await conn.wait_connected()
                await conn.aclose()
                events.append("aclose returned")
                assert broker.connections == {}
                await conn.aclose()  # idempotent
            with pytest.raises(ConnectionLost):
                await conn.wait_connected()
    assert events == ["block cancelled", "owner went on", "aclose returned"]


async def test_aclose_from_another_task_stops_clients_before_closing() -> None:
    """A signal handler's aclose() stops the block's clients while the connection is still up."""
    seen: list[tuple[Any, bool]] = []

    class Recording(RPCClient[None]):
        async def terminate(self, reason: Any, state: None) -> None:
            seen.append((reason, self.connection.is_connected))

    with SandboxBroker() as broker:

        async def owner(*, task_status: TaskStatus[Connection]) -> None:
            async with Connection(broker.url) as conn, Recording.start(conn) as client:
                while client.reply_queue is None:
                    await anyio.sleep(0.01)
                task_status.started(conn)
                await anyio.sleep_forever()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                conn = await tg.start(owner)
                await conn.aclose()
    assert seen == [("shutdown", True)]


async def test_concurrent_acloses_from_other_tasks_all_return() -> None:
    """Several tasks closing at once each return once the block has ended."""
    returned: list[int] = []
    with SandboxBroker() as broker:

        async def owner(*, task_status: TaskStatus[Connection]) -> None:
            async with Connection(broker.url) as conn:
                task_status.started(conn)
                await anyio.sleep_forever()

        async def close(conn: Connection, n: int) -> None:
            await conn.aclose()
            returned.append(n)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                conn = await tg.start(owner)
                for n in range(3):
                    tg.start_soon(close, conn, n)
    assert sorted(returned) == [0, 1, 2]


async def test_aclose_in_the_block_closes_there_and_then() -> None:
    """aclose() in the owner's block, even in a nested scope, closes at once; the block goes on."""
    with SandboxBroker() as broker:
        async with Connection(broker.url) as conn:
            with anyio.fail_after(5):
                await conn.wait_connected()
                await conn.aclose()
            assert not conn.is_connected
            assert broker.connections == {}
            with anyio.fail_after(1), pytest.raises(ConnectionLost):
                await conn.wait_connected()
            went_on = True
    assert went_on


async def test_aclose_from_another_task_is_bounded_by_its_timeout() -> None:
    """A block that refuses to end does not keep aclose(timeout=) waiting: it closes anyway."""
    release = anyio.Event()
    with SandboxBroker() as broker:

        async def owner(*, task_status: TaskStatus[Connection]) -> None:
            async with Connection(broker.url) as conn:
                task_status.started(conn)
                with anyio.CancelScope(shield=True):
                    await release.wait()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                conn = await tg.start(owner)
                await conn.wait_connected()
                with anyio.fail_after(5):
                    await conn.aclose(timeout=1.0)
                assert broker.connections == {}
                assert not conn.is_connected
                release.set()


# --- configuration errors are not retried -------------------------------------------


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("amqp://127.0.0.1:1/?auth=bogus", "auth='bogus'"),
        ("amqp://127.0.0.1:1/?heartbeat=abc", "heartbeat='abc'"),
        ("amqp://127.0.0.1:1/?heartbeat=-5", "heartbeat"),
        ("amqp://127.0.0.1:1/?hearbeat=5", r"'hearbeat'.*known: auth, backend, heartbeat"),
        (["sandbox://up", "amqps://127.0.0.1:1/?auth=nope"], "auth='nope'"),
    ],
)
async def test_url_configuration_errors_fail_at_enter(url: Any, match: str) -> None:
    """Every URL parameter is checked at __aenter__, for every URL of a failover list."""
    with anyio.fail_after(5), pytest.raises(ConfigError, match=match):
        async with Connection(url):
            pass


async def test_url_configuration_errors_fail_at_start() -> None:
    """start() with a URL whose parameter is bad raises ConfigError instead of timing out."""
    with anyio.fail_after(5), pytest.raises(ConfigError, match="heartbeat='abc'"):
        async with RPCClient.start("amqp://127.0.0.1:1/?heartbeat=abc", timeout=1):
            pass


async def test_unloadable_tls_files_fail_at_enter(tmp_path: Any) -> None:
    """amqps:// with a CA file that cannot be loaded is a ConfigError at __aenter__."""
    tls = TLSOptions(ca_file=str(tmp_path / "missing.pem"))
    with anyio.fail_after(5), pytest.raises(ConfigError, match="TLS"):
        async with Connection("amqps://127.0.0.1:1/", tls=tls):
            pass


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_amqplain_on_aiormq_is_refused_at_enter() -> None:
    """auth=amqplain fails at __aenter__ on aiormq (asyncio only), not on the anyio backend."""
    url = "amqp://127.0.0.1:1/?auth=amqplain"
    with anyio.fail_after(5):
        with pytest.raises(ConfigError, match="amqplain"):
            async with Connection(url + "&backend=aiormq"):
                pass
        async with Connection(url):
            pass


async def test_config_error_while_connecting_is_not_retried() -> None:
    """A ConfigError from a connect stops the connection: its block and waiters get it, once."""
    with SandboxBroker() as broker:
        broker.script_connect(ConfigError("scripted bad setting"))
        with anyio.fail_after(5), pytest.raises(ConfigError, match="scripted bad setting"):
            async with Connection(broker.url) as conn:
                await conn.wait_connected()
        assert len(broker.ops("connect")) == 1
        with anyio.fail_after(1), pytest.raises(ConfigError, match="scripted bad setting"):
            await conn.wait_connected()


async def test_config_error_while_connecting_ends_a_clients_block() -> None:
    """A client started from a URL whose connect raises ConfigError leaves its block with it."""
    with SandboxBroker() as broker:
        broker.script_connect(ConfigError("scripted bad setting"))
        with anyio.fail_after(5), pytest.raises(ConfigError, match="scripted bad setting"):
            client: RPCClient[None]
            async with RPCClient.start(broker.url, timeout=3) as client:
                await client.request(b"x", "nobody")
        assert len(broker.ops("connect")) == 1
