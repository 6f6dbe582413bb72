"""The soak: mixed RPC load for minutes, a fault every few seconds, nothing lost, no growth.

    python -m bench.soak                     # make soak: 10 minutes, a fault every 30 s
    python -m bench.soak --minutes 1 --fault-every 10    # a smoke run
    python -m bench.soak --backend aiormq    # the aiormq backend, as the baseline
    python -m bench.soak --loop trio

One process (this one) runs an ``RPCClient`` under ``--callers`` concurrent callers
and measures it; a second process runs two ``RPCServer`` actors sharing one queue
and the fault proxy (``tests/chaos/proxy.py``) that the client's connection goes
through, so that the client process holds nothing but the client, its load and the
bookkeeping. The broker is a private RabbitMQ node (as ``make bench`` starts one),
or ``HARE_BENCH_AMQP_URL`` (with ``HARE_BENCH_RABBITMQCTL``, a command line that
reaches its rabbitmqctl, for the connection-close faults).

The load mixes payloads of 100 B to 64 KiB, a share of ``idempotent=True``
requests, requests the server answers only after their deadline (each must end in
``RequestTimeout``) and requests whose handler raises (each must end in
``RemoteError`` naming that request). Every payload carries a unique id and every
reply is compared with its request: a reply carrying another id is a misdelivery.

Faults, in turn: the broker closes the client's connection (``rabbitmqctl
close_connection``), then the server's; the proxy resets the client's TCP
connection; the proxy stalls it until heartbeats notice (``heartbeat=2``); a
client callback raises, so that its supervisor restarts the actor.

Memory is the client process's. Each minute the callers are held until no
request is in flight and the client keeps none (an idle moment, a second or
two), then after a ``gc.collect()`` come RSS, tasks, open fds and gc-tracked
objects, and after ``malloc_trim(0)`` (glibc hands its free pages back) the RSS
left, the live memory: its slope tells a leak from the allocator keeping pages.
RSS is also sampled every 5 s under load, for its range.

Figures go to ``bench/results/soak.json`` (one entry per backend and loop, so
runs on other backends add to it) and ``bench/results/soak.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import json
import logging
import math
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psutil
from anyio.abc import Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the chaos suite's load, proxy and broker node

from chaos.harness import Load, Watched  # noqa: E402
from chaos.proxy import FaultProxy  # noqa: E402
from rabbitmq import ExternalRabbitMQ, RabbitMQNode, with_amqp_backend  # noqa: E402

import hare_py  # noqa: E402
from hare_py import (  # noqa: E402
    Backoff,
    Caller,
    Connection,
    HareError,
    NoReply,
    RemoteError,
    Reply,
    Request,
    RPCServer,
)
from hare_py.transport import parse_url  # noqa: E402

FAST = Backoff(initial=0.05, maximum=1.0)  # reconnect pacing, as in the chaos suite
SIZES = (100, 1024, 16 * 1024, 64 * 1024)
SIZE_WEIGHTS = (45, 25, 20, 10)
# echo: plain request; idem: idempotent=True; slow: answered after its deadline;
# fail: the handler raises.
KINDS = ("echo", "idem", "slow", "fail")
KIND_WEIGHTS = (64, 26, 0, 10)
# One caller in eight is in the slow lane: a slow call holds its caller for its
# whole deadline, so slow calls drawn by every caller would leave few callers free.
SLOW_LANE = 8
SLOW_LANE_WEIGHTS = (25, 25, 50, 0)
EXPECTED = {"echo": "ok", "idem": "ok", "slow": "RequestTimeout", "fail": "RemoteError"}
AT_FAULTS = frozenset({"ConnectionLost", "RequestTimeout", "ClientCrashed"})
FAULTS = ("client_close", "server_close", "proxy_cut", "proxy_stall", "callback_crash")
PAD = os.urandom(64 * 1024)
QUIET = frozenset({"rpc.handler_failed"})  # events counted but kept out of the log files
SAMPLE_EVERY = 5.0  # seconds between RSS samples (the slope's points)


# --- logging: counted by event, warnings into a file ------------------------------------


class EventCounter(logging.Handler):
    """Counts hare_py's log events by name (their ``msg`` is the event dict), and
    timestamps each ``connection.down``: the moment a connection saw its loss."""

    def __init__(self, on_down: Any = None) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()
        self.downs: list[float] = []
        self.on_down = on_down

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.msg
        name = msg.get("event") if isinstance(msg, dict) else str(msg)
        self.counts[f"{record.levelname.lower()} {name}"] += 1
        if name == "connection.down":
            t = time.monotonic()
            if len(self.downs) < 10_000:
                self.downs.append(t)
            if self.on_down is not None:
                self.on_down(t)

    def first_down(self, after: float) -> float | None:
        return next((t for t in self.downs if t >= after), None)


def setup_logging(path: Path, on_down: Any = None) -> EventCounter:
    counter = EventCounter(on_down)
    to_file = logging.FileHandler(path)
    to_file.setLevel(logging.WARNING)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    # Every failing handler is logged with its traceback: counted, not written.
    to_file.addFilter(lambda r: not (isinstance(r.msg, dict) and r.msg.get("event") in QUIET))
    hare = logging.getLogger("hare_py")
    hare.setLevel(logging.INFO)  # info: connection and channel events; never per request
    hare.addHandler(counter)
    hare.addHandler(to_file)
    hare.propagate = False
    return counter


def url_with(url: str, **params: str) -> str:
    """``url`` with query parameters added (a later one of the same name wins)."""
    for key, value in params.items():
        url = f"{url}{'&' if '?' in url else '?'}{key}={value}"
    return url


def process_figures(process: psutil.Process) -> dict[str, float]:
    return {"rss_mib": process.memory_info().rss / 2**20, "fds": process.num_fds()}


# --- the server process ------------------------------------------------------------------


class HandlerFailed(Exception):
    """What a ``fail`` request's handler raises; the client sees it as RemoteError."""


class SoakServer(RPCServer[Any]):
    """Echoes; answers ``slow`` requests ``delay`` seconds later; raises for ``fail``."""

    async def init(self, arg: Any) -> Any:
        return arg  # (task group for late answers, their delay)

    async def handle_request(self, request: Request, caller: Caller, state: Any) -> Any:
        kind, rid, _ = request.payload.split(b":", 2)
        if kind == b"slow":
            tg, delay = state
            tg.start_soon(self._answer_late, caller, request.payload, delay)
            return NoReply(state)
        if kind == b"fail":
            raise HandlerFailed(f"handler failed for {rid.decode()}")
        return Reply(request.payload, state)

    async def _answer_late(self, caller: Caller, payload: bytes, delay: float) -> None:
        await anyio.sleep(delay)
        self.reply(caller, payload)  # after a restart or a lost channel: nobody to answer


