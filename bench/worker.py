"""One benchmark process: ``python -m bench.worker '<json job>'``.

A fresh process per measurement, so that its peak RSS and CPU time belong to
that measurement alone. Jobs:

- ``serve``: run a contender's echo server on a queue; prints ``READY``, then
  serves until stdin closes (the orchestrator ends it so).
- ``load``: ``concurrency`` tasks each calling in a loop; after ``warmup``
  seconds, measure for ``duration`` seconds; prints ``RESULT {json}``.
- ``hold``: ``n`` requests at once to a queue nobody consumes (the broker holds
  them); RSS before and once all are queued, then a consumer answers them all
  and every reply is checked; prints ``RESULT {json}``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import resource
import sys
import threading
import time
import tracemalloc
from array import array
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
import psutil

from .contenders import CONTENDERS, NATS_CONTENDERS, quiet_logs, raw_echo

# Quantiles sent back for the latency plots: dense in the body, then the tail
# up to p99.99 (a "nines" axis).
QUANTILES = sorted(
    {i / 100 for i in range(1, 100)}
    | {1 - 10 ** (-k / 8) for k in range(16, 33)}
    | {0.5, 0.99, 0.999}
)


def quantile(sorted_values: array[float] | list[float], q: float) -> float:
    """Nearest-rank quantile of already sorted values."""
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def peak_rss() -> int:
    """This process's peak resident set size in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Callers:
    """The closed-loop callers of one load job and what they measured.

    Each caller calls again as soon as its reply is in; only the calls that
    end inside the measured window count (``measure``), but ``served`` counts
    every answered call, warm-up and drain too: what the server did.
    """

    def __init__(
        self,
        client: Any,
        queue: str,
        payload: Any,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._client, self._queue, self._payload, self._sleep = client, queue, payload, sleep
        self.latencies: array[float] = array("d")
        self.measuring = False
        self.stop = False
        self.errors: list[str] = []
        self.served = 0
        self._elapsed = self._cpu = self._started = self._cpu0 = 0.0

    async def caller(self) -> None:
        clock = time.perf_counter
        while not self.stop:
            began = clock()
            try:
                result = await self._client.call(self._queue, self._payload)
            except Exception as exc:
                self.errors.append(repr(exc))
                await self._sleep(0.01)  # a broken client must not spin
                continue
            self.served += 1
            if self.measuring:
                self.latencies.append(clock() - began)
                if result != self._payload:
                    self.errors.append(f"wrong reply: {result!r:.60}")

    async def measure(self, warmup: float, duration: float) -> None:
        """Warm up, then measure for ``duration`` seconds; the callers stop after it."""
        await self._sleep(warmup)
        self.open_window()
        await self._sleep(duration)
        self.close_window()

    def open_window(self) -> None:
        """Start counting: calls that end from now on are measured."""
        self.errors.clear()
        self.measuring = True
        self._started, self._cpu0 = time.perf_counter(), time.process_time()

    def close_window(self) -> None:
        """Stop counting; the callers stop."""
        self.measuring = False
        self._elapsed = time.perf_counter() - self._started
        self._cpu = time.process_time() - self._cpu0
        self.stop = True

    def figures(self) -> dict[str, Any]:
        calls, elapsed, cpu, errors = len(self.latencies), self._elapsed, self._cpu, self.errors
        ordered = array("d", sorted(self.latencies))
        return {
            "calls": calls,
            "served": self.served,
            "seconds": elapsed,
            "calls_per_s": calls / elapsed,
            "p50_ms": quantile(ordered, 0.5) * 1e3,
            "p99_ms": quantile(ordered, 0.99) * 1e3,
            "p999_ms": quantile(ordered, 0.999) * 1e3,
            "cpu_s_per_10k": cpu / calls * 10_000 if calls else math.nan,
            "peak_rss_mib": peak_rss() / 2**20,
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "quantiles": [[q, quantile(ordered, q) * 1e3] for q in QUANTILES],
        }


async def load(job: dict[str, Any]) -> dict[str, Any]:
    contender = CONTENDERS[job["contender"]]
    payload = contender.payload(int(job["size"]))
    if hasattr(contender, "run_load"):  # a client with its own event loop (proton's reactor)
        callers = _Callers(None, job["queue"], payload, asyncio.sleep)
        contender.run_load(job, callers, payload)
        return callers.figures()
    async with contender.client(job["url"]) as client:
        callers = _Callers(client, job["queue"], payload, asyncio.sleep)
        tasks = [asyncio.create_task(callers.caller()) for _ in range(int(job["concurrency"]))]
        await callers.measure(float(job["warmup"]), float(job["duration"]))
        # Calls still in flight finish uncounted; FastStream's are queued on its lock.
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
    return callers.figures()


async def _held(
    client: Any, channel: Any, hold_queue: str, payload: Any, n: int
) -> tuple[list[asyncio.Task[Any]], int]:
    """Start ``n`` calls to ``hold_queue``; return once the broker holds them all."""
    tasks = [asyncio.create_task(client.call(hold_queue, payload)) for _ in range(n)]
    began, held = time.perf_counter(), 0
    while held < n and time.perf_counter() - began < 120:
        await asyncio.sleep(0.05)
        held = (await channel.queue_declare(hold_queue, passive=True)).message_count or 0
        if any(t.done() for t in tasks):
            break  # one failed or was answered: no point waiting for the rest
    return tasks, held


async def _bare_task_bytes(n: int) -> float:
    """Python heap per task that just awaits a future: the caller's own share."""
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(n)]

    async def wait(f: asyncio.Future[None]) -> None:
        await f

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tasks = [asyncio.create_task(wait(f)) for f in futures]
    await asyncio.sleep(0.05)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    for f in futures:
        f.set_result(None)
    await asyncio.gather(*tasks)
    return (after - before) / n


