"""Code in docs/ cannot rot: every Python block compiles, and the runnable ones run."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import anyio
import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
# Pages written with the site; others' pages join when they are known to compile.
PAGES = [
    "index.md",
    "tutorial.md",
    "testing.md",
    "trio.md",
    "tuning.md",
    "tls.md",
    "daemon.md",
    "cli.md",
    "supervision.md",
    "failure-semantics.md",
    "delivery.md",
    "amqp10.md",
    "observability.md",
    "scale.md",
]


def blocks(page: str) -> list[str]:
    return BLOCK.findall((DOCS / page).read_text())


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_compile(page: str) -> None:
    """Every ```python block of the page is valid Python (top-level await allowed)."""
    for code in blocks(page):
        compile(code, f"docs/{page}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_tls_example_builds_a_connection() -> None:
    """The TLS page's code builds a Connection whose repr hides the password."""
    namespace: dict[str, object] = {}
    exec(blocks("tls.md")[0], namespace)
    text = repr(namespace["conn"])
    assert "amqps://app:***@rabbitmq.internal" in text
    assert "secret" not in text


@pytest.mark.rabbitmq
@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_trio_example_runs_on_trio(
    rabbitmq_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trio page's client gets its reply on trio from a real RabbitMQ."""
    from hare_py import Caller, Reply, Request, RPCServer

    class Greeter(RPCServer[None]):
        async def handle_request(self, request: Request, caller: Caller, state: None) -> Reply:
            return Reply(b"hello, " + request.payload, state)

    namespace: dict[str, object] = {}
    code = blocks("trio.md")[0].replace("trio.run(main)", "")
    code = code.replace("amqp://guest:guest@localhost/", rabbitmq_url)
    exec(code, namespace)
    with anyio.fail_after(20):
        async with Greeter.start(rabbitmq_url, queue="greeter") as server:
            while not server.connected:
                await anyio.sleep(0.01)
            await namespace["main"]()  # type: ignore[operator]
    assert "hello, world" in capsys.readouterr().out


@pytest.mark.anyio
async def test_testing_page_example_runs() -> None:
    """The testing page's example test passes: it kills a client's channel on the sandbox."""
    namespace: dict[str, object] = {}
    exec(blocks("testing.md")[0], namespace)
    with anyio.fail_after(10):
        await namespace["test_my_client"]()  # type: ignore[operator]
