"""Private nats-server processes for the test run.

``NatsServer`` starts ``nats-server`` (already installed; see
``.ci/install-nats.sh``) so that it never meets a system server:

- it listens on 127.0.0.1 only, on a port the server picks itself (``-p -1``)
  and reports in a ports file (``--ports_file_dir``), so two runs never race
  for a port;
- an optional configuration (``config=``, nats-server's own format) and extra
  command-line arguments (``args=``) prepare it for auth, TLS or cluster tests;
  the command line's address and port win over the file's;
- its ports file, configuration and log live in a temporary directory owned
  by the test run;
- ``stop()`` ends only the process it started (by its pid, SIGTERM then
  SIGKILL) and removes the directory; it runs on normal exit, on failure and
  at interpreter exit as a backstop. Any other nats-server is left alone.

``started(...)`` is the context manager tests use: without nats-server it
skips the test, and in CI (env CI set) it fails it instead.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from processes import spawn
from rabbitmq import unavailable

__all__ = ["NatsServer", "NatsServerUnavailable", "find_nats_server", "started"]


class NatsServerUnavailable(RuntimeError):
    """No server can be had: ``nats-server`` is missing or did not start."""


def find_nats_server() -> Path:
    """The ``nats-server`` binary (HARE_TEST_NATS_SERVER overrides the PATH lookup)."""
    override = os.environ.get("HARE_TEST_NATS_SERVER")
    found = override or shutil.which("nats-server")
    if found and Path(found).is_file():
        return Path(found)
    raise NatsServerUnavailable(
        "nats-server is not installed (run .ci/install-nats.sh, or set HARE_TEST_NATS_SERVER "
        "to its path)"
    )


def _speaks_nats(port: int, timeout: float = 1.0) -> bool:
    """True once the port greets a client with INFO."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


class NatsServer:
    """A nats-server private to this test run; see the module docstring."""

    def __init__(
        self,
        *,
        config: str | None = None,
        args: Sequence[str] = (),
        start_timeout: float | None = None,
    ) -> None:
        self.binary = find_nats_server()
        self.config = config
        self.args = tuple(args)
        self.start_timeout = start_timeout or float(
            os.environ.get("HARE_TEST_NATS_START_TIMEOUT", "20")
        )
        self.directory: Path | None = None
        self.ports: dict[str, Any] = {}  # the ports file: {"nats": ["nats://127.0.0.1:N"], ...}
        self.port = 0
        self.start_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT`` (credentials, if the config wants them, are the test's)."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise NatsServerUnavailable("the nats-server is not running")
        return self._process.pid

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and wait until it greets clients; ``NatsServerUnavailable`` if not."""
        if self._process is not None:
            return
        began = time.monotonic()
        self.directory = d = Path(tempfile.mkdtemp(prefix="hare-nats-"))
        command = [str(self.binary)]
        if self.config is not None:
            (d / "server.conf").write_text(self.config)
            command += ["-c", str(d / "server.conf")]
        command += ["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", str(d)]
        command += ["-l", str(d / "server.log"), *self.args]
        atexit.register(self.stop)
        try:
            self._process = spawn(command, d)
            self._wait_until_ready(began + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began

    def _wait_until_ready(self, deadline: float) -> None:
        assert self._process is not None and self.directory is not None
        ports_file = self.directory / f"{self.binary.name}_{self._process.pid}.ports"
        while True:
            if self._process.poll() is not None:
                raise NatsServerUnavailable(
                    f"nats-server exited with status {self._process.returncode} during "
                    f"start-up\n{self.log_tail()}"
                )
            if not self.port:
                with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
                    self.ports = json.loads(ports_file.read_text())
                    self.port = int(self.ports["nats"][0].rsplit(":", 1)[1])
            if self.port and _speaks_nats(self.port):
                return
            if time.monotonic() > deadline:
                raise NatsServerUnavailable(
                    f"nats-server did not greet clients within {self.start_timeout:g} s\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log and console output, for error messages."""
        if self.directory is None:
            return ""
        parts = []
        for path in (self.directory / "server.log", self.directory / "server.out"):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name} (last {len(text)} lines) ---\n" + "\n".join(text))
        return "\n".join(parts) or f"(no server log in {self.directory})"

    def stop(self) -> None:
        """Stop the server; idempotent. HARE_TEST_NATS_KEEP=1 keeps its directory."""
        process, self._process = self._process, None
        if process is not None:
            for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)
                try:
                    process.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.directory is not None and not os.environ.get("HARE_TEST_NATS_KEEP"):
            shutil.rmtree(self.directory, ignore_errors=True)
        atexit.unregister(self.stop)


@contextlib.contextmanager
def started(*, config: str | None = None, args: Sequence[str] = ()) -> Iterator[NatsServer]:
    """A running ``NatsServer``; skips the test without one (fails it in CI)."""
    try:
        server = NatsServer(config=config, args=args)
        server.start()
    except NatsServerUnavailable as exc:
        unavailable(f"no nats-server: {exc}")
    try:
        yield server
    finally:
        server.stop()