async def serve(job: dict[str, Any]) -> None:
    """``--serve``: servers, the proxy, and a line protocol on stdin/stdout.

    Commands: ``stall``, ``resume``, ``reset``, ``stats``, ``quit``; each is answered
    by ``ok <json>``. Unprompted lines: ``event down <t>`` when the connection sees
    its loss (its ``connection.down`` event), ``event up <t>`` when every server has
    a channel again (``time.monotonic()``, which
    is one clock across processes).
    """

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    counter = setup_logging(Path(job["log"]), lambda t: say(f"event down {t}"))
    target = parse_url(job["url"])
    proxy = FaultProxy(target.port, target.host)

    async with anyio.create_task_group() as tg:
        await tg.start(proxy.run)
        async with (
            Connection(
                job["url"], name=job["name"], heartbeat=job["heartbeat"], backoff=FAST
            ) as conn,
            contextlib.AsyncExitStack() as stack,
        ):
            servers = [
                await stack.enter_async_context(
                    SoakServer.start(
                        conn,
                        queue=job["queue"],
                        prefetch=256,
                        arg=(tg, job["slow_delay"]),
                        max_restarts=100,
                        within=60,
                        backoff=FAST,
                        name=f"soak-server-{i}",
                    )
                )
                for i in range(job["servers"])
            ]
            with anyio.fail_after(60):
                while not all(s.connected for s in servers):
                    await anyio.sleep(0.01)

            async def watch() -> None:
                up, connects = True, conn.connects
                while True:
                    await anyio.sleep(0.01)
                    now_up = all(s.connected for s in servers) and conn.connects == connects
                    if not up and all(s.connected for s in servers):
                        say(f"event up {time.monotonic()}")
                        now_up = True
                    up, connects = now_up, conn.connects

            tg.start_soon(watch)
            say(f"ready {proxy.port}")
            me = psutil.Process()
            async with anyio.wrap_file(sys.stdin) as commands:
                async for line in commands:
                    command = line.strip()
                    reply: dict[str, Any] = {"t": time.monotonic()}
                    if command == "stall":
                        reply["connections"] = proxy.connections
                        proxy.stall()
                    elif command == "resume":
                        proxy.resume()
                    elif command == "reset":
                        reply["connections"] = await proxy.reset()
                    elif command == "stats":
                        reply |= process_figures(me) | {
                            "connects": conn.connects,
                            "handled": [s.handled for s in servers],
                            "tasks": len(anyio.get_running_tasks()),
                            "log_events": dict(counter.counts),
                        }
                    elif command == "quit":
                        say("ok " + json.dumps(reply))
                        break
                    else:
                        reply["error"] = f"unknown command {command!r}"
                    say("ok " + json.dumps(reply))
        tg.cancel_scope.cancel()


