"""A private RabbitMQ node for the test run.

``RabbitMQNode`` starts ``rabbitmq-server`` (already installed; see
``.ci/install-rabbitmq.sh``) so that it never meets a system broker:

- it listens on 127.0.0.1 only, on a free AMQP port, with its own Erlang
  distribution port and its own ``epmd`` port (``ERL_EPMD_PORT``);
- its node name, Erlang cookie, config, data and log files live in a temporary
  directory owned by the test run; ``HOME`` points there so that ``rabbitmqctl``
  finds the cookie;
- only the ``rabbitmq_amqp1_0`` plugin is on (AMQP 1.0 on the same port), which
  keeps start-up to a few seconds;
- when ``openssl`` is installed it also listens for ``amqps://`` on another free
  port, with a throw-away CA, a server certificate for localhost/127.0.0.1 and
  a client certificate (``tls_url``, ``ca_file``, ``client_cert``, ``client_key``);
- ``stop()`` ends the node, its process group and its ``epmd`` and removes the
  directory; it runs on normal exit, on failure and on KeyboardInterrupt (the
  pytest fixture's finalizer), and once more at interpreter exit as a backstop.

``ExternalRabbitMQ`` stands in for it when ``HARE_TEST_AMQP_URL`` names a broker
that someone else runs; ``rabbitmqctl`` then comes from ``HARE_TEST_RABBITMQCTL``
(a command line such as ``docker exec rabbit rabbitmqctl``) or is unavailable.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import pytest
from processes import free_port, spawn

__all__ = [
    "ExternalRabbitMQ",
    "RabbitMQError",
    "RabbitMQNode",
    "unavailable",
    "with_amqp_backend",
    "RabbitMQUnavailable",
    "find_rabbitmq_server",
]

# The Debian package's /usr/sbin scripts re-run themselves as the ``rabbitmq``
# user with its HOME and /var paths; the scripts in /usr/lib/rabbitmq/bin do not.
_SCRIPT_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin")
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def unavailable(reason: str) -> NoReturn:
    """Skip a test whose broker lacks something it needs; in CI (env CI set), fail:
    CI must never pass by skipping what the test set-up is meant to provide."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def with_amqp_backend(url: str, backend: str | None) -> str:
    """``url`` with ``backend=`` set, to pick an AMQP backend on asyncio (None: the default)."""
    if backend is None:
        return url
    return f"{url}{'&' if '?' in url else '?'}backend={backend}"


class RabbitMQUnavailable(RuntimeError):
    """No broker can be had: ``rabbitmq-server`` is missing or did not start."""


class RabbitMQError(RuntimeError):
    """A ``rabbitmqctl`` command failed or is not available."""


def find_rabbitmq_server() -> tuple[Path, Path]:
    """Paths of ``rabbitmq-server`` and ``rabbitmqctl``; ``RabbitMQUnavailable`` if absent."""
    override = os.environ.get("HARE_TEST_RABBITMQ_BIN")  # a directory holding both
    dirs = [override] if override else [*_SCRIPT_DIRS]
    for directory in dirs:
        server, ctl = Path(directory, "rabbitmq-server"), Path(directory, "rabbitmqctl")
        if server.is_file() and ctl.is_file():
            return server, ctl
    server_path, ctl_path = shutil.which("rabbitmq-server"), shutil.which("rabbitmqctl")
    if not override and server_path and ctl_path:
        return Path(server_path), Path(ctl_path)
    raise RabbitMQUnavailable(
        "rabbitmq-server is not installed (run .ci/install-rabbitmq.sh, or set "
        "HARE_TEST_AMQP_URL to use a running broker)"
    )


