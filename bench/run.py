"""The orchestrator: broker, servers, interleaved rounds, medians, table, plots, profile.

    python -m bench                 # the full run (make bench), ~12 minutes on 2 cores
    python -m bench --smoke --out DIR   # a few hundred calls per contender (CI)
    python -m bench --contenders natspy,hare_nats,hare_nats_trio   # NATS only

The AMQP contenders run against one RabbitMQ node (results.md, results.json,
latency.png, throughput.png), the NATS ones against one nats-server (nats.md,
nats.json, nats-latency.png, nats-throughput.png), each with its own baseline
(raw aiormq, nats-py). ``HARE_BENCH_AMQP_URL`` and ``HARE_BENCH_NATS_URL`` use a
running broker instead of a private one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from .contenders import BASELINE, CONTENDERS, NATS_BASELINE, NATS_CONTENDERS

ROOT = Path(__file__).resolve().parent.parent
SMALL = 100
BIG = 64 * 1024

LOAD_METRICS = ("calls_per_s", "p50_ms", "p99_ms", "p999_ms", "cpu_s_per_10k", "peak_rss_mib")


@dataclass(frozen=True)
class Case:
    concurrency: int
    size: int

    @property
    def label(self) -> str:
        return f"c={self.concurrency}, {'64 KiB' if self.size == BIG else f'{self.size} B'}"


@dataclass
class Settings:
    rounds: int
    warmup: float
    duration: float
    concurrencies: tuple[int, ...]
    big_concurrency: int
    hold: int
    contenders: tuple[str, ...]
    profile: bool
    out: Path

    @property
    def cases(self) -> list[Case]:
        return [Case(c, SMALL) for c in self.concurrencies] + [Case(self.big_concurrency, BIG)]


@dataclass
class Results:
    """Every measurement of the run, by (contender, case), one entry per round."""

    load: dict[tuple[str, Case], list[dict[str, Any]]] = field(default_factory=dict)
    hold: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    baseline: str = BASELINE  # what every ratio is to

    def median(self, name: str, case: Case, metric: str) -> float:
        values = [r[metric] for r in self.load.get((name, case), [])]
        return statistics.median(values) if values else math.nan

    def ratio(self, name: str, case: Case, metric: str, baseline: str | None = None) -> float:
        base = self.median(baseline or self.baseline, case, metric)
        return self.median(name, case, metric) / base if base else math.nan

    def hold_median(self, name: str, metric: str) -> float:
        values = [r[metric] for r in self.hold.get(name, [])]
        return statistics.median(values) if values else math.nan


# --- processes ----------------------------------------------------------------------


def find_contender(name: str) -> Any:
    """An AMQP or a NATS contender by name."""
    return CONTENDERS.get(name) or NATS_CONTENDERS[name]


def _command(job: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "bench.worker", json.dumps(job)]


def run_job(job: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    """Run one worker process; its ``RESULT`` line, or RuntimeError with its output."""
    done = subprocess.run(
        _command(job), cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]))
    raise RuntimeError(
        f"worker {job['job']} {job['contender']} failed ({done.returncode}):\n"
        f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )


@contextlib.contextmanager
def servers(url: str, names: Sequence[str]) -> Iterator[dict[str, psutil.Process]]:
    """One echo server process per contender, each ready on its queue."""
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for name in names:
            job = {
                "job": "serve",
                "contender": name,
                "url": url,
                "queue": find_contender(name).queue,
            }
            procs[name] = subprocess.Popen(
                _command(job), cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
        for name, proc in procs.items():
            assert proc.stdout is not None
            lines = []
            while (line := proc.stdout.readline()) and line.strip() != "READY":
                lines.append(line)  # libraries that print; READY, or EOF if it died
            if not line:
                raise RuntimeError(f"the {name} server did not start: {''.join(lines)}")
        yield {name: psutil.Process(p.pid) for name, p in procs.items()}
    finally:
        for proc in procs.values():
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()  # the server's signal to stop
        for proc in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def broker() -> Iterator[str]:
    """``HARE_BENCH_AMQP_URL``, or a private RabbitMQ node for the run."""
    external = os.environ.get("HARE_BENCH_AMQP_URL")
    if external:
        yield external
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from rabbitmq import RabbitMQNode  # the tests' node

    node = RabbitMQNode()
    node.start()
    try:
        yield node.url
    finally:
        node.stop()


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def broker_process(url: str) -> psutil.Process | None:
    """The process listening on ``url``'s loopback port (the run's RabbitMQ node or
    nats-server), to measure its CPU; None for a broker elsewhere."""
    parsed = urlsplit(url)
    if parsed.hostname not in ("127.0.0.1", "localhost") or parsed.port is None:
        return None
    try:
        listening = psutil.net_connections("tcp")
    except psutil.AccessDenied:  # other users' sockets: not everywhere without root
        return None
    for conn in listening:
        port = getattr(conn.laddr, "port", None)  # an empty tuple for some sockets
        if conn.status == psutil.CONN_LISTEN and port == parsed.port and conn.pid:
            return psutil.Process(conn.pid)
    return None


# --- the run ---------------------------------------------------------------------------


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    k = round_index % len(names)
    return [*names[k:], *names[:k]]


@contextlib.contextmanager
def nats_server() -> Iterator[str]:
    """``HARE_BENCH_NATS_URL``, or a private nats-server for the run (127.0.0.1, a free
    port), the tests' own."""
    external = os.environ.get("HARE_BENCH_NATS_URL")
    if external:
        yield external
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from natsserver import NatsServer  # the tests' server

    server = NatsServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def nats_holder(url: str) -> Iterator[None]:
    """The in-flight test's holder process (see ``worker.nats_holder``)."""
    proc = subprocess.Popen(
        _command({"job": "nats_holder", "url": url}),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "READY":
            raise RuntimeError("the NATS holder did not start")
        yield
    finally:
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(settings: Settings, url: str, baseline: str = BASELINE) -> Results:
    results = Results(baseline=baseline)
    names = settings.contenders
    holder = nats_holder(url) if baseline == NATS_BASELINE else contextlib.nullcontext()
    with servers(url, names) as procs, holder:
        the_broker = broker_process(url)
        for r in range(settings.rounds):
            order = rotated(names, r)
            for case in settings.cases:
                for name in order:
                    contender = find_contender(name)
                    job = {
                        "job": "load",
                        "contender": name,
                        "url": url,
                        "queue": contender.queue,
                        "concurrency": case.concurrency,
                        "size": case.size,
                        "warmup": settings.warmup,
                        "duration": settings.duration,
                    }
                    broker = the_broker if getattr(contender, "brokered", True) else None
                    cpu0 = cpu_seconds(procs[name])
                    broker0 = cpu_seconds(broker) if broker is not None else math.nan
                    result = run_job(job)
                    calls = result["calls"]
                    server_cpu = cpu_seconds(procs[name]) - cpu0
                    broker_cpu = cpu_seconds(broker) - broker0 if broker is not None else math.nan
                    # The server also served the warm-up and drain: per call served.
                    served = result.get("served") or math.nan
                    result["server_cpu_s_per_10k"] = server_cpu / served * 10_000
                    result["broker_cpu_s_per_10k"] = broker_cpu / served * 10_000
                    results.load.setdefault((name, case), []).append(result)
                    print(
                        f"[round {r + 1}/{settings.rounds}] {contender.label:<24} "
                        f"{case.label:<15} {result['calls_per_s']:>8,.0f} calls/s  "
                        f"p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:8.2f} ms  "
                        f"p99.9 {result['p999_ms']:8.2f} ms  "
                        f"cpu {result['cpu_s_per_10k']:5.2f} s/10k  "
                        f"rss {result['peak_rss_mib']:5.1f} MiB  "
                        f"errors {result['errors']}  ({calls} calls)",
                        flush=True,
                    )
                    if result["errors"]:
                        print(f"    first error: {result['first_error']}", flush=True)
            for name in order:
                contender = find_contender(name)
                if not contender.concurrent or not settings.hold:
                    continue
                if not getattr(contender, "holds", True):  # its replies are not 0-9-1's
                    continue
                job = {
                    "job": "hold",
                    "contender": name,
                    "url": url,
                    "queue": contender.queue,
                    "hold_queue": f"bench.hold.{name}",
                    "n": settings.hold,
                    "size": SMALL,
                }
                result = run_job(job)
                results.hold.setdefault(name, []).append(result)
                print(
                    f"[round {r + 1}/{settings.rounds}] {contender.label:<24} "
                    f"{result['n']:,} in flight: {result['held']:,} held by the broker, "
                    f"{result['bytes_per_request']:,.0f} B of client RSS each, "
                    f"{result['errors']} errors, all answered in {result['seconds']:.1f} s",
                    flush=True,
                )
                if result["errors"]:
                    print(f"    first error: {result['first_error']}", flush=True)
    return results


# --- profile ---------------------------------------------------------------------------


def _frame_name(frame: str) -> str:
    """``func (/long/path/hare_py/rpc/client.py:123)`` -> ``func (hare_py/rpc/client.py)``."""
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = os.path.relpath(path, ROOT) if path.startswith("/") else path
    return f"{func} ({path})"


def profile(
    url: str, settings: Settings, contender: str = "hare", concurrency: int = 64
) -> str | None:
    """Sample a hare_py client at ``concurrency`` with py-spy; the top functions as Markdown."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed: no profile", flush=True)
        return None
    raw = settings.out / f"profile-{contender}-c{concurrency}.txt"
    job = {
        "job": "load",
        "contender": contender,
        "url": url,
        "queue": find_contender(contender).queue,
        "concurrency": concurrency,
        "size": SMALL,
        "warmup": settings.warmup,
        "duration": max(settings.duration * 2, 1.0),
    }
    with servers(url, [contender]):
        spy_args = ["record", "--rate", "250", "--format", "raw", "--output", str(raw), "--"]
        done = subprocess.run(
            [spy, *spy_args, *_command(job)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    if done.returncode != 0 or not raw.exists():
        print(f"py-spy failed ({done.returncode}): {done.stderr[-1500:]}", flush=True)
        return None
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + count
    if not total:
        return None

    def top(counts: dict[str, int], n: int, only: str = "") -> list[str]:
        rows = sorted(((c, f) for f, c in counts.items() if only in f), reverse=True)[:n]
        return [f"| {100 * c / total:.1f} % | `{f}` |" for c, f in rows]

    parts = [
        f"py-spy, {total:,} samples of the client process's CPU time (idle time not sampled), "
        f"{find_contender(contender).label} client at concurrency {concurrency}, 100 B.",
        "",
        "Self time (the function itself was running):",
        "",
        "| share | function |",
        "|---|---|",
        *top(own, 20),
        "",
        "Inclusive time of hare_py's own functions (running, or calling what runs):",
        "",
        "| share | function |",
        "|---|---|",
        *top(inclusive, 20, "hare_py/"),
    ]
    return "\n".join(parts)


# --- main ------------------------------------------------------------------------------


def write(
    results: Results,
    settings: Settings,
    url_note: str,
    profiles: Sequence[tuple[str, str | None]] = (),
) -> None:
    from . import report

    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    rows = report.targets(results, settings)
    pngs = report.plots(results, settings, out)
    md = [
        "# hare_py benchmark results",
        "",
        f"Command: `{' '.join(['python -m bench', *sys.argv[1:]])}` ({url_note}). "
        f"{settings.rounds} interleaved rounds (contenders in rotated order within each), "
        f"{settings.warmup:g} s warm-up and {settings.duration:g} s measured per "
        f"measurement, a fresh client process each; every figure is the median over rounds, "
        f"in parentheses its ratio to raw aiormq's median.",
        "",
        report.table(results, settings),
        "",
        "Requests held in flight (nobody consumes the queue until all are queued; then "
        "a consumer answers them and every reply is checked):",
        "",
        report.hold_table(results, settings),
        "",
        *_tracing(report.tracing_table(results, settings)),
        "Targets:",
        "",
        report.targets_table(rows),
        "",
        *[f"![{p.stem}]({p.name})" for p in pngs],
    ]
    _write_files(out / "results", md, results, settings, rows, pngs, profiles, shown_from=6)


def _tracing(table: str) -> list[str]:
    if not table:
        return []
    return [
        "Tracing on (an SDK tracer and meter provider given to client and server) against "
        "tracing off, the anyio backend, medians of this run:",
        "",
        table,
        "",
    ]


def write_nats(
    results: Results,
    settings: Settings,
    note: str,
    profiles: Sequence[tuple[str, str | None]] = (),
) -> None:
    """The NATS contenders' table, targets and plots: nats.md, nats.json, nats-*.png."""
    from . import report

    out = settings.out
    rows = report.nats_targets(results, settings)
    pngs = report.plots(results, settings, out, prefix="nats-", broker="nats-server")
    md = [
        "# hare_py on NATS: benchmark results",
        "",
        f"Command: `{' '.join(['python -m bench', *sys.argv[1:]])}` ({note}). "
        f"{settings.rounds} interleaved rounds (contenders in rotated order within each), "
        f"{settings.warmup:g} s warm-up and {settings.duration:g} s measured per "
        f"measurement, a fresh client process each; every figure is the median over rounds, "
        f"in parentheses its ratio to nats-py's median in the same run. nats-py's "
        f"`request()` calls a nats-py echo responder (`msg.respond(msg.data)`, raw bytes), "
        f"as hare_py's `RPCClient` on the nats() convention calls an `RPCServer` on it; "
        f"with Loom envelopes, nats-py's caller and responder wrap and unwrap Loom's JSON "
        f"envelopes with `json`, as hare_py's loom convention does (JSON payloads, one "
        f"muxed inbox). Each target compares contenders doing the same work. Each client "
        f"and its server run on the loop named, each in its own process.",
        "",
        report.table(results, settings),
        "",
        "Requests held in flight (a holder in its own process collects them all, answering "
        "nothing; then it answers them and every reply is checked):",
        "",
        report.hold_table(results, settings, held_by="the holder"),
        "",
        "Targets:",
        "",
        report.targets_table(rows),
        "",
        *[f"![{p.stem}]({p.name})" for p in pngs],
    ]
    extra = {"baseline": results.baseline}
    _write_files(out / "nats", md, results, settings, rows, pngs, profiles, 4, extra)


def _write_files(
    stem: Path,
    md: list[str],
    results: Results,
    settings: Settings,
    rows: Sequence[tuple[str, bool, str]],
    pngs: Sequence[Path],
    profiles: Sequence[tuple[str, str | None]],
    shown_from: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """STEM.md (``md`` and the profiles) and STEM.json (``extra`` after the settings);
    prints ``md`` from line ``shown_from`` on."""
    for name, profile_md in profiles:
        if profile_md:
            md += ["", f"## Profile of the {find_contender(name).label} client", "", profile_md]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    serialisable = {
        "settings": {k: str(v) for k, v in vars(settings).items()},
        **(extra or {}),
        "load": [
            {"contender": n, "concurrency": c.concurrency, "size": c.size, "rounds": runs}
            for (n, c), runs in results.load.items()
        ],
        "hold": results.hold,
        "targets": [{"target": t, "met": ok, "measured": d} for t, ok, d in rows],
    }
    stem.with_suffix(".json").write_text(json.dumps(serialisable, indent=1))
    print("\n".join(md[shown_from:]), flush=True)
    written = ", ".join(str(p) for p in pngs)
    print(f"\nwritten: {stem.with_suffix('.md')}, {written}", flush=True)


def parse(argv: Sequence[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few hundred calls per contender")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=float, help="measured seconds per measurement (3)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per measurement (1)")
    p.add_argument("--hold", type=int, help="requests held in flight at once (10000)")
    p.add_argument(
        "--contenders",
        help=f"comma-separated subset of {','.join([*CONTENDERS, *NATS_CONTENDERS])}",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = p.parse_args(argv)
    smoke = a.smoke
    names = tuple(a.contenders.split(",")) if a.contenders else (*CONTENDERS, *NATS_CONTENDERS)
    unknown = [n for n in names if n not in CONTENDERS and n not in NATS_CONTENDERS]
    if unknown:
        p.error(f"unknown contenders: {', '.join(unknown)}")
    # Every ratio needs its protocol's baseline.
    if any(n in NATS_CONTENDERS for n in names) and NATS_BASELINE not in names:
        names = (NATS_BASELINE, *names)
    if any(n in CONTENDERS for n in names) and BASELINE not in names:
        names = (BASELINE, *names)
    return Settings(
        rounds=a.rounds or (1 if smoke else 3),
        warmup=a.warmup if a.warmup is not None else (0.2 if smoke else 1.0),
        duration=a.duration or (0.4 if smoke else 3.0),
        concurrencies=(1, 8, 32) if smoke else (1, 64, 1024),
        big_concurrency=8 if smoke else 64,
        hold=a.hold if a.hold is not None else (300 if smoke else 10_000),
        contenders=names,
        profile=not a.no_profile and not smoke,
        out=a.out,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse(argv)
    settings.out.mkdir(parents=True, exist_ok=True)
    # The AMQP 1.0 peer-to-peer echo server listens here; clients dial it.
    os.environ.setdefault("HARE_BENCH_P2P_PORT", str(_free_port()))
    began = time.monotonic()
    amqp = dataclasses.replace(
        settings, contenders=tuple(n for n in settings.contenders if n in CONTENDERS)
    )
    nats = dataclasses.replace(
        settings, contenders=tuple(n for n in settings.contenders if n in NATS_CONTENDERS)
    )
    n = len(settings.contenders) * len(settings.cases) * settings.rounds
    print(
        f"{n} measurements of {settings.warmup:g}+{settings.duration:g} s and "
        f"{settings.rounds} in-flight tests per contender; results into {settings.out}",
        flush=True,
    )
    if amqp.contenders:
        with broker() as url:
            note = (
                "RabbitMQ from HARE_BENCH_AMQP_URL"
                if os.environ.get("HARE_BENCH_AMQP_URL")
                else "a private RabbitMQ node started by the run"
            )
            results = measure(amqp, url)
            profiles: list[tuple[str, str | None]] = [
                (name, profile(url, amqp, name))
                for name in ("hare", "hare_anyio")
                if amqp.profile and name in amqp.contenders
            ]
        write(results, amqp, note, profiles)
    if nats.contenders:
        with nats_server() as url:
            note = (
                "nats-server from HARE_BENCH_NATS_URL"
                if os.environ.get("HARE_BENCH_NATS_URL")
                else "a private nats-server started by the run"
            )
            results = measure(nats, url, NATS_BASELINE)
            profiles = [
                (name, profile(url, nats, name))
                for name in ("hare_nats", "hare_nats_trio", "hare_nats_plain")
                if nats.profile and name in nats.contenders
            ]
        write_nats(results, nats, note, profiles)
    print(f"done in {time.monotonic() - began:.0f} s", flush=True)
