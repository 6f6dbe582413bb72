"""hare_py is quiet unless the application asks: stdlib loggers named ``hare_py.*``,
nothing on stdout, structured records, debug events free when debug is off, every
event in docs/logging.md."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
import structlog

from hare_py import Caller, Reply, Request, RPCClient, RPCServer
from hare_py._log import Logger, debug_enabled, get_logger
from hare_py.testing import SandboxBroker

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hare_py"
PAGE = ROOT / "docs" / "logging.md"
EVENT = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+$")
LEVELS = {"debug", "info", "warning", "error", "critical", "exception"}
APPLICATIONS = {"cli.py", "demo.py"}  # entry points: they configure logging, as applications do


class Echo(RPCServer[None]):
    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        return Reply(request.payload, state)


# A small application that configures no logging at all: one client, one server, a
# few requests and one warning (an info message that nobody handles).
QUIET_APP = """
import sys
import anyio
from hare_py import Reply, RPCClient, RPCServer
from hare_py.testing import SandboxBroker

class Echo(RPCServer[None]):
    async def handle_request(self, request, caller, state):
        return Reply(request.payload, state)

async def main():
    with SandboxBroker() as broker, anyio.fail_after(20):
        async with Echo.start(broker.url, queue="echo") as server, RPCClient.start(
            broker.url
        ) as client:
            while not server.connected:
                await anyio.sleep(0.01)
            for _ in range(5):
                assert await client.request(b"x", "echo") == b"x"
            client.send("nobody handles this")
            try:
                await client.call("flush the mailbox")  # answered after the message above
            except NotImplementedError:
                pass

anyio.run(main, backend=sys.argv[1])
"""


async def run_python(code: str, *args: str) -> tuple[str, str]:
    """Run ``code`` in a fresh interpreter; its stdout and stderr."""
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, "-c", code, *args], cwd=ROOT, check=False)
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err
    return out, err


@pytest.fixture
def hare_level() -> Iterator[logging.Logger]:
    """The ``hare_py`` stdlib logger; its level and handlers are restored afterwards."""
    logger = logging.getLogger("hare_py")
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


class Records(logging.Handler):
    """Keeps every record it is handed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, name: str) -> list[logging.LogRecord]:
        return [r for r in self.records if isinstance(r.msg, dict) and r.msg["event"] == name]


async def serve_some(requests: int = 3) -> None:
    with SandboxBroker() as broker, anyio.fail_after(10):
        async with (
            Echo.start(broker.url, queue="echo") as server,
            RPCClient[None].start(broker.url) as client,
        ):
            while not server.connected:
                await anyio.sleep(0.01)
            for _ in range(requests):
                assert await client.request(b"x", "echo") == b"x"


# -- with no configuration ---------------------------------------------------------


@pytest.mark.anyio
async def test_nothing_reaches_stdout_without_configuration(anyio_backend: str) -> None:
    """An application that configures no logging gets nothing on stdout, only warnings+ on
    stderr."""
    out, err = await run_python(QUIET_APP, anyio_backend)
    assert out == ""
    lines = err.splitlines()
    assert lines and all(line.split(" ", 1)[0] == "actor.unhandled_info" for line in lines), err


@pytest.mark.anyio
async def test_warnings_reach_stderr_through_the_last_resort(anyio_backend: str) -> None:
    """With no handler anywhere a warning is printed by logging's last resort, as
    ``event key=value ...``."""
    code = (
        "import logging, sys\n"
        "import hare_py._log as hl\n"
        "class Spy(type(logging.lastResort)):\n"
        "    def emit(self, record):\n"
        "        sys.stderr.write('last-resort ')\n"
        "        super().emit(record)\n"
        "logging.lastResort = Spy(logging.WARNING)\n" + QUIET_APP
    )
    _, err = await run_python(code, anyio_backend)
    assert re.fullmatch(
        r"last-resort actor\.unhandled_info message=\"'nobody handles this'\" actor=RPCClient"
        r" exchange=''\n",
        err,
    ), err


# -- debug costs nothing when off -----------------------------------------------------


def test_debug_enabled_follows_the_stdlib_level(hare_level: logging.Logger) -> None:
    """debug_enabled() is the stdlib logger's answer, and follows setLevel at once."""
    log = get_logger("hare_py.some.part", thing=1)
    hare_level.setLevel(logging.INFO)
    assert not debug_enabled(log)
    hare_level.setLevel(logging.DEBUG)
    assert debug_enabled(log) and debug_enabled(log.bind(more=2))
    logging.getLogger("hare_py.some").setLevel(logging.WARNING)
    try:
        assert not debug_enabled(log)
    finally:
        logging.getLogger("hare_py.some").setLevel(logging.NOTSET)