class ServerProcess:
    """The client side of ``serve``: commands in order, events as they come."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.events: list[tuple[str, float]] = []
        self._send, self._replies = anyio.create_memory_object_stream[str](16)
        self._lock = anyio.Lock()

    @classmethod
    @contextlib.asynccontextmanager
    async def run(cls, job: dict[str, Any], stderr: Any) -> AsyncIterator[ServerProcess]:
        command = [sys.executable, "-m", "bench.soak", "--serve", json.dumps(job)]
        process = await anyio.open_process(command, cwd=ROOT, stderr=stderr)
        server = cls(process)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(server._read)
                try:
                    yield server
                finally:
                    with (
                        anyio.move_on_after(15, shield=True),
                        contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError),
                    ):
                        await server.command("quit")
                        await process.wait()
                    tg.cancel_scope.cancel()
        finally:
            if process.returncode is None:
                process.kill()
                with anyio.CancelScope(shield=True):
                    await process.wait()

    async def _read(self) -> None:
        assert self.process.stdout is not None
        lines = BufferedByteReceiveStream(self.process.stdout)
        with contextlib.suppress(anyio.EndOfStream, anyio.IncompleteRead):
            while True:
                line = (await lines.receive_until(b"\n", 1 << 20)).decode()
                if line.startswith("event "):
                    _, what, t = line.split()
                    self.events.append((what, float(t)))
                else:
                    await self._send.send(line)
        self._send.close()

    async def ready(self) -> int:
        line = await self._replies.receive()
        if not line.startswith("ready "):
            raise RuntimeError(f"the server process said {line!r}")
        return int(line.split()[1])

    async def command(self, text: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        async with self._lock:
            await self.process.stdin.send(text.encode() + b"\n")
            line = await self._replies.receive()
        if not line.startswith("ok "):
            raise RuntimeError(f"the server process answered {text!r} with {line!r}")
        reply: dict[str, Any] = json.loads(line[3:])
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def first_event(self, what: str, after: float) -> float | None:
        return next((t for w, t in self.events if w == what and t >= after), None)


# --- the client side -----------------------------------------------------------------------


class SoakClient(Watched):
    """The chaos suite's Watched client, whose ``handle_info`` crashes on demand."""

    async def handle_info(self, message: Any, state: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crash injected by the soak")
        return NoReply(state)


class Histogram:
    """Latencies in buckets of 1/16 octave from 0.05 ms: constant memory, ~4 % resolution."""

    BASE = 0.05e-3

    def __init__(self) -> None:
        self.counts = [0] * 400
        self.n = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        i = 0 if seconds <= self.BASE else int(16 * math.log2(seconds / self.BASE))
        self.counts[min(i, len(self.counts) - 1)] += 1
        self.n += 1
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float:
        if not self.n:
            return math.nan
        rank, seen = q * self.n, 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(self.BASE * 2 ** ((i + 1) / 16), self.max)
        return self.max


@dataclass
class Watch:
    """Recovery after one fault: the first success of a call started after its effect."""

    issued: float
    effect: float | None = None
    first_ok: float | None = None
    held: list[tuple[float, float]] = field(default_factory=list)  # until effect is known

    def offer(self, start: float, end: float) -> bool:
        """Note a success; True once the recovery is known."""
        if self.effect is None:
            if start >= self.issued and len(self.held) < 100_000:
                self.held.append((start, end))
            return False
        if start >= self.effect:
            self.first_ok = end if self.first_ok is None else min(self.first_ok, end)
            return True
        return False

    def set_effect(self, t: float) -> bool:
        self.effect = t
        ends = [end for start, end in self.held if start >= t]
        self.held = []
        if ends:
            self.first_ok = min(ends)
        return self.first_ok is not None


@dataclass
class MixedLoad(Load):
    """The chaos suite's Load with a mix of kinds and sizes, checked per kind.

    Bounded memory: counters and a histogram, no per-call lists (a soak's own
    bookkeeping must not look like a leak). ``Load``'s ``successes`` stays empty;
    recovery goes through ``watch()``.
    """

    slow_timeout: float = 0.5
    seed: int = 0
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (end, kind, outcome) of calls that did not get their kind's expected outcome
    off: list[tuple[float, str, str]] = field(default_factory=list)
    wrong_examples: list[str] = field(default_factory=list)
    latency: Histogram = field(default_factory=Histogram)
    calls: int = 0
    overrun_count: int = 0
    unexpected_count: int = 0
    watches: list[Watch] = field(default_factory=list)
    busy: int = 0  # callers inside a request
    gate: anyio.Event | None = None  # while set, callers wait for it before a request

    async def quiesce(self, limit: float) -> bool:
        """Hold callers before their next request until every request has ended and
        the client holds none; False if that took longer than ``limit`` seconds."""
        self.gate = anyio.Event()
        return await wait_until(lambda: self.busy == 0 and self.client.pending == 0, limit)

    def resume(self) -> None:
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.set()

    def watch(self, issued: float) -> Watch:
        w = Watch(issued)
        self.watches.append(w)
        return w

    def _misdelivered(self, rid: str, got: object) -> None:
        self.wrong += 1
        if len(self.wrong_examples) < 20:
            self.wrong_examples.append(f"{rid} got {got!r:.120}")

    async def _caller(self, index: int) -> None:
        rng = random.Random(self.seed * 100_003 + index)
        token = secrets.token_hex(4)
        seq = 0
        while not self.stopping:
            seq += 1
            weights = SLOW_LANE_WEIGHTS if index % SLOW_LANE == SLOW_LANE - 1 else KIND_WEIGHTS
            kind = rng.choices(KINDS, weights)[0]
            size = rng.choices(SIZES, SIZE_WEIGHTS)[0] if kind in ("echo", "idem") else 100
            rid = f"{index}.{seq}.{token}"
            head = f"{kind}:{rid}:".encode()
            payload = head + PAD[: max(0, size - len(head))]
            timeout = self.slow_timeout if kind == "slow" else self.timeout
            if self.gate is not None:
                await self.gate.wait()
            start = time.monotonic()
            outcome = "ok"
            self.busy += 1
            try:
                reply = await self.client.request(
                    payload, self.routing_key, timeout=timeout, idempotent=kind == "idem"
                )
            except RemoteError as exc:
                outcome = "RemoteError"
                if kind == "fail" and f"failed for {rid}" not in exc.message:
                    self._misdelivered(rid, exc)
                    outcome = "misdelivered"
            except HareError as exc:
                outcome = type(exc).__name__
            except Exception as exc:
                outcome = "unexpected"
                self.unexpected_count += 1
                if len(self.unexpected) < 20:
                    self.unexpected.append(repr(exc))
            else:
                if reply != payload:
                    self._misdelivered(rid, reply)
                    outcome = "misdelivered"
            self.busy -= 1
            end = time.monotonic()
            elapsed = end - start
            self.calls += 1
            self.outcomes[kind, outcome] += 1
            self.longest = max(self.longest, elapsed)
            if elapsed > timeout + self.grace:
                self.overrun_count += 1
                if len(self.overruns) < 100:
                    self.overruns.append(round(elapsed, 3))
            if outcome == "ok" and kind in ("echo", "idem"):
                self.ok += 1
                self.latency.add(elapsed)
                if self.watches:
                    self.watches = [w for w in self.watches if not w.offer(start, end)]
            if outcome not in ("ok", "misdelivered", "unexpected"):
                self.errors[outcome] += 1
            if outcome != EXPECTED[kind]:
                if len(self.off) < 200_000:
                    self.off.append((end, kind, outcome))
                await anyio.sleep(0.02)  # a failing broker is not a reason to spin


class Monitor:
    """Connection transitions of the client, and the event loop's lag."""

    def __init__(self, client: SoakClient, conn: Connection, log: EventCounter) -> None:
        self.client, self.conn, self.log = client, conn, log
        self.events: list[tuple[str, float]] = []
        self.lag_max = 0.0  # since the last sample
        self.lag_max_all = 0.0

    async def run(self) -> None:
        up, connects, tick = True, self.conn.connects, 0.01
        while True:
            before = time.monotonic()
            await anyio.sleep(tick)
            now = time.monotonic()
            lag = now - before - tick
            self.lag_max = max(self.lag_max, lag)
            self.lag_max_all = max(self.lag_max_all, lag)
            now_up = self.client.connected and self.conn.connects == connects
            if up and not now_up:
                self.events.append(("down", now))
            elif not up and self.client.connected:
                self.events.append(("up", now))
                now_up = True
            up, connects = now_up, self.conn.connects

    def first(self, what: str, after: float) -> float | None:
        return next((t for w, t in self.events if w == what and t >= after), None)

    def first_down(self, after: float) -> float | None:
        """When the client's connection saw its loss: its log event, else the poll."""
        return self.log.first_down(after) or self.first("down", after)


@dataclass
class Settings:
    minutes: float
    fault_every: float
    backend: str
    loop: str
    callers: int
    warmup: float
    heartbeat: float
    timeout: float
    slow_timeout: float
    servers: int
    faults: tuple[str, ...]
    seed: int
    out: Path
    grace: float = 0.5
    notes: tuple[str, ...] = ()
    tracemalloc: int = 0  # frames per traceback; 0: off
    malloc_trim: bool = True


async def wait_until(predicate: Any, seconds: float) -> bool:
    with anyio.move_on_after(seconds):
        while not predicate():
            await anyio.sleep(0.01)
        return True
    return False


async def inject(
    kind: str,
    n: int,
    *,
    load: MixedLoad,
    client: SoakClient,
    monitor: Monitor,
    server: ServerProcess,
    broker: Any,
    names: dict[str, str],
    settings: Settings,
    t0: float,
) -> dict[str, Any]:
    """One fault; what it did and when (seconds from the start of the measured run)."""
    row: dict[str, Any] = {"n": n, "fault": kind}
    inits, connects = client.inits, monitor.conn.connects
    issued = time.monotonic()
    watch = load.watch(issued)
    effect: float | None = None
    if kind in ("client_close", "server_close"):
        name = names["client" if kind == "client_close" else "server"]
        await anyio.to_thread.run_sync(broker.close_connection, name, "soak fault")
        if kind == "client_close":
            await wait_until(lambda: monitor.first_down(issued) is not None, 30)
            effect = monitor.first_down(issued)
        else:
            await wait_until(lambda: server.first_event("down", issued) is not None, 30)
            effect = server.first_event("down", issued)
        row["ctl_s"] = round(time.monotonic() - issued, 3)
    elif kind == "proxy_cut":
        reply = await server.command("reset")
        row["cut_connections"] = reply["connections"]
        effect = reply["t"]
    elif kind == "proxy_stall":
        reply = await server.command("stall")
        effect = reply["t"]
        limit = 4 * settings.heartbeat + 10
        detected = await wait_until(lambda: monitor.first_down(effect) is not None, limit)
        down = monitor.first_down(effect)
        row["detected_s"] = round(down - effect, 3) if detected and down else None
        await server.command("resume")
    elif kind == "callback_crash":
        client.send("crash")
        effect = issued
        await wait_until(lambda: client.inits > inits, 30)
    if effect is None:
        row["error"] = "the fault had no visible effect"
        effect = issued
    watch.set_effect(effect)
    row["at_s"] = round(effect - t0, 3)
    row["effect"] = effect  # absolute, removed before writing
    row["issued"] = issued
    row["watch"] = watch
    row["inits_before"], row["connects_before"] = inits, connects
    return row


async def drive(
    settings: Settings, broker: Any, url: str, workdir: Path, server_err: Any
) -> dict[str, Any]:
    """Servers, client, load, faults and samples: one soak on the running event loop."""
    counter = setup_logging(workdir / "client.log")
    me = psutil.Process()
    queue = f"soak.{secrets.token_hex(4)}"
    names = {
        "client": f"soak-client-{secrets.token_hex(4)}",
        "server": f"soak-server-{secrets.token_hex(4)}",
    }
    backend_url = with_amqp_backend(url, settings.backend if settings.loop == "asyncio" else None)
    hb = f"{settings.heartbeat:g}"
    job = {
        "url": url_with(backend_url, heartbeat=hb),
        "name": names["server"],
        "queue": queue,
        "heartbeat": settings.heartbeat,
        "servers": settings.servers,
        "slow_delay": 2 * settings.slow_timeout,
        "log": str(workdir / "server.log"),
        "loop": settings.loop,
    }
    duration = settings.minutes * 60
    n_faults = int(duration // settings.fault_every) if settings.faults else 0
    result: dict[str, Any] = {}
    async with ServerProcess.run(job, server_err) as server:
        proxy_port = await server.ready()
        server_ps = psutil.Process(server.process.pid)
        target = parse_url(backend_url)
        proxied = dataclasses.replace(target, host="127.0.0.1", port=proxy_port)
        client_url = url_with(proxied.with_secret(), heartbeat=hb)
        tasks_before = len(anyio.get_running_tasks())
        fds_before = me.num_fds()
        async with (
            Connection(client_url, name=names["client"], heartbeat=settings.heartbeat,
                       backoff=FAST) as conn,
            SoakClient.start(conn, timeout=settings.timeout, backoff=FAST,
                             max_restarts=20, within=60) as client,
        ):  # fmt: skip
            if not await wait_until(lambda: client.connected, 60):
                raise RuntimeError("the client did not connect within 60 s")
            load = MixedLoad(
                client,
                queue,
                callers=settings.callers,
                timeout=settings.timeout,
                grace=settings.grace,
                slow_timeout=settings.slow_timeout,
                seed=settings.seed,
            )
            monitor = Monitor(client, conn, counter)
            load_done = anyio.Event()

            async def run_load() -> None:
                await load.run()
                load_done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(monitor.run)
                tg.start_soon(run_load)
                print(f"warming up for {settings.warmup:g} s", flush=True)
                await anyio.sleep(settings.warmup)
                result = await measure(
                    settings, tg, load, client, conn, monitor, server, server_ps,
                    broker, names, counter, n_faults, duration,
                )  # fmt: skip
                load.stop()
                stop_at = time.monotonic()
                limit = max(settings.timeout, settings.slow_timeout) + settings.grace + 10
                finished = await wait_until(load_done.is_set, limit)
                result["callers_stopped_s"] = round(time.monotonic() - stop_at, 3)
                result["hung_callers"] = not finished
                if not finished:
                    result["tasks_at_hang"] = sorted(
                        str(t.name) for t in anyio.get_running_tasks()
                    )[:200]
                result["pending_after_load"] = client.pending
                tg.cancel_scope.cancel()
        await anyio.sleep(0.5)  # closed connections' fds and tasks are released
        gc.collect()
        result["after_close"] = {
            "tasks": len(anyio.get_running_tasks()),
            "tasks_before_client": tasks_before,
            "fds": me.num_fds(),
            "fds_before_client": fds_before,
        }
        stats = await server.command("stats")
        result["server"] = {
            "reconnects": stats["connects"] - 1,
            "handled": stats["handled"],
            "rss_mib_end": round(stats["rss_mib"], 2),
            "fds_end": stats["fds"],
            "tasks_end": stats["tasks"],
            "log_events": stats["log_events"],
        }
    result["client"]["log_events"] = dict(counter.counts)
    return result


def snapshot(me: psutil.Process, *, collect: bool, trim: bool = False) -> dict[str, Any]:
    if collect:
        gc.collect()
    row = {
        "rss_mib": round(me.memory_info().rss / 2**20, 2),
        "tasks": len(anyio.get_running_tasks()),
        "fds": me.num_fds(),
        "gc_objects": len(gc.get_objects()),
        **pymalloc(),
    }
    if trim and malloc_trim():  # what is left once glibc gives its free pages back
        row["rss_trimmed_mib"] = round(me.memory_info().rss / 2**20, 2)
    return row


def census() -> Counter[str]:
    """gc-tracked objects by type, to name what a growing count is made of."""
    gc.collect()
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())


def pymalloc() -> dict[str, int]:
    """Python's small-object allocator: arenas held, and KiB in live blocks (objects of
    up to 512 B, gc-tracked or not). Arenas growing while live blocks do not is
    fragmentation; both growing is small objects piling up."""
    if not hasattr(sys, "_debugmallocstats"):
        return {}
    with tempfile.TemporaryFile() as out:  # it prints to the C-level stderr
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    figures = {}
    for line in text.splitlines():
        name, _, value = line.partition("=")
        name = name.strip()
        if name == "# arenas allocated current":
            figures["pymalloc_arenas"] = int(value.replace(",", ""))
        elif name == "# bytes in allocated blocks":
            figures["pymalloc_live_kib"] = int(value.replace(",", "")) // 1024
    return figures


def malloc_trim() -> bool:
    """Return glibc's free heap pages to the system; False where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


async def measure(
    settings: Settings,
    tg: TaskGroup,
    load: MixedLoad,
    client: SoakClient,
    conn: Connection,
    monitor: Monitor,
    server: ServerProcess,
    server_ps: psutil.Process,
    broker: Any,
    names: dict[str, str],
    counter: EventCounter,
    n_faults: int,
    duration: float,
) -> dict[str, Any]:
    me = psutil.Process()
    if settings.tracemalloc:
        # What the run keeps, by traceback: from minute 1 (what a steady state holds,
        # requests in flight and caches, is in both snapshots by then) to the end.
        tracemalloc.start(settings.tracemalloc)
        traced0 = tracemalloc.take_snapshot()
    limit = max(settings.timeout, settings.slow_timeout) + settings.grace + 2

    async def idle_snapshot() -> dict[str, Any]:
        """Figures at an idle moment: no request in flight, none kept by the client."""
        began = time.monotonic()
        drained = await load.quiesce(limit)
        try:
            await anyio.sleep(0.1)
            row = snapshot(me, collect=True, trim=settings.malloc_trim)
        finally:
            load.resume()
        return row | {"idle_wait_s": round(time.monotonic() - began, 3), "drained": drained}

    census0 = census()
    start = await idle_snapshot() | {
        "server_rss_mib": round(server_ps.memory_info().rss / 2**20, 2)
    }
    t0 = time.monotonic()
    calls0, ok0, inits0, connects0 = load.calls, load.ok, client.inits, conn.connects
    metas0 = len(client.metas)
    errors0 = Counter(load.errors)
    outcomes0 = Counter(load.outcomes)
    samples: list[tuple[float, float]] = []  # (minute, RSS under load) every 5 s
    minutes: list[dict[str, Any]] = [{"minute": 0, **start, "calls": 0, "ok": 0}]
    print(
        f"measuring for {settings.minutes:g} min, {n_faults} faults; start: "
        f"rss {start['rss_mib']:.1f} MiB, {start['tasks']} tasks, {start['fds']} fds, "
        f"{start['gc_objects']:,} gc objects",
        flush=True,
    )
    faults: list[dict[str, Any]] = []
    faults_done = anyio.Event()
    disabled = set(FAULTS) - set(settings.faults)

    async def fault_loop() -> None:
        kinds = [k for k in FAULTS if k not in disabled]
        for n in range(n_faults):
            at = t0 + (n + 0.5) * settings.fault_every
            await anyio.sleep(max(0.0, at - time.monotonic()))
            kind = kinds[n % len(kinds)]
            try:
                row = await inject(
                    kind, n + 1, load=load, client=client, monitor=monitor, server=server,
                    broker=broker, names=names, settings=settings, t0=t0,
                )  # fmt: skip
            except Exception as exc:  # a fault that could not be injected is reported
                row = {"n": n + 1, "fault": kind, "error": repr(exc), "at_s": at - t0}
            faults.append(row)
            print(f"  fault {n + 1}/{n_faults}: {kind} at {row['at_s']:.1f} s", flush=True)
        faults_done.set()

    tg.start_soon(fault_loop)
    next_minute = 1
    last_calls, last_ok = calls0, ok0
    while True:
        elapsed = time.monotonic() - t0
        if elapsed >= duration:
            break
        await anyio.sleep(min(SAMPLE_EVERY - elapsed % SAMPLE_EVERY, duration - elapsed))
        elapsed = time.monotonic() - t0
        if elapsed >= next_minute * 60 - 0.5 or elapsed >= duration - 0.01:
            if elapsed >= duration - 0.01:
                break  # the end sample is taken below
            row = {
                "minute": next_minute,
                **await idle_snapshot(),
                "server_rss_mib": round(server_ps.memory_info().rss / 2**20, 2),
                "calls": load.calls - last_calls,
                "ok": load.ok - last_ok,
                "lag_max_ms": round(monitor.lag_max * 1000, 1),
            }
            monitor.lag_max = 0.0
            if settings.tracemalloc and next_minute == 1:
                traced0 = tracemalloc.take_snapshot()
            last_calls, last_ok = load.calls, load.ok
            minutes.append(row)
            print(
                f"minute {next_minute}: {row['calls']:,} calls ({row['ok']:,} ok echoes), "
                f"rss {row['rss_mib']:.1f} MiB (server {row['server_rss_mib']:.1f}), "
                f"{row['tasks']} tasks, {row['fds']} fds, {row['gc_objects']:,} objects, "
                f"lag max {row['lag_max_ms']} ms, errors so far {dict(load.errors - errors0)}",
                flush=True,
            )
            next_minute += 1
        else:
            samples.append((elapsed / 60, me.memory_info().rss / 2**20))
    # Faults that are still being injected (a stall waiting for heartbeats) finish first.
    await wait_until(faults_done.is_set, 4 * settings.heartbeat + 40)
    kept: list[str] = []
    if settings.tracemalloc:
        gc.collect()
        diff = tracemalloc.take_snapshot().compare_to(traced0, "traceback")
        tracemalloc.stop()
        for stat in diff[:15]:
            frames = " <- ".join(
                f"{Path(f.filename).name}:{f.lineno}" for f in reversed(stat.traceback)
            )
            kept.append(
                f"{stat.size_diff / 1024:+.1f} KiB in {stat.count_diff:+d} blocks: {frames}"
            )
        print("tracemalloc, growth from minute 1 to the end:", *kept, sep="\n  ", flush=True)
    grown = (census() - census0).most_common(12)
    end = await idle_snapshot() | {"server_rss_mib": round(server_ps.memory_info().rss / 2**20, 2)}
    elapsed = time.monotonic() - t0
    minutes.append(
        {
            "minute": round(elapsed / 60, 2),
            **end,
            "calls": load.calls - last_calls,
            "ok": load.ok - last_ok,
            "lag_max_ms": round(monitor.lag_max * 1000, 1),
            "end": True,
        }
    )
    # Recovery windows; errors attributed to a fault if they end within one.
    grace = max(settings.timeout, settings.slow_timeout) + settings.grace
    windows = []
    for row in faults:
        watch = row.pop("watch", None)
        effect = row.pop("effect", None)
        issued = row.pop("issued", None)
        row.pop("inits_before", None), row.pop("connects_before", None)
        if watch is None or effect is None:
            continue
        recovered = watch.first_ok
        row["recovery_s"] = round(recovered - effect, 3) if recovered is not None else None
        until = (recovered if recovered is not None else time.monotonic()) + grace
        windows.append((issued, until, row))
        row["errors"] = Counter()
    calm: Counter[str] = Counter()
    bad: Counter[str] = Counter()
    for end_t, kind, outcome in load.off:
        if outcome not in AT_FAULTS:  # a misdelivery, an answered slow call, Unroutable...
            bad[f"{kind}:{outcome}"] += 1
            continue
        # The latest fault whose window holds the end of the call.
        owner = next((row for lo, hi, row in reversed(windows) if lo <= end_t <= hi), None)
        if owner is None:
            calm[f"{kind}:{outcome}"] += 1
        else:
            owner["errors"][f"{kind}:{outcome}"] += 1
    for row in faults:
        if "errors" in row:
            row["errors"] = dict(sorted(row["errors"].items()))
    recoveries = [r["recovery_s"] for r in faults if r.get("recovery_s") is not None]
    by_kind: dict[str, Any] = {}
    for kind in FAULTS:
        values = [r["recovery_s"] for r in faults if r["fault"] == kind and r.get("recovery_s")]
        if values:
            by_kind[kind] = {
                "n": len(values),
                "median_s": round(statistics.median(values), 3),
                "max_s": max(values),
            }
    # The slopes: of the idle figures each minute (the 5-s samples under load, taken
    # just after a malloc_trim too, would saw-tooth); the samples give the range.
    loaded = [y for _, y in samples]
    xs, ys = [float(m["minute"]) for m in minutes], [m["rss_mib"] for m in minutes]
    half = [(x, y) for x, y in zip(xs, ys, strict=True) if x >= xs[-1] / 2]
    outcomes = {f"{k}:{o}": n for (k, o), n in sorted((load.outcomes - outcomes0).items())}
    stalls = [r["detected_s"] for r in faults if r.get("detected_s") is not None]
    result = {
        "calls": load.calls - calls0,
        "calls_total_with_warmup": load.calls,
        "ok_echoes": load.ok - ok0,
        "calls_per_s": round((load.calls - calls0) / elapsed, 1),
        "outcomes": outcomes,
        "errors": dict(sorted((load.errors - errors0).items())),
        "errors_during_warmup": dict(sorted(errors0.items())),
        "off_during_warmup": sum(1 for end_t, _, _ in load.off if end_t < t0),
        "off_at_faults": sum(sum(r.get("errors", {}).values()) for r in faults),
        "off_calm": dict(sorted(calm.items())),
        "bad": dict(sorted(bad.items())),
        "misdelivered": load.wrong,
        "misdelivered_examples": load.wrong_examples,
        "unexpected": load.unexpected_count,
        "unexpected_examples": load.unexpected,
        "overruns": load.overrun_count,
        "overrun_examples_s": load.overruns[:20],
        "longest_call_s": round(load.longest, 3),
        "latency_ok_ms": {
            "p50": round(load.latency.quantile(0.5) * 1000, 2),
            "p99": round(load.latency.quantile(0.99) * 1000, 2),
            "p999": round(load.latency.quantile(0.999) * 1000, 2),
            "max": round(load.latency.max * 1000, 2),
        },
        "faults": faults,
        "faults_failed": [r for r in faults if "error" in r or r.get("recovery_s") is None],
        "recovery_s": {
            "n": len(recoveries),
            "median": round(statistics.median(recoveries), 3) if recoveries else None,
            "max": max(recoveries) if recoveries else None,
            "by_fault": by_kind,
        },
        "stall_detected_s": {"max": max(stalls) if stalls else None, "all": stalls},
        "client": {
            "reconnects": conn.connects - connects0,
            "channel_opens": len(client.metas) - metas0,
            "restarts": client.inits - inits0,
            "loop_lag_max_ms": round(monitor.lag_max_all * 1000, 1),
        },
        "memory": {
            "samples_every_s": SAMPLE_EVERY,
            "rss_start_mib": start["rss_mib"],
            "rss_end_mib": end["rss_mib"],
            "rss_max_mib": round(max(loaded + ys), 2),
            "rss_min_mib": round(min(loaded + ys), 2),
            "slope_kib_per_min": round(slope(xs, ys) * 1024, 1),
            "slope_last_half_kib_per_min": round(
                slope([x for x, _ in half], [y for _, y in half]) * 1024, 1
            ),
            "residual_sd_kib": round(residual_sd(xs, ys) * 1024, 1),
            "gc_objects_start": start["gc_objects"],
            "gc_objects_end": end["gc_objects"],
            "pymalloc_arenas_start": start.get("pymalloc_arenas"),
            "pymalloc_arenas_end": end.get("pymalloc_arenas"),
            "pymalloc_live_kib_start": start.get("pymalloc_live_kib"),
            "pymalloc_live_kib_end": end.get("pymalloc_live_kib"),
            **trimmed(minutes),
            "server_rss_start_mib": start["server_rss_mib"],
            "server_rss_end_mib": end["server_rss_mib"],
        },
        "minutes": minutes,
        "tracemalloc_growth": kept,
        "gc_types_grown": dict(grown),
        "tasks_fds": {
            "tasks_start": start["tasks"],
            "tasks_end": end["tasks"],
            "fds_start": start["fds"],
            "fds_end": end["fds"],
        },
    }
    return result


def trimmed(minutes: list[dict[str, Any]]) -> dict[str, Any]:
    """The RSS left after malloc_trim at each minute (unless --no-malloc-trim), its slope."""
    rows = [m for m in minutes if "rss_trimmed_mib" in m]
    if len(rows) < 2:
        return {}
    xs, ys = [float(m["minute"]) for m in rows], [m["rss_trimmed_mib"] for m in rows]
    return {
        "rss_trimmed_start_mib": ys[0],
        "rss_trimmed_end_mib": ys[-1],
        "slope_trimmed_kib_per_min": round(slope(xs, ys) * 1024, 1),
        "residual_sd_trimmed_kib": round(residual_sd(xs, ys) * 1024, 1),
    }


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (nan with fewer than two points)."""
    if len(xs) < 2:
        return math.nan
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else math.nan


def residual_sd(xs: Sequence[float], ys: Sequence[float]) -> float:
    if len(xs) < 3:
        return math.nan
    b = slope(xs, ys)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return statistics.stdev([y - (my + b * (x - mx)) for x, y in zip(xs, ys, strict=True)])


# --- verdict, files --------------------------------------------------------------------------


def verdict(r: dict[str, Any], settings: Settings) -> dict[str, Any]:
    mem = r["memory"]

    def flat(slope_kib: float, scatter_kib: float) -> bool:
        # Flat within noise: the fitted growth over the run is within twice the
        # scatter of the samples around the fit, or under 1 MiB.
        return slope_kib * settings.minutes <= max(2 * scatter_kib, 1024)

    growth_kib = mem["slope_kib_per_min"] * settings.minutes
    live = {}
    if "slope_trimmed_kib_per_min" in mem:
        live["no growth of live memory (RSS after malloc_trim flat within noise)"] = flat(
            mem["slope_trimmed_kib_per_min"], mem["residual_sd_trimmed_kib"]
        )
    checks = {
        "no misdelivery": r["misdelivered"] == 0,
        "no unexpected (non-HareError) exception": r["unexpected"] == 0,
        "no wrong outcome (ok for slow/fail, RemoteError for echo, other errors)": not r["bad"],
        "no error away from a fault": not r["off_calm"],
        "no call outlived its deadline + grace": r["overruns"] == 0,
        "callers stopped (no hang)": not r["hung_callers"],
        "every idle moment reached (no request outlived its deadline)": all(
            m.get("drained", True) for m in r["minutes"]
        ),
        "no request left pending": r["pending_after_load"] == 0,
        "every fault injected and recovered from": not r["faults_failed"],
        "no leftover tasks after close": r["after_close"]["tasks"]
        <= r["after_close"]["tasks_before_client"],
        "no memory growth (RSS flat within noise)": flat(
            mem["slope_kib_per_min"], mem["residual_sd_kib"]
        ),
        **live,
    }
    return {
        "checks": checks,
        "passed": all(checks.values()),
        "fitted_growth_kib": round(growth_kib),
    }


def git_describe() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout.strip()

    where = Path(hare_py.__file__).resolve().parent
    info: dict[str, Any] = {"commit": git("rev-parse", "--short", "HEAD"), "hare_py": str(where)}
    if where == ROOT / "hare_py":
        info["hare_py_dirty"] = bool(git("status", "--porcelain", "--", "hare_py"))
    return info


def write(label: str, run: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "soak.json"
    runs: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        runs = json.loads(path.read_text()).get("runs", {})
    runs[label] = run
    path.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    (out / "soak.md").write_text(markdown(runs))


def markdown(runs: dict[str, Any]) -> str:
    lines = [
        "# hare_py soak results",
        "",
        "`make soak` (`python -m bench.soak`): one client process under mixed load "
        "(100 B to 64 KiB, a share of idempotent requests, requests answered after "
        "their deadline, handlers that raise), a fault every few seconds in turn: "
        "the broker closes the client's connection, then the server's; the proxy "
        "resets the client's TCP connection; the proxy stalls it until heartbeats "
        "notice; a client callback crashes. Every reply is checked against its "
        "request. Figures as measured on a shared 2-core machine: noisy.",
        "",
        "Recovery: from the fault's effect (the connection seen down, the stall or "
        "reset made, the crash sent) to the end of the first successful call started "
        'after it. Errors are "at a fault" when they end between the fault and its '
        'recovery plus the longest deadline and grace; "calm" otherwise.',
        "",
        "Memory is the client process's, each minute at an idle moment (callers held "
        "until no request is in flight), after a gc.collect(), then again after "
        'malloc_trim(0) ("trimmed": live memory, without the free pages glibc keeps); '
        "the slopes are fitted to those. The range (max) includes samples every 5 s "
        'under load. "Flat within noise": the fitted growth over the run is under '
        "twice the scatter of the points around the fit, or under 1 MiB.",
    ]
    for label, run in runs.items():
        r, s, v = run["result"], run["settings"], run["verdict"]
        mem, tf, rec = r["memory"], r["tasks_fds"], r["recovery_s"]
        code = run["code"]["commit"] or f"from {run['code']['hare_py']}"
        lines += [
            "",
            f"## {label}: {'PASSED' if v['passed'] else 'FAILED'}",
            "",
            f"`{run['command']}`; {s['minutes']} min after {s['warmup']} s of warm-up, "
            f"{s['callers']} callers, a fault every {s['fault_every']} s, heartbeat "
            f"{s['heartbeat']} s, deadlines {s['timeout']} s ({s['slow_timeout']} s for the "
            f"slow requests); hare_py {code}, {run['when']}, "
            f"Python {run['python']}.",
            "",
            "| figure | value |",
            "|---|---|",
            f"| calls | {r['calls']:,} ({r['calls_per_s']:,} /s), {r['ok_echoes']:,} echoes ok |",
            f"| outcomes (kind:outcome) | {_kv(r['outcomes'])} |",
            f"| errors by kind | {_kv(r['errors'])} |",
            f"| off-expectation at faults | {r['off_at_faults']:,} |",
            f"| off-expectation away from faults | {_kv(r['off_calm']) or 'none'} |",
            f"| wrong outcomes | {_kv(r['bad']) or 'none'} |",
            f"| misdelivered replies | {r['misdelivered']} |",
            f"| unexpected (non-HareError) | {r['unexpected']} |",
            f"| calls past deadline + {s['grace']} s | {r['overruns']} "
            f"(longest call {r['longest_call_s']} s) |",
            f"| ok latency p50 / p99 / p99.9 / max | {r['latency_ok_ms']['p50']} / "
            f"{r['latency_ok_ms']['p99']} / {r['latency_ok_ms']['p999']} / "
            f"{r['latency_ok_ms']['max']} ms |",
            f"| faults injected | {len(r['faults'])}, failed: {len(r['faults_failed'])} |",
            f"| recovery median / max | {rec['median']} / {rec['max']} s |",
            f"| stall detected after | max {r['stall_detected_s']['max']} s |",
            f"| client reconnects / channel opens / restarts | {r['client']['reconnects']} / "
            f"{r['client']['channel_opens']} / {r['client']['restarts']} |",
            f"| server reconnects | {r['server']['reconnects']} |",
            f"| client RSS start / end / max | {mem['rss_start_mib']} / {mem['rss_end_mib']} / "
            f"{mem['rss_max_mib']} MiB |",
            f"| RSS slope (all / last half) | {mem['slope_kib_per_min']} / "
            f"{mem['slope_last_half_kib_per_min']} KiB/min "
            f"(scatter {mem['residual_sd_kib']} KiB) |",
            *(
                [
                    f"| RSS after malloc_trim start / end, slope | "
                    f"{mem['rss_trimmed_start_mib']} / {mem['rss_trimmed_end_mib']} MiB, "
                    f"{mem['slope_trimmed_kib_per_min']} KiB/min "
                    f"(scatter {mem.get('residual_sd_trimmed_kib')} KiB) |"
                ]
                if "slope_trimmed_kib_per_min" in mem
                else []
            ),
            f"| gc objects start / end | {mem['gc_objects_start']:,} / {mem['gc_objects_end']:,} |",
            *(
                [
                    f"| pymalloc arenas / KiB in live blocks, start / end | "
                    f"{mem['pymalloc_arenas_start']} / {mem['pymalloc_live_kib_start']:,} KiB, "
                    f"{mem['pymalloc_arenas_end']} / {mem['pymalloc_live_kib_end']:,} KiB |"
                ]
                if mem.get("pymalloc_arenas_start") is not None
                else []
            ),
            f"| server RSS start / end | {mem['server_rss_start_mib']} / "
            f"{mem['server_rss_end_mib']} MiB |",
            f"| gc object types grown (start to end) | {_kv(r.get('gc_types_grown', {}))} |",
            f"| tasks start / end (under load) | {tf['tasks_start']} / {tf['tasks_end']} |",
            f"| fds start / end (under load) | {tf['fds_start']} / {tf['fds_end']} |",
            f"| tasks / fds after close (before client) | {r['after_close']['tasks']} "
            f"({r['after_close']['tasks_before_client']}) / {r['after_close']['fds']} "
            f"({r['after_close']['fds_before_client']}) |",
            f"| callers stopped in | {r['callers_stopped_s']} s, hung: {r['hung_callers']} |",
            f"| event loop lag max | {r['client']['loop_lag_max_ms']} ms |",
            "",
            "Recovery by fault:",
            "",
            "| fault | n | median s | max s |",
            "|---|---|---|---|",
            *[
                f"| {k} | {x['n']} | {x['median_s']} | {x['max_s']} |"
                for k, x in rec["by_fault"].items()
            ],
            "",
            "Each fault (at: seconds into the measured run):",
            "",
            "| # | fault | at s | recovery s | errors it caused |",
            "|---|---|---|---|---|",
            *[
                f"| {f['n']} | {f['fault']}{' (' + f['error'] + ')' if 'error' in f else ''} | "
                f"{f['at_s']:.1f} | {f.get('recovery_s')}"
                f"{' (detected ' + str(f['detected_s']) + ' s)' if 'detected_s' in f else ''} | "
                f"{_kv(f.get('errors', {}))} |"
                for f in r["faults"]
            ],
            "",
            "Per minute, at an idle moment (RSS after a gc.collect(); trimmed: after "
            "malloc_trim(0) too):",
            "",
            "| minute | calls | ok echoes | RSS MiB | trimmed MiB | server RSS MiB | tasks | fds "
            "| gc objects | pymalloc arenas / live KiB | loop lag max ms | idle after s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *[
                f"| {m['minute']}{' (end)' if m.get('end') else ''} | {m['calls']:,} | "
                f"{m['ok']:,} | {m['rss_mib']} | {m.get('rss_trimmed_mib', '')} | "
                f"{m['server_rss_mib']} | {m['tasks']} | "
                f"{m['fds']} | {m['gc_objects']:,} | "
                f"{m.get('pymalloc_arenas', '')} / {m.get('pymalloc_live_kib', '')} | "
                f"{m.get('lag_max_ms', '')} | "
                f"{m.get('idle_wait_s', '')}{'' if m.get('drained', True) else ' (not idle)'} |"
                for m in r["minutes"]
            ],
            "",
            "Checks:",
            "",
            *[f"- [{'x' if ok else ' '}] {name}" for name, ok in v["checks"].items()],
        ]
        if run.get("notes"):
            lines += ["", *run["notes"]]
    return "\n".join(lines) + "\n"


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in d.items())


