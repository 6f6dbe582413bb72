"""Every example runs against the in-memory broker, so none can rot."""

from __future__ import annotations

import importlib.util
import itertools
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import ModuleType

import anyio
import pytest

from hare_py.testing import SandboxBroker

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.anyio


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_demo_recovers_from_the_killed_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's client gets a second reply queue after the kill, and requests succeed."""
    monkeypatch.delenv("HARE_URL", raising=False)
    counts = await load("demo").main(requests=10)
    assert counts["reply_queues"] == 2
    assert counts["ok"] + counts["connection_lost"] == 10
    assert counts["ok"] >= 9
    assert counts["other_errors"] == 0


@pytest.mark.parametrize("convention", ["hare", "lasting", "direct_reply_to"])
async def test_hare_client_example(monkeypatch: pytest.MonkeyPatch, convention: str) -> None:
    """The hare client example gets its replies with each reply-queue choice."""
    monkeypatch.delenv("HARE_URL", raising=False)
    replies = await load("hare_client").main(convention)
    assert replies == [b"HELLO", b"HARE"]


@pytest.mark.parametrize("name", ["goamqp", "cloud"])
async def test_convention_server_examples_answer_themselves(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """On the in-memory broker each server example serves one request of its own."""
    monkeypatch.delenv("HARE_URL", raising=False)
    result = await load(f"{name}_server").main()
    expected = (
        {"greeting": "Hello, sandbox!"} if name == "goamqp" else {"sku": "apple", "available": 5}
    )
    assert result["reply"] == expected


async def test_goamqp_client_example(monkeypatch: pytest.MonkeyPatch) -> None:
    """The goamqp client example greets through the example server; an empty name fails."""
    monkeypatch.delenv("HARE_URL", raising=False)
    replies = await load("goamqp_client").main()
    assert replies == [
        {"greeting": "Hello, Ada!"},
        {"greeting": "Hello, Grace!"},
        "error: ValueError: a greeting needs a name",
    ]


async def test_cloud_client_example(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cloud client example reads, reserves once under one RequestId, and gets a 404."""
    monkeypatch.delenv("HARE_URL", raising=False)
    out = await load("cloud_client").main()
    assert out["level"] == {"sku": "apple", "available": 5}
    assert out["reserved"] == [{"sku": "apple", "reserved": 2, "available": 3}] * 2
    assert out["missing"] == ("NotFound", "no such sku: 'plum'", 404)


@pytest.mark.parametrize("name", ["goamqp", "cloud"])
async def test_convention_examples_as_two_programs(name: str) -> None:
    """A server example and its client example meet on one broker URL, as two programs would."""
    server, client = load(f"{name}_server"), load(f"{name}_client")
    with SandboxBroker() as broker, anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(server.main, broker.url))
            result = await client.main(broker.url)
            tg.cancel_scope.cancel()
    if name == "goamqp":
        assert result[0] == {"greeting": "Hello, Ada!"}
    else:
        assert result["level"] == {"sku": "apple", "available": 5}


async def test_first_rpc_tutorial(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tutorial's first RPC (docs/tutorial.md includes this file) gets its greeting."""
    monkeypatch.delenv("HARE_URL", raising=False)
    with anyio.fail_after(10):
        assert await load("first_rpc").main() == b"hello, world"


@pytest.mark.rabbitmq
async def test_first_rpc_on_rabbitmq(monkeypatch: pytest.MonkeyPatch, rabbitmq_url: str) -> None:
    """The same file against RabbitMQ: through aiormq on asyncio, the anyio backend on trio."""
    monkeypatch.setenv("HARE_URL", rabbitmq_url)
    with anyio.fail_after(20):
        assert await load("first_rpc").main() == b"hello, world"


async def test_caching_client_answers_repeats_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeated payloads get the cached reply; only distinct ones reach the server."""
    monkeypatch.delenv("HARE_URL", raising=False)
    with anyio.fail_after(10):
        result = await load("caching_client").main()
    assert result["replies"] == [b"4", b"9", b"4", b"4", b"9"]
    assert (result["handled"], result["cached"]) == (2, 2)


async def test_rewriting_client_reaches_v2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests for ``upper`` are rewritten to ``v2.upper`` and answered by the v2 server."""
    monkeypatch.delenv("HARE_URL", raising=False)
    with anyio.fail_after(10):
        replies = await load("rewriting_client").main()
    assert replies == ["v2:HELLO (api-version 2)", "v2:VERSIONS (api-version 2)"]


async def test_daemon_shutdown_answers_every_request() -> None:
    """The daemon's shutdown answers every request in flight, then terminates client, server."""
    daemon_module = load("daemon")
    with SandboxBroker() as broker, anyio.fail_after(20):
        daemon = daemon_module.Daemon(broker.url)
        async with anyio.create_task_group() as tg:
            await tg.start(daemon.run)
            while daemon.counts["ok"] < 20:
                await anyio.sleep(0.01)
            daemon.shutdown()
    ok = daemon.counts["ok"]
    assert daemon.counts == {"ok": ok, "workers_stopped": 4}
    assert daemon.terminated == [
        "client: shutdown with 0 pending",
        f"server: shutdown after {ok} replies",
    ]
    assert broker.queues["daemon.work"].messages == 0  # nothing left unacked or unread


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_daemon_stops_in_order_on_a_signal(signum: signal.Signals) -> None:
    """The daemon process shuts down in order on SIGTERM/SIGINT and exits 0, no reply lost."""
    env = {k: v for k, v in os.environ.items() if k != "HARE_URL"}
    with anyio.fail_after(30):
        async with await anyio.open_process(
            [sys.executable, str(EXAMPLES / "daemon.py")], env=env, stderr=subprocess.STDOUT
        ) as process:
            assert process.stdout is not None
            output = b""
            async for chunk in process.stdout:
                output += chunk
                if b"daemon: ready" in output:
                    break
            await anyio.sleep(0.5)
            process.send_signal(signum)
            async for chunk in process.stdout:
                output += chunk
            assert await process.wait() == 0, output.decode()
    text = output.decode()
    assert f"daemon: {signum.name}, shutting down" in text
    assert "client terminated (shutdown), 0 requests pending" in text
    assert text.index("client terminated") < text.index("server terminated")
    assert "'workers_stopped': 4" in text and "Error" not in text.split("shutting down")[1]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_chaos_demo_recovers_from_every_fault() -> None:
    """Under every sandbox fault callers get replies or typed errors, never a hang."""
    chaos = load("chaos_demo")
    with anyio.fail_after(40):
        phases = await chaos.main()
    assert phases[0]["fault"] == "none (baseline)"
    assert phases[0]["seen"].keys() == {"ok"}
    for phase in phases:
        assert phase["seen"].get("ok", 0) > 0, phase
        assert set(phase["seen"]) <= {"ok", "ConnectionLost", "RequestTimeout"}, phase
        assert phase["longest"] <= chaos.DEADLINE + 0.2, phase
    assert all(p["new_reply_queue"] for p in phases[1:])


async def test_loom_server_example_answers_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the in-memory NATS broker the Loom server example serves one call of its own."""
    monkeypatch.delenv("HARE_URL", raising=False)
    result = await load("loom_server").main()
    assert result == {"reply": {"accepted": "demo", "by": "inst123"}, "taken": 1}


async def test_loom_client_example(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Loom client example reaches one instance, any instance, a failure and nobody."""
    monkeypatch.delenv("HARE_URL", raising=False)
    assert await load("loom_client").main() == [
        {"accepted": "refactor", "by": "inst123"},
        {"accepted": "review", "by": "inst123"},
        "error: a task needs a name",
        "unroutable",
    ]


async def test_loom_examples_as_two_programs() -> None:
    """The Loom server and client examples meet on one NATS sandbox URL, as two programs."""
    from hare_py.testing import SandboxNatsBroker

    server, client = load("loom_server"), load("loom_client")
    with SandboxNatsBroker() as broker, anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(server.main, broker.url))
            await anyio.sleep(0.2)  # the server subscribes; a call before it is unroutable
            result = await client.main(broker.url)
            tg.cancel_scope.cancel()
    assert result[0] == {"accepted": "refactor", "by": "inst123"}


async def test_amqp10_examples_peer_to_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The AMQP 1.0 client example runs its server listening, peer to peer, and calls it."""
    monkeypatch.delenv("HARE_URL", raising=False)
    monkeypatch.setattr(sys, "argv", ["amqp10_client.py"])
    with anyio.fail_after(20):
        result = await load("amqp10_client").main()
    assert result == [b"HELLO", b"AMQP 1.0", "error: nothing to shout", "unroutable"]


@pytest.mark.amqp10
async def test_amqp10_examples_through_protons_broker() -> None:
    """The AMQP 1.0 server and client examples meet through qpid-proton's example broker."""
    from amqp10.peers import proton_broker

    server, client = load("amqp10_server"), load("amqp10_client")
    with proton_broker() as broker, anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(server.main, broker.url, ""))
            await anyio.sleep(0.5)  # the server attaches its receiver
            result = await client.main(broker.url, "")
            tg.cancel_scope.cancel()
    assert result == [b"HELLO", b"AMQP 1.0", "error: nothing to shout", "timed out"]


