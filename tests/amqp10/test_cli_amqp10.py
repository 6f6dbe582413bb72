"""`hare-py call` and `serve-echo` on AMQP 1.0: proton's broker, RabbitMQ 3.x, a listener."""

from __future__ import annotations

import os
import signal
from typing import Any

import anyio
import pytest

from hare_py.cli import EXIT_OK, EXIT_UNROUTABLE, EXIT_USAGE, run

from .conftest import Peer

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the SIGTERM comes from os.kill
async def test_call_and_serve_echo_on_amqp10(capsys: Any, peer: Peer) -> None:
    """`serve-echo --queue ADDRESS` answers `call -k ADDRESS` on every AMQP 1.0 peer;
    `--exchange` there is a usage error; a listener refuses an address it does not serve."""
    codes: list[int] = []
    address = f"{peer.base}cli-echo-{os.getpid()}"

    async def serve() -> None:
        codes.append(await run(["serve-echo", peer.server_url, "--queue", address]))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            while "serving" not in capsys.readouterr().out:
                await anyio.sleep(0.05)
            assert await run(["call", peer.client_url, "-k", address, "ping"]) == EXIT_OK
            assert await run(["call", peer.client_url, "--json", "-k", address, '{"n": 1}']) == (
                EXIT_OK
            )
            assert await run(["call", peer.client_url, "--exchange", "x", "-k", address, "y"]) == (
                EXIT_USAGE
            )
            if peer.name == "listener":
                nobody = ["call", peer.client_url, "-k", "nobody", "x"]
                assert await run(nobody) == EXIT_UNROUTABLE
            os.kill(os.getpid(), signal.SIGTERM)
    out = capsys.readouterr()
    assert codes == [EXIT_OK]
    assert "ping\n" in out.out and '{"n": 1}\n' in out.out
    assert "no meaning on AMQP 1.0" in out.err
