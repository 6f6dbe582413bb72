"""The ``hare-py`` command: replies, exit codes, messages, and the console script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from hare_py import Caller, NoReply, Reply, Request, RPCServer
from hare_py.cli import (
    EXIT_CONNECTION,
    EXIT_OK,
    EXIT_REMOTE,
    EXIT_TIMEOUT,
    EXIT_UNROUTABLE,
    EXIT_USAGE,
    main,
    run,
)
from hare_py.testing import SandboxBroker


class Service(RPCServer[None]):
    """Upper-cases payloads; ``boom`` raises, ``silence`` is never answered."""

    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        if request.payload == b"boom":
            raise ValueError("no booms here")
        if request.payload == b"silence":
            return NoReply(state)
        if isinstance(request.payload, bytes):
            return Reply(request.payload.upper(), state)
        return Reply({"got": request.payload, "headers": dict(request.headers)}, state)


@pytest.fixture
async def broker() -> AsyncIterator[SandboxBroker]:
    """A sandbox broker serving ``svc`` (bytes) and ``svc.json`` (JSON)."""
    from hare_py import JSON

    with SandboxBroker() as sandbox:
        async with (
            Service.start(sandbox.url, queue="svc") as server,
            Service.start(sandbox.url, queue="svc.json", codec=JSON) as json_server,
        ):
            with anyio.fail_after(5):
                while not (server.connected and json_server.connected):
                    await anyio.sleep(0.01)
            yield sandbox


pytestmark = pytest.mark.anyio


async def test_call_prints_the_reply(broker: SandboxBroker, capsys: Any) -> None:
    """`call` prints the server's reply on stdout and exits 0."""
    with anyio.fail_after(10):
        code = await run(["call", broker.url, "--routing-key", "svc", "hello"])
    last = capsys.readouterr().out.splitlines()[-1]  # run() leaves logging alone: skip logs
    assert (code, last) == (EXIT_OK, "HELLO")


async def test_call_json_round_trip(broker: SandboxBroker, capsys: Any) -> None:
    """`call --json` sends a JSON value with headers and prints the reply as JSON."""
    argv = ["call", broker.url, "-k", "svc.json", "--json", "--header", "a=1", '{"n": [1, 2]}']
    with anyio.fail_after(10):
        code = await run(argv)
    assert code == EXIT_OK
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {
        "got": {"n": [1, 2]},
        "headers": {"a": "1"},
    }


@pytest.mark.parametrize(
    ("payload", "routing_key", "code", "message"),
    [
        ("silence", "svc", EXIT_TIMEOUT, "timeout: request to 'svc' got no reply"),
        ("hello", "nobody", EXIT_UNROUTABLE, "unroutable:"),
        ("boom", "svc", EXIT_REMOTE, "remote error: ValueError: no booms here"),
    ],
)
async def test_call_failures_have_their_own_exit_codes(
    broker: SandboxBroker, capsys: Any, payload: str, routing_key: str, code: int, message: str
) -> None:
    """Timeout, unroutable and remote error each exit with their code and one line."""
    with anyio.fail_after(10):
        result = await run(["call", broker.url, "-k", routing_key, "--timeout", "0.5", payload])
    err = capsys.readouterr().err
    assert result == code
    assert message in err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err


async def test_call_bad_json_is_bad_usage(broker: SandboxBroker, capsys: Any) -> None:
    """Invalid JSON with `--json` exits with the usage code, not a traceback."""
    code = await run(["call", broker.url, "-k", "svc", "--json", "{nope"])
    assert code == EXIT_USAGE
    assert "PAYLOAD is not valid JSON" in capsys.readouterr().err


async def test_call_to_a_missing_sandbox_is_a_connection_failure(capsys: Any) -> None:
    """A broker that cannot be reached exits with the connection-failure code at once."""
    with anyio.fail_after(5):
        code = await run(["call", "sandbox://nobody-here", "-k", "svc", "x"])
    assert code == EXIT_CONNECTION
    assert "no sandbox broker named 'nobody-here'" in capsys.readouterr().err


def test_refused_amqp_connection_hides_the_password(capsys: Any) -> None:
    """A refused amqp:// connection exits 5 fast and never prints the password."""
    code = main(["call", "amqp://user:s3cr3t@127.0.0.1:1/", "-k", "k", "--timeout", "3", "x"])
    err = capsys.readouterr().err
    assert code == EXIT_CONNECTION
    assert "connection failure" in err and "user:***@127.0.0.1" in err
    assert "s3cr3t" not in err and "Traceback" not in err


