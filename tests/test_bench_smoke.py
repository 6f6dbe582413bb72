"""A smoke run of the benchmark harness (bench/): every contender, every figure.

Benchmarks are not timed tests: this only checks that ``python -m bench
--smoke`` runs every contender, the AMQP ones against the session's broker and
the NATS ones against a nats-server the bench starts itself, and produces the
tables and the plots with sane numbers. ``make bench`` runs the real thing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import anyio
import pytest
from natsserver import NatsServerUnavailable, find_nats_server
from rabbitmq import unavailable

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.rabbitmq, pytest.mark.nats, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    # Pinned to asyncio: aio-pika and FastStream, two of the contenders, run on
    # asyncio only (their worker processes use asyncio whatever this says).
    return "asyncio"


def test_each_nats_contender_has_a_server_of_its_own() -> None:
    """Two echo servers on one subject (or of one Loom instance) would both answer every
    request: the client would pay for a reply flood the baseline never sees."""
    sys.path.insert(0, str(ROOT))
    try:
        from bench.contenders import NATS_CONTENDERS
    finally:
        sys.path.remove(str(ROOT))
    queues = [c.queue for c in NATS_CONTENDERS.values()]
    assert len(set(queues)) == len(queues), queues
    holds = [c.hold_subject for c in NATS_CONTENDERS.values()]
    assert len(set(holds)) == len(holds), holds


async def test_bench_smoke(rabbitmq_url: str, tmp_path: Path) -> None:
    """Every contender runs every case without an error; every table, plot and target is
    written."""
    for module in ("matplotlib", "psutil"):
        if importlib.util.find_spec(module) is None:
            unavailable(f"{module} is missing: the dev extra installs the bench extra")
    try:
        find_nats_server()
    except NatsServerUnavailable as exc:
        unavailable(f"the NATS contenders need nats-server: {exc}")
    with anyio.fail_after(300):
        done = await anyio.run_process(
            [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
            cwd=ROOT,
            env=os.environ | {"HARE_BENCH_AMQP_URL": rabbitmq_url},
            check=False,
        )
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "[round 1/1]" in stdout  # one progress line per measurement

    table = (tmp_path / "results.md").read_text()
    for label in (
        "raw aiormq",
        "hare_py aiormq backend",
        "hare_py anyio backend",
        "hare_py direct_reply_to",
        "hare_py AMQP 1.0 via RabbitMQ",
        "hare_py AMQP 1.0 peer to peer",
        "proton reactor client via RabbitMQ",
    ):
        assert f"| {label} |" in table
    assert "aio-pika patterns.RPC" in table and "FastStream request/reply" in table
    assert "| broker CPU s/10k calls |" in table
    for png in ("latency.png", "throughput.png"):
        data = (tmp_path / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000

    results = json.loads((tmp_path / "results.json").read_text())
    contenders = {entry["contender"] for entry in results["load"]}
    assert contenders == {
        "aiormq",
        "hare",
        "hare_anyio",
        "hare_anyio_traced",
        "hare_drt",
        "hare_amqp10",
        "hare_amqp10_p2p",
        "proton",
        "aiopika",
        "faststream",
    }
    assert len(results["load"]) == 10 * 4  # every contender in every case
    for entry in results["load"]:
        for run in entry["rounds"]:
            assert run["errors"] == 0, (entry["contender"], run["first_error"])
            assert run["calls"] > 0
            for key in ("calls_per_s", "p50_ms", "p99_ms", "p999_ms", "cpu_s_per_10k"):
                assert math.isfinite(run[key]) and run[key] > 0, (entry["contender"], key)
            assert run["p50_ms"] <= run["p99_ms"] <= run["p999_ms"]
            assert run["peak_rss_mib"] > 0
            # The session's node is on loopback: its CPU is measured, except where
            # the calls do not pass it.
            broker = run["broker_cpu_s_per_10k"]
            if entry["contender"] == "hare_amqp10_p2p":
                assert math.isnan(broker)
            else:
                assert math.isfinite(broker) and broker >= 0, entry["contender"]
    for name, runs in results["hold"].items():
        for run in runs:
            assert run["errors"] == 0 and run["held"] == run["n"], (name, run)
            assert math.isfinite(run["bytes_per_request"])
            assert run["heap_bytes_per_request"] > 0
    holders = {"aiormq", "hare", "hare_anyio", "hare_anyio_traced", "hare_drt", "aiopika"}
    assert set(results["hold"]) == holders
    assert "| calls/s, on / off |" in table  # tracing on against off, as ratios
    assert results["targets"]  # each computed (met or not: that is a finding, not a failure)

    nats_table = (tmp_path / "nats.md").read_text()
    for label in (
        "nats-py request()",
        "hare_py on NATS, asyncio",
        "hare_py on NATS, trio",
        "hare_py on NATS, nats() convention, asyncio",
        "hare_py on NATS, nats() convention, trio",
        "nats-py request(), Loom envelopes",
    ):
        assert f"| {label} |" in nats_table
    for png in ("nats-latency.png", "nats-throughput.png"):
        data = (tmp_path / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
    nats = json.loads((tmp_path / "nats.json").read_text())
    assert nats["baseline"] == "natspy"
    names = {
        "natspy",
        "natspy_loom",
        "hare_nats",
        "hare_nats_trio",
        "hare_nats_plain",
        "hare_nats_plain_trio",
    }
    assert {entry["contender"] for entry in nats["load"]} == names
    assert len(nats["load"]) == 6 * 4  # every contender in every case
    for entry in nats["load"]:
        for run in entry["rounds"]:
            assert run["errors"] == 0, (entry["contender"], run["first_error"])
            assert run["calls"] > 0 and math.isfinite(run["calls_per_s"])
            assert math.isfinite(run["cpu_s_per_10k"]) and run["cpu_s_per_10k"] > 0
            assert math.isfinite(run["broker_cpu_s_per_10k"]), entry["contender"]
    assert set(nats["hold"]) == names
    for name, runs in nats["hold"].items():
        for run in runs:
            assert run["errors"] == 0 and run["held"] == run["n"], (name, run)
            assert run["heap_bytes_per_request"] > 0
    # Each target computed (met or not: that is a finding, not a failure).
    assert len(nats["targets"]) == 10