async def hold(job: dict[str, Any]) -> dict[str, Any]:
    """RSS per held request (``n`` of them), then the Python heap per request
    (tracemalloc, n/10 of them, exact but slow to trace) and the part of it that
    is the calling task itself."""
    contender = CONTENDERS[job["contender"]]
    n, url, hold_queue = int(job["n"]), job["url"], job["hold_queue"]
    payload = contender.payload(int(job["size"]))
    expected = contender.echoed(payload)
    admin = await aiormq.connect(url)
    try:
        channel = await admin.channel(publisher_confirms=False)
        await channel.queue_declare(hold_queue, auto_delete=False)
        await channel.queue_purge(hold_queue)
        async with contender.client(url) as client:
            # Warm the client's code paths (and allocator) on the echo server first.
            for _ in range(200):
                await client.call(contender.queue, payload)
            gc.collect()
            process = psutil.Process()
            before = process.memory_info().rss
            began = time.perf_counter()
            tasks, held = await _held(client, channel, hold_queue, payload, n)
            gc.collect()
            during = process.memory_info().rss
            # Now answer them all, and check every reply.
            tag = (await raw_echo(channel, hold_queue, ack=False)).consumer_tag or ""
            results = await asyncio.wait_for(
                asyncio.gather(*tasks, return_exceptions=True), timeout=120
            )
            seconds = time.perf_counter() - began
            await channel.basic_cancel(tag)
            bad = [r for r in results if r != expected]

            small = max(1, n // 10)
            gc.collect()
            tracemalloc.start()
            traced0 = tracemalloc.get_traced_memory()[0]
            tasks, traced_held = await _held(client, channel, hold_queue, payload, small)
            traced = (tracemalloc.get_traced_memory()[0] - traced0) / small
            tracemalloc.stop()
            await raw_echo(channel, hold_queue, ack=False)
            results = await asyncio.wait_for(
                asyncio.gather(*tasks, return_exceptions=True), timeout=120
            )
            bad += [r for r in results if r != expected]
            bare = await _bare_task_bytes(small)
        await channel.queue_delete(hold_queue)
    finally:
        await admin.close()
    return {
        "n": n,
        "held": min(held, traced_held * n // small),
        "errors": len(bad),
        "first_error": repr(bad[0])[:120] if bad else None,
        "bytes_per_request": (during - before) / n,
        "heap_bytes_per_request": traced,
        "task_bytes": bare,
        "seconds": seconds,
    }


async def serve(job: dict[str, Any]) -> None:
    contender = CONTENDERS[job["contender"]]
    loop = asyncio.get_running_loop()
    stdin_closed = loop.create_future()

    def ready() -> None:
        print("READY", flush=True)

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the orchestrator is done with us
        loop.call_soon_threadsafe(stdin_closed.set_result, None)

    server = asyncio.create_task(contender.serve(job["url"], job["queue"], ready))
    threading.Thread(target=watch_stdin, daemon=True).start()
    await asyncio.wait([server, stdin_closed], return_when=asyncio.FIRST_COMPLETED)
    if server.done():
        server.result()  # raise why the server ended
    server.cancel()
    await asyncio.gather(server, return_exceptions=True)


# --- NATS: the same jobs on anyio, on the contender's own event loop -------------------


async def load_nats(job: dict[str, Any]) -> dict[str, Any]:
    """``load`` for a NATS contender: the same callers and figures, on anyio tasks."""
    import anyio

    contender = NATS_CONTENDERS[job["contender"]]
    payload = contender.payload(int(job["size"]))
    warmup, duration = float(job["warmup"]), float(job["duration"])
    async with contender.client(job["url"]) as client:
        callers = _Callers(client, job["queue"], payload, anyio.sleep)
        with anyio.fail_after(warmup + duration + 300):
            async with anyio.create_task_group() as tg:
                for _ in range(int(job["concurrency"])):
                    tg.start_soon(callers.caller)
                await callers.measure(warmup, duration)  # calls in flight finish uncounted
    return callers.figures()


class NatsAdmin:
    """A bare NATS requester on an anyio socket, for talking to the holder from any loop
    without a NATS library (the client under test is the only one in the process)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buf = b""
        self.seq = 0

    @classmethod
    async def connect(cls, url: str) -> NatsAdmin:
        import anyio

        host, _, port = url.removeprefix("nats://").rstrip("/").rpartition(":")
        admin = cls(await anyio.connect_tcp(host, int(port)))
        await admin._line()  # INFO
        await admin.stream.send(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _ADMIN.* 1\r\n')
        return admin

    async def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self.buf += await self.stream.receive()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    async def request(self, subject: str, body: bytes) -> bytes:
        self.seq += 1
        inbox = f"_ADMIN.{self.seq}"
        await self.stream.send(
            b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), inbox.encode(), len(body), body)
        )
        while True:
            line = await self._line()
            if line == b"PING":
                await self.stream.send(b"PONG\r\n")
            elif line.startswith(b"MSG "):
                parts = line.split()
                size = int(parts[-1])
                while len(self.buf) < size + 2:
                    self.buf += await self.stream.receive()
                data, self.buf = self.buf[:size], self.buf[size + 2 :]
                if parts[1] == inbox.encode():
                    return data

    async def aclose(self) -> None:
        await self.stream.aclose()


class Spawner:
    """Starts the held calls as the loop's own tasks (``asyncio.create_task`` on asyncio,
    as the AMQP in-flight test does, a nursery's on trio), so that the figures hold the
    calling task's own cost as the loop has it, and waits for them all on exit."""

    def __init__(self, loop: str) -> None:
        self.loop = loop
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Spawner:
        if self.loop != "asyncio":
            import trio

            # trio's own nursery: anyio's task group adds a task handle per task.
            self.nursery_cm = trio.open_nursery()
            self.nursery = await self.nursery_cm.__aenter__()
        return self

    def spawn(self, func: Any) -> None:
        if self.loop == "asyncio":
            self.tasks.append(asyncio.create_task(func()))
        else:
            self.nursery.start_soon(func)

    async def __aexit__(self, *exc: Any) -> Any:
        if self.loop == "asyncio":
            await asyncio.wait_for(asyncio.gather(*self.tasks), timeout=120)
            return None
        return await self.nursery_cm.__aexit__(*exc)


async def _held_nats(
    client: Any, admin: NatsAdmin, contender: Any, tg: Spawner, payload: Any, n: int
) -> tuple[list[Any], int]:
    """Start ``n`` calls to the holder; return once it holds them all."""
    import anyio

    results: list[Any] = []
    control = f"{contender.hold_subject}.control"

    async def one() -> None:
        try:
            results.append(await client.call(contender.hold_target, payload))
        except Exception as exc:
            results.append(exc)

    for _ in range(n):
        tg.spawn(one)
    began, held = time.perf_counter(), 0
    while held < n and time.perf_counter() - began < 120:
        await anyio.sleep(0.05)
        held = int(await admin.request(control, b"count"))
        if results:
            break  # one failed or was answered: no point waiting for the rest
    return results, held


async def hold_nats(job: dict[str, Any]) -> dict[str, Any]:
    """``hold`` for a NATS contender: ``n`` requests held by the holder (a nats-py
    responder in its own process that answers nothing until told to), RSS per request
    before it answers; then the Python heap per request (tracemalloc, n/10)."""

    contender = NATS_CONTENDERS[job["contender"]]
    n, url = int(job["n"]), job["url"]
    control = f"{contender.hold_subject}.control"
    payload = contender.payload(int(job["size"]))
    expected = contender.echoed(payload)
    admin = await NatsAdmin.connect(url)
    bad: list[Any] = []
    try:
        async with contender.client(url) as client:
            for _ in range(200):
                await client.call(contender.queue, payload)
            gc.collect()
            process = psutil.Process()
            before = process.memory_info().rss
            began = time.perf_counter()
            async with Spawner(contender.loop) as tg:
                results, held = await _held_nats(client, admin, contender, tg, payload, n)
                gc.collect()
                during = process.memory_info().rss
                await admin.request(control, b"release")
            seconds = time.perf_counter() - began
            bad += [r for r in results if r != expected]

            small = max(1, n // 10)
            gc.collect()
            tracemalloc.start()
            traced0 = tracemalloc.get_traced_memory()[0]
            async with Spawner(contender.loop) as tg:
                results, traced_held = await _held_nats(
                    client, admin, contender, tg, payload, small
                )
                traced = (tracemalloc.get_traced_memory()[0] - traced0) / small
                tracemalloc.stop()
                await admin.request(control, b"release")
            bad += [r for r in results if r != expected]
            bare = await (
                _bare_task_bytes(small)
                if contender.loop == "asyncio"
                else _bare_trio_task_bytes(small)
            )
    finally:
        await admin.aclose()
    return {
        "n": n,
        "held": min(held, traced_held * n // small),
        "errors": len(bad),
        "first_error": repr(bad[0])[:120] if bad else None,
        "bytes_per_request": (during - before) / n,
        "heap_bytes_per_request": traced,
        "task_bytes": bare,
        "seconds": seconds,
    }


async def _bare_trio_task_bytes(n: int) -> float:
    """Python heap per trio task that just waits for an event: the caller's own share."""
    import trio

    event = trio.Event()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(event.wait)
        await trio.sleep(0.05)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        event.set()
    return (after - before) / n


async def serve_nats(job: dict[str, Any]) -> None:
    """``serve`` on anyio: the contender's server until stdin closes."""
    import anyio

    contender = NATS_CONTENDERS[job["contender"]]

    def ready() -> None:
        print("READY", flush=True)

    async with anyio.create_task_group() as tg:

        async def server() -> None:
            await contender.serve(job["url"], job["queue"], ready)
            tg.cancel_scope.cancel()

        tg.start_soon(server)
        await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        tg.cancel_scope.cancel()


async def nats_holder(job: dict[str, Any]) -> None:
    """The in-flight test's holder (nats-py, asyncio): collects the requests to every
    NATS contender's hold subject; on ``<subject>.control`` it answers ``count`` with
    how many it holds, and ``release`` by answering them all, in the contender's
    envelope, then itself."""
    import nats

    nc = await nats.connect(job["url"], max_reconnect_attempts=0)
    held: dict[str, list[Any]] = {}
    try:
        for contender in NATS_CONTENDERS.values():
            subject = contender.hold_subject
            held[subject] = []

            async def collect(msg: Any, subject: str = subject) -> None:
                held[subject].append(msg)

            async def control(msg: Any, subject: str = subject, contender: Any = contender) -> None:
                if msg.data == b"count":
                    await msg.respond(str(len(held[subject])).encode())
                    return
                waiting, held[subject] = held[subject], []
                for request in waiting:
                    await request.respond(contender.hold_reply(request.data))
                await msg.respond(b"released")

            await nc.subscribe(subject, cb=collect)
            await nc.subscribe(f"{subject}.control", cb=control)
        await nc.flush()
        print("READY", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
    finally:
        await nc.close()


def main() -> None:
    quiet_logs()
    job = json.loads(sys.argv[1])
    kind = job["job"]
    if kind == "nats_holder":
        asyncio.run(nats_holder(job))
        return
    if job["contender"] in NATS_CONTENDERS:
        import anyio

        loop = NATS_CONTENDERS[job["contender"]].loop
        if kind == "serve":
            anyio.run(serve_nats, job, backend=loop)
            return
        result = anyio.run(load_nats if kind == "load" else hold_nats, job, backend=loop)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if kind == "serve":
        asyncio.run(serve(job))
        return
    result = asyncio.run(load(job) if kind == "load" else hold(job))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
