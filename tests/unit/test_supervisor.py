"""Supervisor: restart types, strategies, intensity, start order and stop order."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus
from structlog.testing import capture_logs

from hare_py import Backoff, ChildSpec, ConfigError, RestartIntensityExceeded, Supervisor

pytestmark = pytest.mark.anyio

FAST = Backoff(initial=0.001, maximum=0.01)


@pytest.fixture
def anyio_backend(fast_clock_backend: object) -> object:
    return fast_clock_backend


class Recorder:
    """Children that log start/stop events and can be told to crash or exit."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.commands: dict[str, list[Any]] = {}

    def child(self, name: str, restart: str = "permanent") -> ChildSpec:
        async def start(*, task_status: TaskStatus[None]) -> Any:
            self.events.append(f"start {name}")
            send, recv = anyio.create_memory_object_stream[Any](10)
            self.commands.setdefault(name, []).append(send)
            task_status.started()
            try:
                with send, recv:  # a child that stopped takes no more commands
                    command = await recv.receive()
            finally:
                self.events.append(f"stop {name}")
            if isinstance(command, BaseException):
                raise command
            return command

        return ChildSpec(name, start, restart=restart)  # type: ignore[arg-type]

    def tell(self, name: str, command: Any) -> None:
        self.commands[name][-1].send_nowait(command)


async def settle() -> None:
    for _ in range(50):
        await anyio.sleep(0.01)


async def test_children_start_in_order_and_stop_in_reverse() -> None:
    """Children start in the order given and are stopped in reverse order."""
    rec = Recorder()
    with anyio.fail_after(5):
        async with Supervisor([rec.child("a"), rec.child("b"), rec.child("c")], backoff=FAST):
            assert rec.events == ["start a", "start b", "start c"]
    assert rec.events[3:] == ["stop c", "stop b", "stop a"]


async def test_one_for_one_restarts_only_the_crashed_child() -> None:
    """one_for_one: a crash restarts that child alone."""
    rec = Recorder()
    with anyio.fail_after(5):
        async with Supervisor([rec.child("a"), rec.child("b")], backoff=FAST) as sup:
            rec.tell("a", RuntimeError("boom"))
            await settle()
            assert rec.events == ["start a", "start b", "stop a", "start a"]
            assert sup.restart_count == 1


async def test_one_for_all_restarts_every_child() -> None:
    """one_for_all: a crash stops the others (reverse order) and restarts all in order."""
    rec = Recorder()
    with anyio.fail_after(5):
        async with Supervisor(
            [rec.child("a"), rec.child("b"), rec.child("c")], strategy="one_for_all", backoff=FAST
        ):
            rec.tell("b", RuntimeError("boom"))
            await settle()
            assert rec.events[3:] == [
                "stop b",
                "stop c",
                "stop a",
                "start a",
                "start b",
                "start c",
            ]


async def test_rest_for_one_restarts_the_child_and_later_ones() -> None:
    """rest_for_one: children started after the crashed one restart with it."""
    rec = Recorder()
    with anyio.fail_after(5):
        async with Supervisor(
            [rec.child("a"), rec.child("b"), rec.child("c")], strategy="rest_for_one", backoff=FAST
        ):
            rec.tell("b", RuntimeError("boom"))
            await settle()
            assert rec.events[3:] == ["stop b", "stop c", "start b", "start c"]


@pytest.mark.parametrize(
    ("restart", "command", "restarted"),
    [
        ("permanent", "normal", True),
        ("transient", "normal", False),
        ("transient", "shutdown", False),
        ("transient", "weird", True),
        ("transient", RuntimeError("x"), True),
        ("temporary", RuntimeError("x"), False),
    ],
)
async def test_restart_types(restart: str, command: Any, restarted: bool) -> None:
    """permanent always, transient only after abnormal exits, temporary never restarts."""
    rec = Recorder()
    with anyio.fail_after(5):
        async with Supervisor([rec.child("a", restart), rec.child("b")], backoff=FAST):
            rec.tell("a", command)
            await settle()
    assert (rec.events.count("start a") == 2) is restarted


async def test_intensity_exceeded_raises_one_clear_error() -> None:
    """More than max_restarts crashes within the window: one RestartIntensityExceeded."""
    rec = Recorder()
    with anyio.fail_after(5):
        with pytest.raises(RestartIntensityExceeded) as info:
            async with Supervisor(
                [rec.child("a"), rec.child("b")], max_restarts=2, within=10, backoff=FAST
            ):
                for i in range(3):
                    rec.tell("a", RuntimeError(f"crash {i}"))
                    await settle()
                await anyio.sleep_forever()
    assert info.value.child == "a"
    assert isinstance(info.value.__cause__, RuntimeError)
    assert str(info.value.__cause__) == "crash 2"
    assert rec.events[-1] == "stop b"  # the survivor is stopped when the supervisor gives up
    assert rec.events.count("start a") == 3