def _speaks_amqp(port: int, timeout: float = 1.0) -> bool:
    """True once the port answers the AMQP 0-9-1 header with a method frame."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(_AMQP_HEADER)
            return sock.recv(1) == b"\x01"  # frame type 1: connection.start
    except OSError:
        return False


class RabbitMQNode:
    """A RabbitMQ node private to this test run; see the module docstring."""

    def __init__(
        self,
        *,
        start_timeout: float | None = None,
        ctl_timeout: float = 30.0,
        epmd_port: int = 0,
        cookie: str | None = None,
        erl_args: str = "",
    ) -> None:
        self.server_script, self.ctl_script = find_rabbitmq_server()
        self.start_timeout = start_timeout or float(
            os.environ.get("HARE_TEST_RABBITMQ_START_TIMEOUT", "90")
        )
        self.ctl_timeout = ctl_timeout
        self.amqp_port = 0
        self.tls_port = 0
        self.dist_port = 0
        # A cluster's nodes share one epmd (they find each other through it) and a
        # cookie; a node given an epmd port leaves stopping that epmd to its owner.
        self.epmd_port = epmd_port
        self._owns_epmd = not epmd_port
        self.cookie = cookie or secrets.token_hex(16)
        self.erl_args = erl_args
        self.ca_file: str | None = None
        self.client_cert: str | None = None
        self.client_key: str | None = None
        self.node_name = f"hare-test-{os.getpid()}-{secrets.token_hex(3)}@localhost"
        self.username = "guest"
        self.password = "guest"
        self.directory: Path | None = None
        self.start_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"amqp://{self.username}:{self.password}@127.0.0.1:{self.amqp_port}/"

    @property
    def tls_url(self) -> str | None:
        """The ``amqps://`` URL (verify it with ``ca_file``), or None without openssl."""
        if not self.tls_port:
            return None
        return f"amqps://{self.username}:{self.password}@localhost:{self.tls_port}/"

    @property
    def log_file(self) -> Path:
        assert self.directory is not None
        return self.directory / "log" / f"{self.node_name}.log"

    def __enter__(self) -> RabbitMQNode:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the node and wait until it speaks AMQP; ``RabbitMQUnavailable`` if it cannot."""
        if self._process is not None:
            return
        began = time.monotonic()
        self.directory = Path(tempfile.mkdtemp(prefix="hare-rabbitmq-"))
        self.amqp_port, self.dist_port = free_port(), free_port()
        self.epmd_port = self.epmd_port or free_port()
        self._env = self._environment()
        self._write_files()
        self._write_certificates()
        atexit.register(self.stop)
        try:
            # A session of its own, so that stop() can signal the whole tree.
            self._process = spawn([str(self.server_script)], self.directory, self._env)
            self._wait_for_amqp(began + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began

    def _environment(self) -> dict[str, str]:
        assert self.directory is not None
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_", "ERLANG_")) and k != "HOME"
        }
        d = self.directory
        return base | {
            "HOME": str(d),
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # An absent env file keeps /etc/rabbitmq/rabbitmq-env.conf out.
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                f"-kernel inet_dist_use_interface {{127,0,0,1}} {self.erl_args}".strip()
            ),
        }

    def _write_files(self) -> None:
        assert self.directory is not None
        d = self.directory
        cookie = d / ".erlang.cookie"
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)  # Erlang refuses a cookie that others can read
        (d / "enabled_plugins").write_text("[rabbitmq_amqp1_0].\n")
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            # A test machine's small /tmp must not block publishers.
            "disk_free_limit.absolute = 1MB\n"
        )

    def _write_certificates(self) -> None:
        """A CA, server and client certificates and a TLS listener; none without openssl."""
        openssl = shutil.which("openssl")
        if openssl is None or self.directory is None:
            return
        d = self.directory / "tls"
        d.mkdir()

        def run(*args: str) -> None:
            subprocess.run([openssl, *args], cwd=d, capture_output=True, check=True, timeout=30)

        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=hare-test-ca")  # fmt: skip
        for name, extensions in (
            ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
            ("client", "extendedKeyUsage=clientAuth"),
        ):
            (d / f"{name}.ext").write_text(
                f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{extensions}\n"
                "authorityKeyIdentifier=keyid,issuer\n"
            )
            run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=hare-test-{name}")  # fmt: skip
            run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                "-extfile", f"{name}.ext")  # fmt: skip
        self.tls_port = free_port()
        self.ca_file = str(d / "ca.pem")
        self.client_cert, self.client_key = str(d / "client.pem"), str(d / "client.key")
        with open(self.directory / "rabbitmq.conf", "a") as conf:
            conf.write(
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
                f"ssl_options.cacertfile = {d / 'ca.pem'}\n"
                f"ssl_options.certfile = {d / 'server.pem'}\n"
                f"ssl_options.keyfile = {d / 'server.key'}\n"
                # Ask for a client certificate, but let clients without one in.
                "ssl_options.verify = verify_peer\n"
                "ssl_options.fail_if_no_peer_cert = false\n"
            )

    def _wait_for_amqp(self, deadline: float) -> None:
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RabbitMQUnavailable(
                    f"rabbitmq-server exited with status {self._process.returncode} "
                    f"during start-up\n{self.log_tail()}"
                )
            if _speaks_amqp(self.amqp_port):
                return
            if time.monotonic() > deadline:
                raise RabbitMQUnavailable(
                    f"rabbitmq-server did not accept AMQP on 127.0.0.1:{self.amqp_port} "
                    f"within {self.start_timeout:g} s\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker's log and console output, for error messages."""
        if self.directory is None:
            return ""
        parts = []
        for path in (self.log_file, self.directory / "server.out"):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {len(text)} lines) ---\n" + "\n".join(text))
        return "\n".join(parts) or f"(no broker log in {self.directory})"

    def ctl(self, *args: str, timeout: float | None = None) -> str:
        """Run ``rabbitmqctl ARGS`` against this node; its stdout, or ``RabbitMQError``."""
        if self._process is None:
            raise RabbitMQError("the RabbitMQ node is not running")
        command = [str(self.ctl_script), "-n", self.node_name, *args]
        return _run_ctl(command, self._env, timeout or self.ctl_timeout)

    def stop_app(self) -> None:
        """Stop the RabbitMQ application (connections drop, the Erlang node stays)."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        """Start the application again and wait until it accepts AMQP."""
        self.ctl("start_app")
        self._wait_for_amqp(time.monotonic() + self.start_timeout)

    def close_all_connections(self, reason: str = "closed by the test") -> None:
        """Make the broker close every client connection (``320 CONNECTION_FORCED``)."""
        self.ctl("close_all_connections", reason)

    def connections(self) -> list[dict[str, Any]]:
        """``list_connections`` as dicts: pid, name, client_properties, timeout, user."""
        return _list_connections(self.ctl)

    def close_connection(self, connection_name: str, reason: str = "closed by the test") -> None:
        """Close the connection(s) whose client-provided name is ``connection_name``."""
        _close_named(self.ctl, connection_name, reason)

    def kill(self) -> None:
        """Crash the node: SIGKILL its whole process tree at once; ``respawn()`` restarts it."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def respawn(self) -> None:
        """Start a killed node again on its own data, ports and name."""
        assert self.directory is not None and self._process is None
        self._process = spawn([str(self.server_script)], self.directory, self._env)
        self._wait_for_amqp(time.monotonic() + self.start_timeout)

    def stop(self) -> None:
        """Stop the node and everything it started; idempotent."""
        process, self._process = self._process, None
        if process is not None:
            _stop_process_group(process)
        if self.epmd_port and self._owns_epmd:
            # epmd daemonizes out of our process group; ask it to exit.
            epmd = shutil.which("epmd") or "epmd"
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [epmd, "-port", str(self.epmd_port), "-kill"],
                    env=self._env,
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
        # HARE_TEST_RABBITMQ_KEEP=1 keeps the logs and data for a post-mortem.
        if self.directory is not None and not os.environ.get("HARE_TEST_RABBITMQ_KEEP"):
            shutil.rmtree(self.directory, ignore_errors=True)
        atexit.unregister(self.stop)