@pytest.mark.amqp10
async def test_amqp10_server_example_counts_through_a_listener() -> None:
    """The AMQP 1.0 server example, listening, answers a dialling client and counts it."""
    from amqp10.peers import free_port

    server, client = load("amqp10_server"), load("amqp10_client")
    dial = f"amqp://127.0.0.1:{free_port()}/?protocol=1.0"
    counted: list[int] = []

    async def run_server() -> None:
        counted.append(await server.main(dial + "&listen=1", "", seconds=3))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_server)
            await anyio.sleep(0.5)
            result = await client.main(dial, "")
    assert result[:2] == [b"HELLO", b"AMQP 1.0"]
    assert counted == [2]


async def test_tracing_example_draws_one_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracing example's chain is one trace of four spans, each the child of the one
    before, and its waterfall (and the one on the observability page) draws all four."""
    import xml.etree.ElementTree as ET

    monkeypatch.delenv("HARE_URL", raising=False)
    spans, svg = await load("tracing").main()
    ordered = sorted(spans, key=lambda s: s.start_time or 0)
    assert [s.name for s in ordered] == ["orders", "orders", "stock", "stock"]
    assert len({s.context.trace_id for s in spans}) == 1
    assert ordered[0].parent is None
    for parent, child in itertools.pairwise(ordered):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id
    committed = EXAMPLES.parent / "docs" / "img" / "trace-waterfall.svg"
    for picture in (svg, committed.read_text()):
        root = ET.fromstring(picture)
        bars = [e for e in root.iter("{http://www.w3.org/2000/svg}rect") if e.find("*") is not None]
        labels = [b.findtext("{http://www.w3.org/2000/svg}title", "").split(":")[0] for b in bars]
        assert labels == ["orders (client)", "orders (server)", "stock (client)", "stock (server)"]