# --- main --------------------------------------------------------------------------------------


@contextlib.contextmanager
def broker() -> Iterator[tuple[Any, str]]:
    """``HARE_BENCH_AMQP_URL`` (rabbitmqctl from ``HARE_BENCH_RABBITMQCTL``), or a private
    RabbitMQ node for the run, as bench/run.py's broker() starts one."""
    external = os.environ.get("HARE_BENCH_AMQP_URL")
    if external:
        yield ExternalRabbitMQ(external, os.environ.get("HARE_BENCH_RABBITMQCTL")), external
        return
    node = RabbitMQNode()
    node.start()
    try:
        yield node, node.url
    finally:
        node.stop()


def parse(argv: Sequence[str] | None = None) -> tuple[Settings, str | None]:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="measured minutes (10)")
    p.add_argument("--fault-every", type=float, default=30.0, help="seconds between faults (30)")
    p.add_argument("--backend", choices=("anyio", "aiormq"), default="anyio")
    p.add_argument("--loop", choices=("asyncio", "trio"), default="asyncio")
    p.add_argument("--callers", type=int, default=32)
    p.add_argument("--warmup", type=float, default=30.0, help="seconds of load before (30)")
    p.add_argument("--heartbeat", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=2.0, help="deadline of a call (2 s)")
    p.add_argument("--slow-timeout", type=float, default=0.5, help="deadline of a slow call")
    p.add_argument("--servers", type=int, default=2, help="RPCServer actors on the queue")
    p.add_argument("--faults", default=",".join(FAULTS), help="comma-separated subset")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--no-malloc-trim",
        dest="malloc_trim",
        action="store_false",
        help="no malloc_trim(0) after each minute's RSS (no live-memory figure)",
    )
    p.add_argument(
        "--tracemalloc", type=int, default=0, metavar="FRAMES", help="trace allocations (slow)"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--note", action="append", default=[], help="a line for soak.md")
    p.add_argument("--serve", help=argparse.SUPPRESS)  # the server process's job
    a = p.parse_args(argv)
    if a.serve:
        return Settings(
            0, 0, "", json.loads(a.serve)["loop"], 0, 0, 0, 0, 0, 0, (), 0, a.out
        ), a.serve
    faults = tuple(f for f in a.faults.split(",") if f)
    if unknown := set(faults) - set(FAULTS):
        p.error(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
    if a.loop == "trio" and a.backend == "aiormq":
        p.error("the aiormq backend runs on asyncio only")
    return (
        Settings(
            minutes=a.minutes,
            fault_every=a.fault_every,
            backend=a.backend,
            loop=a.loop,
            callers=a.callers,
            warmup=a.warmup,
            heartbeat=a.heartbeat,
            timeout=a.timeout,
            slow_timeout=a.slow_timeout,
            servers=a.servers,
            faults=faults,
            seed=a.seed,
            out=a.out,
            notes=tuple(a.note),
            tracemalloc=a.tracemalloc,
            malloc_trim=a.malloc_trim,
        ),
        None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings, serve_job = parse(argv)
    if serve_job is not None:
        anyio.run(serve, json.loads(serve_job), backend=settings.loop)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="hare-soak-"))
    label = f"{settings.backend} backend on {settings.loop}"
    print(f"soak: {label}; logs in {workdir}", flush=True)
    with broker() as (node, url):
        if isinstance(node, ExternalRabbitMQ) and node.ctl_command is None:
            print("no rabbitmqctl for the external broker: no connection-close faults")
            settings.faults = tuple(
                f for f in settings.faults if f not in ("client_close", "server_close")
            )
        with open(workdir / "server.stderr", "wb") as server_err:
            result = anyio.run(
                drive, settings, node, url, workdir, server_err, backend=settings.loop
            )
    v = verdict(result, settings)
    run = {
        "command": " ".join(["python -m bench.soak", *(argv or sys.argv[1:])]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "code": git_describe(),
        "logs": str(workdir),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()},
        "result": result,
        "verdict": v,
        "notes": list(settings.notes),
    }
    write(label, run, settings.out)
    print(markdown({label: run}), flush=True)
    print(f"written: {settings.out / 'soak.json'}, {settings.out / 'soak.md'}", flush=True)
    return 0 if v["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