def _stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (RabbitMQ stops gracefully), then SIGKILL the whole session."""
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # The wrapper script is gone; make sure beam (same group) is too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return


def _run_ctl(command: list[str], env: dict[str, str] | None, timeout: float) -> str:
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise RabbitMQError(f"{shlex.join(command)} timed out after {timeout:g} s") from None
    except OSError as exc:
        raise RabbitMQError(f"cannot run {shlex.join(command)}: {exc}") from None
    if done.returncode != 0:
        raise RabbitMQError(
            f"{shlex.join(command)} failed with status {done.returncode}:\n"
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    return done.stdout


def _list_connections(ctl: Any) -> list[dict[str, Any]]:
    out = ctl(
        "list_connections",
        "pid",
        "name",
        "user",
        "timeout",
        "client_properties",
        "--formatter",
        "json",
        "--quiet",
    )
    rows = json.loads(out or "[]")
    for row in rows:
        # The json formatter renders a field table as [name, type, value] triples.
        props = row.get("client_properties")
        if isinstance(props, list):
            row["client_properties"] = {item[0]: item[2] for item in props if len(item) == 3}
    return list(rows)


def _close_named(ctl: Any, connection_name: str, reason: str) -> None:
    names = {
        row["name"]
        for row in _list_connections(ctl)
        if row.get("client_properties", {}).get("connection_name") == connection_name
    }
    if not names:
        raise RabbitMQError(f"no connection named {connection_name!r} on the broker")
    # close_connection wants the pid as the table formatter prints it
    # (<node.1.2.3>), not as the json one does (#PID<1.2.3>).
    for line in ctl("list_connections", "pid", "name", "--silent").splitlines():
        pid, _, name = line.partition("\t")
        if name in names:
            ctl("close_connection", pid, reason)


class ExternalRabbitMQ:
    """A broker run by someone else (``HARE_TEST_AMQP_URL``); nothing is started or stopped.

    TLS tests use ``HARE_TEST_AMQPS_URL`` and ``HARE_TEST_AMQPS_CA_FILE`` (and
    ``HARE_TEST_AMQPS_CLIENT_CERT``/``_KEY``) when they are set.
    """

    def __init__(self, url: str, ctl_command: str | None = None, ctl_timeout: float = 30.0) -> None:
        self.url = url
        self.tls_url = os.environ.get("HARE_TEST_AMQPS_URL")
        self.ca_file = os.environ.get("HARE_TEST_AMQPS_CA_FILE")
        self.client_cert = os.environ.get("HARE_TEST_AMQPS_CLIENT_CERT")
        self.client_key = os.environ.get("HARE_TEST_AMQPS_CLIENT_KEY")
        self.ctl_command = shlex.split(ctl_command) if ctl_command else None
        self.ctl_timeout = ctl_timeout

    def ctl(self, *args: str, timeout: float | None = None) -> str:
        """Run ``rabbitmqctl``; without HARE_TEST_RABBITMQCTL the test skips (fails in CI)."""
        if self.ctl_command is None:
            reason = (
                "rabbitmqctl is unavailable for the external broker in HARE_TEST_AMQP_URL; "
                "set HARE_TEST_RABBITMQCTL to a command line that reaches it, for example "
                "'docker exec rabbitmq rabbitmqctl'"
            )
            unavailable(reason)
        return _run_ctl([*self.ctl_command, *args], None, timeout or self.ctl_timeout)

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup")

    def close_all_connections(self, reason: str = "closed by the test") -> None:
        self.ctl("close_all_connections", reason)

    def connections(self) -> list[dict[str, Any]]:
        return _list_connections(self.ctl)

    def close_connection(self, connection_name: str, reason: str = "closed by the test") -> None:
        _close_named(self.ctl, connection_name, reason)

    def stop(self) -> None:
        """Nothing to stop: the broker is not ours."""


class RabbitMQCluster:
    """``size`` private nodes on loopback joined into one cluster (``join_cluster``).

    Each node has its own name, AMQP and distribution ports and data folder;
    they share one epmd port and cookie, private to the cluster, and one
    Erlang scheduler each, so that three fit a 2-core machine. ``stop()``
    stops them all and their epmd; any other RabbitMQ is left alone.
    """

    def __init__(self, size: int = 3) -> None:
        self.epmd_port = free_port()
        cookie = secrets.token_hex(16)
        self.nodes = [
            RabbitMQNode(epmd_port=self.epmd_port, cookie=cookie, erl_args="+S 1:1 +A 4")
            for _ in range(size)
        ]
        self.start_seconds: float | None = None

    def __enter__(self) -> RabbitMQCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        began = time.monotonic()
        atexit.register(self.stop)
        try:
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(RabbitMQNode.start, self.nodes))
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.node_name, timeout=60)
                node.start_app()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began

    def urls(self, first: int) -> list[str]:
        """Every node's URL, starting with node ``first``: a client's failover list."""
        n = len(self.nodes)
        return [self.nodes[(first + k) % n].url for k in range(n)]

    def running(self) -> RabbitMQNode:
        """A node that is up, to run rabbitmqctl against."""
        for node in self.nodes:
            if node._process is not None:
                return node
        raise RabbitMQError("no node of the cluster is running")

    def node_of_connection(self, connection_name: str) -> RabbitMQNode:
        """The node the named client connection is on (its pid names the node)."""
        ctl = self.running().ctl
        names = {
            row["name"]
            for row in _list_connections(ctl)
            if row.get("client_properties", {}).get("connection_name") == connection_name
        }
        for line in ctl("list_connections", "pid", "name", "--silent").splitlines():
            pid, _, name = line.partition("\t")
            if name in names:
                node_name = pid.strip("<>").rsplit(".", 3)[0]
                return next(n for n in self.nodes if n.node_name == node_name)
        raise RabbitMQError(f"no connection named {connection_name!r} on the cluster")

    def leader_of(self, queue: str) -> RabbitMQNode:
        """The node leading quorum queue ``queue``."""
        rows = json.loads(
            self.running().ctl("list_queues", "name", "leader", "--formatter", "json", "--quiet")
            or "[]"
        )
        for row in rows:
            if row["name"] == queue:
                return next(n for n in self.nodes if n.node_name == row["leader"])
        raise RabbitMQError(f"no queue {queue!r} on the cluster")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        epmd = shutil.which("epmd") or "epmd"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [epmd, "-port", str(self.epmd_port), "-kill"],
                env={**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)},
                capture_output=True,
                timeout=10,
                check=False,
            )
        atexit.unregister(self.stop)
