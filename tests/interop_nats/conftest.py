"""Interop on NATS: hare_py against clients it did not write, nats-py and nats.go.

Every test talks to the session's private nats-server (127.0.0.1 only) and
is marked ``nats``. The nats.go peer (``gopeer/main.go``) is built once per
session from Debian's Go and nats.go (``.ci/install-go-peer.sh``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from rabbitmq import unavailable

HERE = Path(__file__).resolve().parent
#: Where Debian's golang-github-nats-io-go-nats-dev puts nats.go (a GOPATH tree).
GOCODE = Path("/usr/share/gocode")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder ``nats`` (before ``-m`` selects)."""
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.nats)


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: nats-py, the peer, runs in this process and is asyncio-only."""
    return "asyncio"


@pytest.fixture(scope="session")
def gopeer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The nats.go Loom peer, built into a temporary directory (skips without Go locally,
    fails in CI)."""
    go = shutil.which("go")
    if go is None or not (GOCODE / "src/github.com/nats-io/nats.go/nats.go").is_file():
        unavailable("no Go or no nats.go from Debian: run .ci/install-go-peer.sh")
    work = tmp_path_factory.mktemp("gopeer")
    env = {
        **os.environ,
        "GO111MODULE": "off",  # Debian's nats.go is a GOPATH tree; nothing is downloaded
        "GOPATH": f"{work / 'gopath'}:{GOCODE}",
        "GOCACHE": str(work / "cache"),
        "GOFLAGS": "",
    }
    if shutil.which(os.environ.get("CC") or "gcc") is None:
        env["CGO_ENABLED"] = "0"  # what Go 1.20 does without a C compiler; 1.19 would fail
    binary = work / "gopeer"
    built = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=HERE / "gopeer",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if built.returncode != 0:
        pytest.fail(f"go build of the nats.go peer failed:\n{built.stderr[-4000:]}")
    return binary