def test_malformed_url_is_bad_usage(capsys: Any) -> None:
    """An unknown URL scheme exits with the usage code and hides the password."""
    assert main(["call", "amqx://user:s3cr3t@host/", "-k", "k", "x"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "unknown URL scheme" in err and "s3cr3t" not in err


def test_missing_options_are_bad_usage(capsys: Any) -> None:
    """A missing --routing-key exits 2 with argparse's usage message."""
    with pytest.raises(SystemExit) as exit_info:
        main(["call", "sandbox://x", "payload"])
    assert exit_info.value.code == EXIT_USAGE
    assert "--routing-key" in capsys.readouterr().err


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_serve_echo_answers_until_sigterm(capsys: Any) -> None:
    """`serve-echo` answers requests and stops cleanly (exit 0) on SIGTERM."""
    codes: list[int] = []
    with SandboxBroker() as sandbox:

        async def serve() -> None:
            codes.append(await run(["serve-echo", sandbox.url, "--queue", "echo"]))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                while not sandbox.consumers("echo"):
                    await anyio.sleep(0.01)
                assert await run(["call", sandbox.url, "-k", "echo", "ping"]) == EXIT_OK
                os.kill(os.getpid(), signal.SIGTERM)
    out = capsys.readouterr()
    assert codes == [EXIT_OK]
    assert "serving 'echo' on sandbox://" in out.out and "ping\n" in out.out
    assert "SIGTERM: stopping" in out.err and "stopped after 1 requests" in out.err


async def test_demo_command_recovers(capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`demo` runs the demo on the sandbox and exits 0 after the recovery."""
    monkeypatch.delenv("HARE_URL", raising=False)
    with anyio.fail_after(20):
        assert await run(["demo", "--requests", "6"]) == EXIT_OK


def _console_script() -> list[str]:
    script = Path(sysconfig.get_path("scripts")) / "hare-py"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hare_py.cli"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_console_script_help_documents_the_exit_codes() -> None:
    """`hare-py --help` and `hare-py call --help` explain the options and exit codes."""
    with anyio.fail_after(30):
        top = await anyio.run_process([*_console_script(), "--help"])
        call = await anyio.run_process([*_console_script(), "call", "--help"])
    for text in (top.stdout.decode(), call.stdout.decode()):
        assert "exit codes:" in text
        assert "timeout" in text and "unroutable" in text and "remote error" in text
    assert "--routing-key" in call.stdout.decode() and "--timeout" in call.stdout.decode()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_console_script_serve_echo_stops_on_sigterm() -> None:
    """The `hare-py serve-echo` process exits 0 on SIGTERM, with no traceback."""
    with anyio.fail_after(30):
        async with await anyio.open_process(
            [*_console_script(), "serve-echo", "sandbox://elsewhere", "--queue", "q"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as process:
            assert process.stdout is not None and process.stderr is not None
            line = await process.stdout.receive()
            assert b"serving 'q'" in line
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == EXIT_OK
            err = b""
            async for chunk in process.stderr:
                err += chunk
    assert b"SIGTERM: stopping" in err and b"Traceback" not in err


@pytest.mark.anyio
async def test_call_to_an_exchange_of_another_type_is_a_broker_error(capsys: Any) -> None:
    """--exchange naming an exchange of another type exits 1 naming the 406, not 3 (timeout)."""
    from hare_py.cli import EXIT_ERROR

    with SandboxBroker() as sandbox:
        async with Service.start(sandbox.url, queue="q", exchange="ex", exchange_type="topic"):
            with anyio.fail_after(5):
                code = await run(
                    ["call", sandbox.url, "--exchange", "ex", "-k", "q", "--timeout", "2", "x"]
                )
    assert code == EXIT_ERROR
    assert "406" in capsys.readouterr().err


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the SIGTERM comes from os.kill
@pytest.mark.parametrize("server", ["sandbox", pytest.param("nats-server", marks=pytest.mark.nats)])
async def test_call_and_serve_echo_on_nats(
    capsys: Any, server: str, request: pytest.FixtureRequest
) -> None:
    """On NATS, `serve-echo --queue SUBJECT` answers `call -k SUBJECT`; nobody there exits 4."""
    from hare_py.testing import SandboxNatsBroker

    codes: list[int] = []
    subject = f"cli.echo.{os.getpid()}"
    with SandboxNatsBroker() as sandbox:
        url = sandbox.url if server == "sandbox" else request.getfixturevalue("nats_server").url

        async def serve() -> None:
            codes.append(await run(["serve-echo", url, "--queue", subject]))

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                while "serving" not in capsys.readouterr().out:
                    await anyio.sleep(0.05)
                await anyio.sleep(0.2)  # the subscription reaches the server
                assert await run(["call", url, "-k", subject, "ping"]) == EXIT_OK
                assert await run(["call", url, "-k", "cli.nobody", "x"]) == EXIT_UNROUTABLE
                assert await run(["call", url, "--exchange", "x", "-k", subject, "y"]) == (
                    EXIT_USAGE
                )
                os.kill(os.getpid(), signal.SIGTERM)
    out = capsys.readouterr()
    assert codes == [EXIT_OK]
    assert "ping\n" in out.out
