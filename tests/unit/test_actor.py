"""The actor runtime: call/cast/send, one callback at a time, terminate on every exit."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.lowlevel import checkpoint

from hare_py import (
    Actor,
    Backoff,
    Caller,
    ClientCrashed,
    ClientStopped,
    Ignore,
    NoReply,
    Reply,
    RequestTimeout,
    RestartIntensityExceeded,
    Stop,
)
from hare_py.actor import ActorRunner

pytestmark = pytest.mark.anyio

FAST = Backoff(initial=0.001, maximum=0.01)


def run(actor: Actor[Any], arg: Any = None, max_restarts: int = 3) -> ActorRunner[Any]:
    return ActorRunner(
        actor, arg, owned_connection=None, max_restarts=max_restarts, within=5.0, backoff=FAST
    )


class Counter(Actor[dict[str, Any]]):
    """Counts; answers calls; records terminate and init calls."""

    def __init__(self) -> None:
        super().__init__(name="counter")
        self.inits = 0
        self.terminated: list[Any] = []
        self.active = 0
        self.max_active = 0
        self.held: list[Caller] = []

    async def init(self, arg: Any) -> Any:
        self.inits += 1
        if arg == "ignore":
            return Ignore()
        if arg == "refuse":
            return Stop("no thanks")
        if arg == "explode":
            raise ValueError("init exploded")
        return {"n": 0}

    async def handle_call(self, message: Any, caller: Caller, state: dict[str, Any]) -> Any:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await anyio.sleep(0.001)
            if message == "get":
                return Reply(state["n"], state)
            if message == "hold":
                self.held.append(caller)
                return NoReply(state)
            if message == "crash":
                raise RuntimeError("callback crashed")
            if message == "stop":
                return Stop("normal", state, reply="bye")
            if message == "stop-abnormal":
                return Stop("weird", state)
            if message == "error":
                return Reply(KeyError("nope"), state)
            if message == "bad":
                return "not a result"
            return Reply(None, {"n": state["n"] + message})
        finally:
            self.active -= 1

    async def handle_cast(self, message: Any, state: dict[str, Any]) -> Any:
        if message == "release":
            for caller in self.held:
                self.reply(caller, "released")
            self.held.clear()
            return NoReply(state)
        return NoReply({"n": state["n"] + message})

    async def handle_info(self, message: Any, state: dict[str, Any]) -> Any:
        if message == "stop":
            return Stop("shutdown", state)
        return NoReply({"n": state["n"] * message})

    async def terminate(self, reason: Any, state: dict[str, Any]) -> None:
        self.terminated.append(reason)


async def test_call_cast_and_send_thread_state() -> None:
    """cast → handle_cast, send → handle_info, call → handle_call, all on one state."""
    actor = Counter()
    with anyio.fail_after(5):
        async with run(actor):
            actor.cast(2)
            actor.send(10)
            await actor.call(1)
            assert await actor.call("get") == 21
    assert actor.terminated == ["shutdown"]


async def test_callbacks_never_run_concurrently() -> None:
    """Many concurrent calls are handled one at a time, none lost."""
    actor = Counter()
    with anyio.fail_after(10):
        async with run(actor):
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(actor.call, 1)
            assert await actor.call("get") == 100
    assert actor.max_active == 1


async def test_exception_reply_is_raised_in_caller() -> None:
    """A Reply whose value is an exception is raised in the caller, the actor goes on."""
    actor = Counter()
    with anyio.fail_after(5):
        async with run(actor):
            with pytest.raises(KeyError):
                await actor.call("error")
            assert await actor.call("get") == 0


async def test_no_reply_then_reply_later() -> None:
    """NoReply keeps the caller waiting until reply(caller, value) answers it."""
    actor = Counter()
    results: list[Any] = []
    with anyio.fail_after(5):
        async with run(actor):
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    results.append(await actor.call("hold"))

                tg.start_soon(wait)
                while not actor.held:
                    await anyio.sleep(0.001)
                assert results == []
                actor.cast("release")
    assert results == ["released"]


async def test_call_timeout_leaves_no_held_caller() -> None:
    """A call that times out raises RequestTimeout and leaves nothing held."""
    actor = Counter()
    with anyio.fail_after(5):
        async with run(actor):
            with pytest.raises(RequestTimeout):
                await actor.call("hold", timeout=0.05)
            assert actor._held == set()


async def test_stop_with_reply_ends_for_good() -> None:
    """Stop('normal', reply=...) answers the caller, runs terminate, later calls fail."""
    actor = Counter()
    with anyio.fail_after(5):
        async with run(actor):
            assert await actor.call("stop") == "bye"
            with pytest.raises(ClientStopped):
                await actor.call("get")
            with pytest.raises(ClientStopped):
                actor.cast(1)
    assert actor.terminated == ["normal"]
    assert actor.inits == 1


async def test_stop_from_handle_info_fails_waiting_callers() -> None:
    """A normal Stop answers held callers with ClientStopped."""
    actor = Counter()
    with anyio.fail_after(5):
        async with run(actor):
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    with pytest.raises(ClientStopped):
                        await actor.call("hold")

                tg.start_soon(wait)
                while not actor.held:
                    await anyio.sleep(0.001)
                actor.send("stop")
    assert actor.terminated == ["shutdown"]


async def test_crash_fails_callers_and_restarts_with_init() -> None:
    """A raising callback: held callers get ClientCrashed at once, terminate runs, init again."""
    actor = Counter()
    with anyio.fail_after(5):
        async with run(actor):
            await actor.call(5)
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    with pytest.raises(ClientCrashed) as info:
                        await actor.call("hold")
                    assert isinstance(info.value.__cause__, RuntimeError)

                tg.start_soon(wait)
                while not actor.held:
                    await anyio.sleep(0.001)
                with pytest.raises(ClientCrashed):
                    await actor.call("crash")
            assert await actor.call("get") == 0  # fresh state from init
            assert actor.inits == 2
            assert isinstance(actor.terminated[0], RuntimeError)


async def test_abnormal_stop_restarts() -> None:
    """Stop with a reason other than normal/shutdown restarts the transient actor."""
    actor = Counter()
    with anyio.fail_after(5):
        async with run(actor):
            with pytest.raises(ClientStopped):
                await actor.call("stop-abnormal")
            assert await actor.call("get") == 0
    assert actor.inits == 2
    assert actor.terminated == ["weird", "shutdown"]


async def test_bad_callback_result_is_a_crash_with_a_clear_message() -> None:
    """A callback returning something else crashes with a TypeError naming it."""
    actor = Counter()
    with anyio.fail_after(5):
        async with run(actor):
            with pytest.raises(ClientCrashed) as info:
                await actor.call("bad")
            assert "handle_call returned 'not a result'" in str(info.value.__cause__)


async def test_intensity_exceeded_raises_out_of_the_block() -> None:
    """Crashing more than max_restarts times raises RestartIntensityExceeded from the block."""
    actor = Counter()
    with anyio.fail_after(5):
        with pytest.raises(RestartIntensityExceeded):
            async with run(actor, max_restarts=2):
                for _ in range(3):
                    with pytest.raises(ClientCrashed):
                        await actor.call("crash")
                await anyio.sleep_forever()
    with pytest.raises(ClientStopped):
        await actor.call("get")
    assert actor.inits == 3


async def test_init_ignore_and_refuse() -> None:
    """init → Ignore(): start returns a stopped actor; Stop(reason): start raises ClientStopped."""
    ignored = Counter()
    with anyio.fail_after(5):
        async with run(ignored, "ignore"):
            with pytest.raises(ClientStopped):
                await ignored.call("get")
        assert ignored.terminated == []
        with pytest.raises(ClientStopped, match="no thanks"):
            async with run(Counter(), "refuse"):
                pass
        with pytest.raises(ValueError, match="init exploded"):
            async with run(Counter(), "explode"):
                pass


async def test_terminate_runs_on_cancellation() -> None:
    """Cancelling the block runs terminate('shutdown')."""
    actor = Counter()
    with anyio.move_on_after(0.2):
        async with run(actor):
            await anyio.sleep_forever()
    assert actor.terminated == ["shutdown"]


async def test_user_exception_in_block_propagates_unwrapped() -> None:
    """An error raised in the body of the block comes out as itself, not as a group."""
    actor = Counter()
    with anyio.fail_after(5), pytest.raises(LookupError):
        async with run(actor):
            raise LookupError("mine")
    assert actor.terminated == ["shutdown"]


async def test_stop_returns_after_terminate_has_run() -> None:
    """stop(reason) returns once terminate(reason, state) has run; the actor is then stopped."""
    actor = Counter()
    with anyio.fail_after(5):
        async with run(actor):
            await actor.stop("normal")
            assert actor.terminated == ["normal"]
            assert not actor.running
            await actor.stop()  # stopping a stopped actor is a no-op


class Busy(Actor[int]):
    """Handles casts without ever awaiting: only the loop itself can let others run."""

    def __init__(self) -> None:
        super().__init__(name="busy")
        self.handled = 0

    async def init(self, arg: Any) -> Any:
        return 0

    async def handle_cast(self, message: Any, state: int) -> Any:
        self.handled += 1
        return NoReply(state + 1)

    async def handle_call(self, message: Any, caller: Caller, state: int) -> Any:
        return Reply(state, state)


async def test_a_busy_mailbox_lets_other_tasks_run() -> None:
    """A long burst of messages does not keep every other task waiting until it is done."""
    actor = Busy()
    seen: list[int] = []

    async def watch() -> None:
        for _ in range(10_000):  # bounded: the burst takes far fewer turns
            seen.append(actor.handled)
            if actor.handled >= 500:
                return
            await checkpoint()

    with anyio.fail_after(5):
        async with run(actor), anyio.create_task_group() as tg:
            for _ in range(500):
                actor.cast(1)
            tg.start_soon(watch)
            assert await actor.call("get") == 500
    assert any(0 < n < 500 for n in seen), seen
