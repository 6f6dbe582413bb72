"""The supervised Connection: reconnects with backoff, fails over, hides passwords."""

from __future__ import annotations

import anyio
import pytest

from hare_py import Backoff, ConfigError, ConnectFailed, Connection, ConnectionLost
from hare_py.testing import SandboxBroker

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
