"""A long-running daemon: a supervised server and client, stopped in order on SIGTERM/SIGINT.

    python examples/daemon.py                       # on the in-memory broker
    HARE_URL=amqp://guest:guest@localhost/ python examples/daemon.py

A ``hare_py.Supervisor`` runs two children, each an ``RPCServer``/``RPCClient``
under its own ``start()`` runner: the server first, then the client
(``rest_for_one``: if the server's runner gives up, the client restarts too).
A few workers make requests through the client all the time.

On SIGTERM or SIGINT the daemon shuts down in order, losing no reply:

1. the workers stop *starting* requests and finish the ones in flight;
2. ``server.call("drain")`` goes through the server's mailbox behind every
   request it has received, so when it returns each one is answered and acked;
3. leaving the supervisor stops the children in reverse order: the client,
   then the server, each running its ``terminate`` callback.

A second signal during the shutdown is ignored; the shutdown itself is
bounded (``SHUTDOWN_GRACE``), so a stuck broker cannot keep the daemon alive.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from typing import Any

import anyio
from anyio.abc import TaskStatus

from hare_py import (
    Caller,
    ChildSpec,
    Connection,
    HareError,
    Reply,
    Request,
    RPCClient,
    RPCServer,
    Supervisor,
)
from hare_py.demo import configure_logging
from hare_py.testing import SandboxBroker

QUEUE = "daemon.work"
SHUTDOWN_GRACE = 10.0  # seconds the orderly part of the shutdown may take


class Worker(RPCServer[int]):
    """Does a little work per request; reports how many it answered."""

    terminated: list[str]  # the daemon's record of terminate calls

    async def init(self, arg: Any) -> int:
        return 0

    async def handle_request(self, request: Request, caller: Caller, served: int) -> Any:
        await anyio.sleep(0.01)  # the work
        return Reply(b"done: " + request.payload, served + 1)

    async def handle_call(self, message: Any, caller: Caller, served: int) -> Any:
        return Reply(served, served)  # "drain": everything received before it is answered

    async def terminate(self, reason: Any, served: int) -> None:
        self.terminated.append(f"server: {reason} after {served} replies")
        print(f"daemon: server terminated ({reason}), {served} replies sent", flush=True)


class Client(RPCClient[None]):
    """The default client; its ``terminate`` reports the shutdown."""

    terminated: list[str]  # the daemon's record of terminate calls

    async def terminate(self, reason: Any, state: None) -> None:
        self.terminated.append(f"client: {reason} with {self.pending} pending")
        print(f"daemon: client terminated ({reason}), {self.pending} requests pending", flush=True)


class Daemon:
    """The daemon's parts; ``run()`` serves until ``shutdown()``."""

    def __init__(self, url: str, *, workers: int = 4) -> None:
        self.url = url
        self.workers = workers
        self.counts: Counter[str] = Counter()
        self.terminated: list[str] = []
        self.server: Worker | None = None
        self.client: Client | None = None
        self._stopping = anyio.Event()

    def shutdown(self) -> None:
        """Begin the orderly shutdown (what SIGTERM and SIGINT do)."""
        self._stopping.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``shutdown()``; then stop in order (see the module docstring)."""
        async with Connection(self.url, name="hare-daemon") as conn:
            # --8<-- [start:tree]
            supervisor = Supervisor(
                [
                    ChildSpec("server", lambda *, task_status: self._serve(conn, task_status)),
                    ChildSpec("client", lambda *, task_status: self._client(conn, task_status)),
                ],
                strategy="rest_for_one",
                name="daemon",
            )
            # --8<-- [end:tree]
            # --8<-- [start:shutdown]
            async with supervisor:
                async with anyio.create_task_group() as workers:
                    for n in range(self.workers):
                        workers.start_soon(self._work, n)
                    task_status.started()
                # Every request a worker made has its answer; make sure the
                # server has acked them all before it is stopped.
                with anyio.move_on_after(SHUTDOWN_GRACE):
                    if self.server is not None:
                        served = await self.server.call("drain")
                        print(f"daemon: drained, {served} replies sent", flush=True)
            # --8<-- [end:shutdown]
            print(f"daemon: stopped, {dict(self.counts)}", flush=True)

    async def _serve(self, conn: Connection, task_status: TaskStatus[None]) -> None:
        async with Worker.start(conn, queue=QUEUE) as server:
            self.server, server.terminated = server, self.terminated
            with anyio.fail_after(SHUTDOWN_GRACE):  # give up (and be restarted) if no broker
                while not server.connected:
                    await anyio.sleep(0.01)
            task_status.started()
            await anyio.sleep_forever()

    async def _client(self, conn: Connection, task_status: TaskStatus[None]) -> None:
        async with Client.start(conn, timeout=5.0) as client:
            self.client, client.terminated = client, self.terminated
            task_status.started()
            await anyio.sleep_forever()

    async def _work(self, n: int) -> None:
        """One worker: a request at a time, until the shutdown begins."""
        i = 0
        while not self._stopping.is_set():
            client = self.client  # a new object if the supervisor restarted the child
            assert client is not None
            try:
                await client.request(f"job {n}.{i}".encode(), QUEUE)
            except HareError as exc:
                self.counts[type(exc).__name__] += 1
                await anyio.sleep(0.1)
            else:
                self.counts["ok"] += 1
            i += 1
        self.counts["workers_stopped"] += 1


async def main(url: str | None = None) -> Daemon:
    """Run the daemon until SIGTERM or SIGINT; returns it, for its counts."""
    sandbox = None
    url = url or os.environ.get("HARE_URL")
    if not url:
        sandbox = SandboxBroker("daemon")
        url = sandbox.url
    daemon = Daemon(url)
    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as tg:
                await tg.start(daemon.run)
                print(f"daemon: ready, serving {QUEUE!r}; SIGTERM or Ctrl-C stops", flush=True)
                async for signum in signals:
                    print(f"daemon: {signal.Signals(signum).name}, shutting down", flush=True)
                    daemon.shutdown()
                    break
    finally:
        if sandbox is not None:
            sandbox.close()
    return daemon


if __name__ == "__main__":
    configure_logging()  # info and up, on stdout
    result = anyio.run(main)
    sys.exit(0 if result.counts["ok"] and set(result.counts) <= {"ok", "workers_stopped"} else 1)
