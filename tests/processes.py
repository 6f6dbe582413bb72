"""Processes the tests start: brokers in a session of their own, and helper scripts
that say ``ready``.

``spawn`` starts a server (nats-server, RabbitMQ) with its console output in
``server.out`` of its directory and in a session of its own, so that its
owner can signal the whole tree; ``start_ready`` and ``stop_ready`` start and
stop a Python script (the chaos echo servers) that prints ``ready`` once it
serves.
"""

from __future__ import annotations

import os
import random
import select
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

__all__ = ["free_port", "spawn", "start_ready", "stop_ready"]


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_START = _ephemeral_start()
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, below the ephemeral range.

    A port the kernel picks (bind to 0) comes from the range it also gives every
    outgoing connection, so a server started on it later can find it taken by a
    client socket. Below that range only listeners bind; and no port is handed
    out twice in one test run, as two servers started in a row might otherwise
    get the same one before either binds it.
    """
    for _ in range(1000):
        port = random.randrange(10_000, _EPHEMERAL_START)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free TCP port on 127.0.0.1 below the ephemeral range")


def spawn(
    command: Sequence[str], directory: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a server in ``directory``, its output in ``server.out``, in a new session."""
    with open(directory / "server.out", "wb") as out:
        return subprocess.Popen(
            list(command),
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_ready(command: Sequence[str], timeout: float = 30.0) -> subprocess.Popen[str]:
    """Start a script and wait until it prints ``ready``; the test fails if it does not."""
    process = subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if line.strip() != "ready":
        try:
            code = process.wait(timeout=0.5)  # it printed something else: did it exit?
            status = f"exited with {code}"
        except subprocess.TimeoutExpired:
            process.kill()
            status = "still running: killed"
        _, err = process.communicate(timeout=10)
        shown = " ".join(command)[:200]
        pytest.fail(
            f"{shown!r} did not print 'ready' within {timeout:g} s ({status}; "
            f"first line {line!r})\n{err[-2000:]}"
        )
    return process


def stop_ready(process: subprocess.Popen[str]) -> None:
    """SIGTERM a script started by ``start_ready`` (SIGKILL after 10 s)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
