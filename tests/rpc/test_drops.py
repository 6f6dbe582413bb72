"""A flood of unknown replies or malformed requests is dropped without flooding the log."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from hare_py import RPCClient, RPCServer
from hare_py.rpc.drops import DropLog
from hare_py.testing import SandboxBroker
from hare_py.transport.base import Properties

from .echo import echo_server

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _short_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hare_py.rpc.drops.WINDOW", 0.5)


class _Events:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))


async def test_the_first_drops_of_a_window_are_logged_the_rest_summed() -> None:
    """1,000 drops log 10 events in full and, once the window ends, one summary of 990."""
    log = _Events()
    drops = DropLog(log, "rpc.reply_dropped", burst=10, window=1.0)
    for i in range(1000):
        drops.drop("unknown" if i % 2 else "malformed", correlation_id=str(i))
    assert len(log.events) == 10
    drops.flush()  # the window is not over yet: nothing more
    assert len(log.events) == 10
    await anyio.sleep(1.1)
    drops.flush()
    event, fields = log.events[-1]
    assert event == "rpc.reply_dropped_suppressed"
    assert fields["count"] == 990
    assert fields["reasons"] == {"unknown": 495, "malformed": 495}
    assert not drops.pending
    drops.drop("unknown")  # a new window logs in full again
    assert log.events[-1][0] == "rpc.reply_dropped"


async def test_a_reply_flood_writes_a_bounded_log_and_the_client_answers(
    broker: SandboxBroker,
) -> None:
    """2,000 forged replies leave at most a burst of log events; real calls still succeed."""
    with capture_logs() as logs, anyio.fail_after(10):
        async with echo_server(broker.url), RPCClient.start(broker.url) as client:
            while not client.connected:
                await anyio.sleep(0.001)
            assert client.reply_queue is not None
            for i in range(2000):
                broker.publish("", client.reply_queue, b"junk", Properties(correlation_id=f"{i}"))
            assert await client.request(b"real", "echo") == b"real"
            while not any(e["event"] == "rpc.reply_dropped_suppressed" for e in logs):
                await anyio.sleep(0.1)  # the summary comes once the window is over
    dropped = [e for e in logs if e["event"] == "rpc.reply_dropped"]
    summaries = [e for e in logs if e["event"] == "rpc.reply_dropped_suppressed"]
    assert 1 <= len(dropped) <= 10
    assert sum(e["count"] for e in summaries) + len(dropped) == 2000


async def test_a_flood_of_malformed_requests_writes_a_bounded_log(broker: SandboxBroker) -> None:
    """A server rejecting 500 requests it cannot decode logs a burst, not 500 warnings."""
    from hare_py import JSON

    with capture_logs() as logs, anyio.fail_after(10):
        async with RPCServer.start(broker.url, queue="work", codec=JSON) as server:
            while not server.connected:
                await anyio.sleep(0.001)
            for _ in range(500):
                broker.publish("", "work", b"{not json", Properties(reply_to="nowhere"))
            while broker.queues["work"].unacked or broker.queues["work"].messages:
                await anyio.sleep(0.01)
    rejected = [e for e in logs if e["event"] == "rpc.request_rejected"]
    assert 1 <= len(rejected) <= 10
