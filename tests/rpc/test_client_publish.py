"""RPCClient's batch publish: nothing is sent twice, a bad message fails alone.

The sandbox channel's ``basic_publish_many`` is scripted here to fail the way
a backend can: refusing one message before writing anything
(``UnsendableMessage``), or failing after some of the batch may have left
(``ConnectionLost``, ``BrokerError``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio
import pytest

from hare_py import (
    BrokerError,
    ConnectionLost,
    RPCClient,
    UnsendableMessage,
)
from hare_py.testing import SandboxBroker
from hare_py.transport.base import Message
from hare_py.transport.sandbox._backend import SandboxChannel

from .echo import echo_server

pytestmark = pytest.mark.anyio

Script = Callable[[Sequence[Message]], Exception | None]


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> list[Script]:
    """Steps run on each ``basic_publish_many``, first to last; one step per call."""
    steps: list[Script] = []
    original = SandboxChannel.basic_publish_many

    async def scripted(self: SandboxChannel, messages: Sequence[Message], **kw: Any) -> None:
        step = steps.pop(0) if steps else None
        error = step(messages) if step is not None else None
        if isinstance(error, UnsendableMessage):
            raise error  # before anything is written
        if error is not None:  # after the first message went out
            await original(self, messages[:1], **kw)
            raise error
        await original(self, messages, **kw)

    monkeypatch.setattr(SandboxChannel, "basic_publish_many", scripted)
    return steps


async def _burst(client: RPCClient[Any], payloads: list[bytes], **kw: Any) -> list[Any]:
    """Start every request before the client runs, so that they leave in one batch."""
    results: list[Any] = [None] * len(payloads)

    async def one(i: int) -> None:
        try:
            results[i] = await client.request(payloads[i], "echo", **kw)
        except Exception as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(len(payloads)):
            tg.start_soon(one, i)
    return results


async def test_an_unsendable_message_fails_alone_and_the_rest_go_once(
    broker: SandboxBroker, script: list[Script]
) -> None:
    """The message a backend refuses fails with its error; the others are each sent once."""

    def refuse_b(messages: Sequence[Message]) -> Exception | None:
        bodies = [m.body for m in messages]
        if b"b" not in bodies:
            script.append(refuse_b)  # not in this batch: wait for the one that has it
            return None
        return UnsendableMessage(bodies.index(b"b"), "too large")

    script.append(refuse_b)
    with anyio.fail_after(5):
        async with echo_server(broker.url) as server, RPCClient.start(broker.url) as client:
            await _wait_connected(client)
            results = await _burst(client, [b"a", b"b", b"c"])
    assert results[0] == b"a" and results[2] == b"c"
    assert isinstance(results[1], UnsendableMessage)
    assert sorted(d.body for d in server.received) == [b"a", b"c"]


async def test_a_connection_lost_mid_batch_sends_nothing_twice(
    broker: SandboxBroker, script: list[Script]
) -> None:
    """After an ambiguous publish failure the batch fails with ConnectionLost, unsent again."""
    script.append(lambda messages: ConnectionLost("socket closed mid-write"))
    with anyio.fail_after(5):
        async with echo_server(broker.url) as server, RPCClient.start(broker.url) as client:
            await _wait_connected(client)
            results = await _burst(client, [b"a", b"b", b"c"], timeout=2)
            await anyio.sleep(0.2)  # a resend, if any, would arrive meanwhile
    assert all(isinstance(r, ConnectionLost) for r in results), results
    assert len(server.received) == 1  # the one that left before the failure, once


async def test_idempotent_requests_are_republished_after_an_ambiguous_failure(
    broker: SandboxBroker, script: list[Script]
) -> None:
    """Idempotent requests caught in a failed publish are sent again and answered."""

    def lose(messages: Sequence[Message]) -> Exception:
        return ConnectionLost("socket closed mid-write")

    script.append(lose)
    with anyio.fail_after(5):
        async with echo_server(broker.url) as server, RPCClient.start(broker.url) as client:
            await _wait_connected(client)
            results = await _burst(client, [b"a", b"b"], idempotent=True, timeout=3)
    assert results == [b"a", b"b"]
    # The one that left before the failure arrives twice, as idempotent allows.
    assert len(server.received) == 3
    assert {d.body for d in server.received} == {b"a", b"b"}


async def test_a_refusal_after_writing_fails_the_batch_without_resending(
    broker: SandboxBroker, script: list[Script]
) -> None:
    """A BrokerError after the write began fails every request of the batch, none resent."""
    script.append(lambda messages: BrokerError(406, "PRECONDITION_FAILED"))
    with anyio.fail_after(5):
        async with echo_server(broker.url) as server, RPCClient.start(broker.url) as client:
            await _wait_connected(client)
            results = await _burst(client, [b"a", b"b"], timeout=2)
            after = await client.request(b"c", "echo")
    assert all(isinstance(r, BrokerError) for r in results), results
    assert after == b"c"
    bodies = [d.body for d in server.received]
    assert len(bodies) == 2 and bodies[0] in (b"a", b"b") and bodies[1] == b"c"


async def _wait_connected(client: RPCClient[Any]) -> None:
    with anyio.fail_after(2):
        while not client.connected:
            await anyio.sleep(0.001)
