"""Every example runs against the in-memory broker, so none can rot."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.anyio


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_demo_recovers_from_the_killed_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's client gets a second reply queue after the kill, and requests succeed."""
    monkeypatch.delenv("HARE_URL", raising=False)
    counts = await load("demo").main(requests=10)
    assert counts["reply_queues"] == 2
    assert counts["ok"] + counts["connection_lost"] == 10
    assert counts["ok"] >= 9
    assert counts["other_errors"] == 0


@pytest.mark.parametrize("convention", ["hare", "lasting", "direct_reply_to"])
async def test_hare_client_example(monkeypatch: pytest.MonkeyPatch, convention: str) -> None:
    """The hare client example gets its replies with each reply-queue choice."""
    monkeypatch.delenv("HARE_URL", raising=False)
    replies = await load("hare_client").main(convention)
    assert replies == [b"HELLO", b"HARE"]