@pytest.mark.anyio
async def test_request_event_is_not_built_when_debug_is_off(
    hare_level: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With hare_py at INFO, no rpc.request event is built, let alone handed to a handler."""
    built: list[str] = []
    emit = Logger._emit

    def counting(self: Logger, level: int, event: str, fields: dict[str, Any]) -> None:
        built.append(event)
        emit(self, level, event, fields)

    monkeypatch.setattr(Logger, "_emit", counting)
    records = Records()
    hare_level.addHandler(records)
    hare_level.setLevel(logging.INFO)
    await serve_some()
    assert "actor.started" in built  # info events still go through
    assert "rpc.request" not in built
    assert not [r for r in records.records if r.levelno < logging.INFO]


# -- an application that asks -------------------------------------------------------


@pytest.mark.anyio
async def test_stdlib_debug_receives_request_records_with_fields(
    hare_level: logging.Logger,
) -> None:
    """With the hare_py logger at DEBUG, each request is one rpc.request record whose
    fields are in its msg dict and on the record itself."""
    records = Records()
    hare_level.addHandler(records)
    hare_level.setLevel(logging.DEBUG)
    await serve_some(3)
    events = records.events("rpc.request")
    assert len(events) == 3
    for record in events:
        event = cast(dict[str, Any], record.msg)
        assert record.levelno == logging.DEBUG and record.name.startswith("hare_py.")
        assert event["outcome"] == "ok" and record.outcome == "ok"  # type: ignore[attr-defined]
        assert event["routing_key"] == "echo" and event["duration_ms"] >= 0
        assert record.getMessage().startswith("rpc.request outcome=ok duration_ms=")
        assert record.filename == "client.py"  # the call site, not the logging wrapper
    assert all(r.name.startswith("hare_py") for r in records.records)


def test_fields_that_clash_with_record_attributes_stay_in_msg(
    hare_level: logging.Logger,
) -> None:
    """A field named like a LogRecord attribute (message, name) is kept in msg and does not
    break the record."""
    records = Records()
    hare_level.addHandler(records)
    hare_level.setLevel(logging.INFO)
    get_logger("hare_py.test", name="bound").warning("test.clash", message="m", extra=1)
    (record,) = records.records
    assert record.name == "hare_py.test"
    assert record.msg == {"event": "test.clash", "message": "m", "extra": 1, "name": "bound"}
    assert record.extra == 1  # type: ignore[attr-defined]


def test_exception_events_carry_their_traceback(hare_level: logging.Logger) -> None:
    """log.exception() and exc_info=exc give the record exc_info, so formatters print the
    traceback."""
    records = Records()
    hare_level.addHandler(records)
    log = get_logger("hare_py.test")
    try:
        raise ValueError("boom")
    except ValueError as exc:
        log.exception("test.failed")
        error = exc
    log.error("test.crashed", exc_info=error)
    assert [r.exc_info[1] for r in records.records if r.exc_info] == [error, error]
    assert "ValueError: boom" in logging.Formatter().format(records.records[0])


def test_processor_formatter_renders_hare_py_events_as_json(
    hare_level: logging.Logger,
) -> None:
    """structlog's ProcessorFormatter sees hare_py's records as structlog events: every field,
    the level and the logger name."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.JSONRenderer(),
            ]
        )
    )
    hare_level.addHandler(handler)
    hare_level.setLevel(logging.INFO)
    get_logger("hare_py.test", actor="a").warning("test.json", count=2, reason="x y")
    assert json.loads(stream.getvalue()) == {
        "event": "test.json",
        "count": 2,
        "reason": "x y",
        "actor": "a",
        "level": "warning",
        "logger": "hare_py.test",
    }


@pytest.mark.anyio
async def test_structlog_capture_logs_still_sees_hare_py_events() -> None:
    """Tests that assert with structlog's capture_logs() get hare_py's events (tests/conftest.py
    forwards them)."""
    with structlog.testing.capture_logs() as logs:
        await serve_some(1)
    events = {e["event"]: e for e in logs}
    assert events["rpc.request"]["log_level"] == "debug"
    assert events["rpc.request"]["outcome"] == "ok"
    assert events["actor.started"]["log_level"] == "info"


# -- the docs' set-ups, run as written ----------------------------------------------