async def test_crashes_spread_over_time_do_not_exceed_intensity() -> None:
    """Restarts older than `within` seconds no longer count."""
    rec = Recorder()
    with anyio.fail_after(30):
        async with Supervisor([rec.child("a")], max_restarts=1, within=0.5, backoff=FAST) as sup:
            for _ in range(4):
                rec.tell("a", RuntimeError("crash"))
                await anyio.sleep(1.0)
            assert sup.restart_count == 4


async def test_run_returns_when_no_child_is_left() -> None:
    """run() ends normally once every child has exited for good."""
    rec = Recorder()
    sup = Supervisor([rec.child("a", "transient")], backoff=FAST)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            rec.tell("a", "normal")
    assert rec.events == ["start a", "stop a"]


async def test_a_child_that_fails_to_start_fails_the_supervisor() -> None:
    """A child crashing before started() makes run() raise that error; earlier ones stop."""
    rec = Recorder()

    async def broken(*, task_status: TaskStatus[None]) -> None:
        raise ValueError("cannot start")

    with anyio.fail_after(5), pytest.raises(ValueError, match="cannot start"):
        async with Supervisor([rec.child("a"), ChildSpec("b", broken)], backoff=FAST):
            pass
    assert rec.events == ["start a", "stop a"]


async def test_restart_waits_a_backoff() -> None:
    """Restarts are spaced by the backoff delay."""
    rec = Recorder()
    backoff = Backoff(initial=0.5, maximum=0.5, jitter=0)
    with anyio.fail_after(10):
        async with Supervisor([rec.child("a")], backoff=backoff, max_restarts=5):
            before = anyio.current_time()
            rec.tell("a", RuntimeError("x"))
            while rec.events.count("start a") < 2:
                await anyio.sleep(0.01)
            assert anyio.current_time() - before >= 0.5


def test_bad_configuration_is_refused() -> None:
    """Unknown strategy, negative intensity and duplicate ids raise ConfigError."""
    rec = Recorder()
    with pytest.raises(ConfigError, match="strategy"):
        Supervisor([], strategy="one_for_some")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_restarts"):
        Supervisor([], max_restarts=-1)
    with pytest.raises(ConfigError, match="unique"):
        Supervisor([rec.child("a"), rec.child("a")])
    with pytest.raises(ConfigError, match="restart type"):
        ChildSpec("x", rec.child("a").start, restart="sometimes")  # type: ignore[arg-type]


class Stubborn:
    """A child whose cleanup, shielded from cancellation, outlasts its shutdown."""

    def __init__(self, events: list[str], cleanup: float) -> None:
        self.events = events
        self.cleanup = cleanup
        self.running = 0
        self.peak = 0

    def spec(self, name: str, shutdown: float) -> ChildSpec:
        async def start(*, task_status: TaskStatus[None]) -> None:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.events.append(f"start {name}")
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(self.cleanup)
                self.running -= 1
                self.events.append(f"end {name}")

        return ChildSpec(name, start, shutdown=shutdown)


async def test_a_child_that_outlives_its_shutdown_never_runs_twice() -> None:
    """A sibling still running past its shutdown is waited for before its restart."""
    rec = Recorder()
    stubborn = Stubborn(rec.events, cleanup=0.6)
    with anyio.fail_after(30):
        async with Supervisor(
            [rec.child("a"), stubborn.spec("b", shutdown=0.2)],
            strategy="one_for_all",
            backoff=FAST,
        ):
            rec.tell("a", RuntimeError("boom"))
            while rec.events.count("start b") < 2:
                await anyio.sleep(0.01)
    assert stubborn.peak == 1
    assert rec.events == [
        "start a",
        "start b",
        "stop a",  # the crash
        "end b",  # late, but before anything restarts
        "start a",
        "start b",
        "stop a",  # leaving the block: b times out, a stops on time
        "end b",
    ]


async def test_shutdown_timeout_moves_on_and_says_when_the_child_ended() -> None:
    """Past its shutdown a child is logged and the others stop on time; its late end is logged."""
    rec = Recorder()
    stubborn = Stubborn(rec.events, cleanup=0.6)
    with anyio.fail_after(30), capture_logs() as logs:
        async with Supervisor([rec.child("a"), stubborn.spec("b", shutdown=0.2)], backoff=FAST):
            pass
    assert rec.events == ["start a", "start b", "stop a", "end b"]
    events = [e["event"] for e in logs if e["event"].startswith("child.")]
    assert events == ["child.shutdown_timeout", "child.stopped_late"]
