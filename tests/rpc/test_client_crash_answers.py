"""Crashes and what the next incarnation sees.

A crash in a callback that decides a caller's answer (handle_response,
handle_return, handle_timeout) answers that caller with ClientCrashed at once,
as a crash in handle_request does; it does not leave it to wait for its
deadline. And a crashed incarnation's channel, whose ChannelUp may still wait
in the mailbox (which outlives incarnations), is not taken by the next one."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from hare_py import Caller, ClientCrashed, ConnectedMeta, Forward, NoReply, Returned, RPCClient
from hare_py.actor.backoff import Backoff
from hare_py.testing import SandboxBroker
from hare_py.transport.base import Delivery

from .echo import echo_server

pytestmark = pytest.mark.anyio

FAST = Backoff(initial=0.01, maximum=0.05)


class Crashing(RPCClient[None]):
    """Raises in the callback named by ``crash_in`` for the request ``b"victim"`` (once),
    then behaves."""

    crash_in = ""

    def _crash(self, callback: str, caller: Caller) -> None:
        if self.crash_in == callback and caller.request.payload == b"victim":
            self.crash_in = ""
            raise RuntimeError(f"injected crash in {callback}")

    async def handle_response(self, response: Any, caller: Caller, state: None) -> Any:
        self._crash("handle_response", caller)
        return await super().handle_response(response, caller, state)

    async def handle_return(self, returned: Returned, caller: Caller, state: None) -> Any:
        self._crash("handle_return", caller)
        return await super().handle_return(returned, caller, state)

    async def handle_timeout(self, caller: Caller, state: None) -> Any:
        self._crash("handle_timeout", caller)
        return await super().handle_timeout(caller, state)


async def never(delivery: Delivery) -> bytes | None:
    await anyio.sleep_forever()
    return None


@pytest.mark.parametrize(
    ("callback", "routing_key", "timeout"),
    [
        ("handle_response", "echo", 30.0),
        ("handle_return", "nobody.serves.this", 30.0),
        ("handle_timeout", "slow", 1.0),
    ],
)
async def test_the_caller_of_a_crashed_answer_gets_client_crashed_at_once(
    broker: SandboxBroker, callback: str, routing_key: str, timeout: float
) -> None:
    """A crash deciding a caller's answer gives it ClientCrashed before its deadline."""
    async with (
        echo_server(broker.url),
        echo_server(broker.url, routing_keys=("slow",), handler=never),
        Crashing.start(broker.url, timeout=timeout, restart_backoff=FAST) as client,
    ):
        with anyio.fail_after(10):
            while not client.connected:
                await anyio.sleep(0.01)
            client.crash_in = callback
            began = anyio.current_time()
            ended: list[float] = []

            async def victim() -> None:
                with pytest.raises(ClientCrashed):
                    await client.request(b"victim", routing_key)
                ended.append(anyio.current_time())

            async with anyio.create_task_group() as tg:
                tg.start_soon(victim)
                if callback == "handle_timeout":
                    # A call answered meanwhile: the timer's crash then comes after
                    # another caller's message, not the victim's.
                    assert await client.request(b"meanwhile", "echo") == b"meanwhile"
            # Not the deadline's backstop (timeout + deadline_grace): the crash answered it.
            assert ended[0] - began < timeout + client.deadline_grace / 2
            while not client.connected:
                await anyio.sleep(0.01)
            assert await client.request(b"after", "echo") == b"after"
            assert client.pending == 0


class SlowCrash(RPCClient[None]):
    """``b"slow-crash"`` crashes handle_request after a pause, long enough for the channel
    to open and its ChannelUp to wait in the mailbox behind it; ``connected_to`` lists the
    reply queues handle_connected was given, over every incarnation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connected_to: list[str] = []

    async def handle_connected(self, meta: ConnectedMeta, state: None) -> Any:
        self.connected_to.append(meta.reply_queue)
        return NoReply(state)

    async def handle_request(self, request: Any, caller: Caller, state: None) -> Any:
        if request.payload == b"slow-crash":
            await anyio.sleep(0.2)
            raise RuntimeError("injected crash in handle_request")
        return Forward(state)


async def test_a_crashed_incarnations_channel_is_not_taken_by_the_next(
    broker: SandboxBroker,
) -> None:
    """A crashed incarnation's ChannelUp left in the mailbox is ignored by the next one."""
    async with (
        echo_server(broker.url),
        SlowCrash.start(broker.url, timeout=5, restart_backoff=FAST) as client,
    ):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def crash() -> None:
                    with pytest.raises(ClientCrashed):
                        await client.request(b"slow-crash", "echo")

                tg.start_soon(crash)
                await anyio.sleep(0.1)  # the channel opened meanwhile; the crash is to come
                assert client.pending == 0 and not client.connected
                # Queued behind the old ChannelUp: it must wait for the new channel.
                assert await client.request(b"victim", "echo") == b"victim"
            assert client.connected_to == [client.reply_queue]  # its own channel only