def setups() -> dict[str, str]:
    """The page's python blocks, by the heading above them."""
    text = PAGE.read_text()
    found: dict[str, str] = {}
    for section in re.split(r"^### ", text, flags=re.MULTILINE)[1:]:
        heading = section.splitlines()[0].strip()
        block = re.search(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
        if block:
            found[heading] = block.group(1)
    return found


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the set-ups do not depend on the loop
@pytest.mark.parametrize(
    ("heading", "expect"),
    [
        ("Plain text", r"^\S+ \S+ INFO hare_py\.actor rpc\.channel_opened queue="),
        ("JSON lines", None),
        ("Debug for hare_py only", r"^DEBUG hare_py\.actor rpc\.request outcome=ok "),
    ],
)
async def test_docs_setups_work_as_written(heading: str, expect: str | None) -> None:
    """Each set-up on docs/logging.md, run before a small client/server, logs what the page
    says, on stderr."""
    out, err = await run_python(setups()[heading] + QUIET_APP, "asyncio")
    assert out == ""
    if expect is not None:
        assert re.search(expect, err, re.MULTILINE), err
        return
    lines = [json.loads(line) for line in err.splitlines()]
    request = next(e for e in lines if e["event"] == "rpc.channel_opened")
    assert request["level"] == "info" and request["logger"] == "hare_py.actor"
    assert request["connects"] == 1 and "timestamp" in request
    assert not [e for e in lines if e["level"] == "debug"]


# -- every event is named area.event and listed on docs/logging.md --------------------


def literals(node: ast.expr, where: str, names: dict[str, list[ast.expr]]) -> list[str]:
    """The event names an expression can be: a literal, a choice between literals, or a
    variable the module sets to those."""
    if isinstance(node, ast.IfExp):
        return literals(node.body, where, names) + literals(node.orelse, where, names)
    if isinstance(node, ast.Name) and node.id in names:
        return [name for value in names[node.id] for name in literals(value, where, names)]
    assert isinstance(node, ast.Constant) and isinstance(node.value, str), (
        f"{where}: an event name is a literal"
    )
    return [node.value]


def assignments(tree: ast.Module) -> dict[str, list[ast.expr]]:
    """Every value the module assigns to each plain variable name."""
    names: dict[str, list[ast.expr]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.setdefault(target.id, []).append(node.value)
    return names


def code_events() -> dict[str, set[str]]:
    """Every event the package logs, with its levels, read from the source."""
    events: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in APPLICATIONS and path.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text(), str(path))
        names = assignments(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if isinstance(func, ast.Name) and func.id == "DropLog":
                # DropLog(log, "x.y", level=...) logs x.y and its x.y_suppressed summary.
                (event,) = literals(node.args[1], where, names)
                level = next((k.value for k in node.keywords if k.arg == "level"), None)
                name = str(level.value) if isinstance(level, ast.Constant) else "info"
                events.setdefault(event, set()).add(name)
                events.setdefault(f"{event}_suppressed", set()).add(name)
                continue
            if not (isinstance(func, ast.Attribute) and func.attr in LEVELS and node.args):
                continue
            receiver = func.value
            owner = receiver.attr if isinstance(receiver, ast.Attribute) else None
            owner = receiver.id if isinstance(receiver, ast.Name) else owner
            if owner is None or "log" not in owner:
                continue
            at = "error" if func.attr == "exception" else func.attr
            for name in literals(node.args[0], where, names):
                events.setdefault(name, set()).add(at)
    return events


def documented_events() -> dict[str, set[str]]:
    """The events table of docs/logging.md: name -> levels."""
    table: dict[str, set[str]] = {}
    for line in PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"`[^`]+`", cells[0]):
            table[cells[0].strip("`")] = set(re.findall(r"[a-z]+", cells[1])) & LEVELS
    return table


def test_every_event_is_named_area_dot_event() -> None:
    """Each event the package logs is a literal ``area.event`` name."""
    events = code_events()
    assert len(events) > 30
    assert sorted(e for e in events if not EVENT.fullmatch(e)) == []


def test_every_event_is_in_the_docs_table_with_its_levels() -> None:
    """docs/logging.md lists exactly the events the code logs, each with the levels it is
    logged at."""
    code, docs = code_events(), documented_events()
    assert sorted(set(code) - set(docs)) == [], "events missing from docs/logging.md"
    assert sorted(set(docs) - set(code)) == [], "docs/logging.md lists events nobody logs"
    wrong = {e: (code[e], docs[e]) for e in code if not code[e] <= docs[e]}
    assert wrong == {}, "levels in the code that the table does not give"


def test_the_library_never_configures_logging() -> None:
    """No library module configures structlog or logging; every logger is named hare_py.*."""
    configuring = {"configure", "basicConfig", "addHandler", "dictConfig", "setLevel"}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in APPLICATIONS and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            owner = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
            if name in configuring:
                assert owner not in {"structlog", "logging"} and "log" not in owner, where
            if name in {"get_logger", "getLogger"} and node.args and path.name != "_log.py":
                (first,) = literals(node.args[0], where, {})
                assert first.startswith("hare_py"), where


def test_demo_shows_its_readable_log() -> None:
    """`make demo` prints hare_py's events readably: the reconnect is visible in its log."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "HARE_URL"},
    )
    assert done.returncode == 0, done.stderr
    assert "rpc.channel_opened" in done.stdout and "connects=2" in done.stdout
    assert "demo.done" in done.stdout
    assert "rpc.request" not in done.stdout  # the demo shows info and up
