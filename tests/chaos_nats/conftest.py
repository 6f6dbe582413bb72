"""NATS chaos fixtures: private nats-servers (the tests kill them), an echo server in its
own process, and the report rows.

The servers are started by the test itself (``tests/natsserver.py``): on
127.0.0.1, on a fixed free port where a test restarts one in place, with an
HTTP monitoring port so that a test can ask the server what a client holds
(``/connz``). Without nats-server the tests skip, and in CI they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import chaos_report
import pytest
from natsserver import NatsServer, NatsServerUnavailable
from processes import free_port, start_ready, stop_ready
from rabbitmq import unavailable

HERE = Path(__file__).resolve().parent


class Node:
    """One private nats-server that a test may kill, restart in place or put in lame duck
    mode; ``port`` stays the same across restarts."""

    def __init__(
        self, *, port: int | None = None, args: Sequence[str] = (), config: str = ""
    ) -> None:
        self.port = port or free_port()
        self.args = ["-p", str(self.port), "-m", "-1", *args]
        self.config = config or None
        self.server: NatsServer | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def start(self) -> None:
        assert self.server is None or self.server._process is None
        try:
            server = NatsServer(config=self.config, args=self.args)
            server.start()
        except NatsServerUnavailable as exc:
            unavailable(f"no nats-server: {exc}")
        self.server = server
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: the server goes without a word to its clients."""
        if self.server is not None and self.server._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.server.pid, signal.SIGKILL)
            self.server.stop()

    def lame_duck(self) -> None:
        """What ``nats-server --signal ldm=<pid>`` sends."""
        os.kill(self.pid, signal.SIGUSR2)

    def exited(self) -> bool:
        process = self.server._process if self.server is not None else None
        return process is None or process.poll() is not None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def monitor(self, path: str) -> Any:
        """GET ``path`` from the server's HTTP monitoring port, as JSON."""
        assert self.server is not None
        base = self.server.ports["monitoring"][0]
        with urllib.request.urlopen(f"{base}{path}", timeout=5) as answer:
            return json.loads(answer.read())

    def subscriptions_of(self, name: str) -> list[list[str]]:
        """The subjects each client connection named ``name`` subscribes to, one list per
        connection."""
        conns = self.monitor("/connz?subs=1&limit=1024")["connections"] or []
        return [sorted(c.get("subscriptions_list") or []) for c in conns if c.get("name") == name]


@pytest.fixture
def nodes() -> Iterator[Callable[..., Node]]:
    """Start private nats-servers: ``node = nodes(args=[...], config=...)``; all stop at the
    end of the test."""
    started: list[Node] = []

    def start(**kw: Any) -> Node:
        node = Node(**kw)
        started.append(node)
        node.start()
        return node

    yield start
    for node in started:
        node.stop()


def cluster_args(name: str, own: int, routes: Sequence[int]) -> list[str]:
    """Command-line options for one node of a cluster on loopback ports."""
    return [
        "--server_name",
        name,
        "--cluster_name",
        "chaos",
        "--cluster",
        f"nats://127.0.0.1:{own}",
        "--routes",
        ",".join(f"nats://127.0.0.1:{port}" for port in routes),
    ]


@pytest.fixture
def echo_server() -> Iterator[Callable[[Sequence[str], str, str], None]]:
    """Start the loom echo server in its own process: ``echo_server(urls, service,
    instance)``; it is stopped (SIGTERM) at the end of the test."""
    processes: list[subprocess.Popen[str]] = []

    def start(urls: Sequence[str], service: str, instance: str) -> None:
        script = [sys.executable, str(HERE / "echo_server.py"), ",".join(urls)]
        processes.append(start_ready([*script, service, instance]))

    yield start
    for process in processes:
        stop_ready(process)


# --- the report: the same rows, and the same table, as tests/chaos ----------------


@pytest.fixture
def report(anyio_backend: str) -> Any:
    """Record a fault's figures; they are printed at the end of the run."""

    def add(row: dict[str, Any]) -> None:
        chaos_report.ROWS.append({"backend": f"nats/{anyio_backend}", **row})

    return add
