"""An OTP supervisor on anyio: start children in order, restart them, stop them in reverse.

Vocabulary (as in Erlang/Elixir):

- a child is ``permanent`` (always restarted), ``transient`` (restarted only
  after an abnormal exit: a crash or a reason other than ``"normal"`` /
  ``"shutdown"``) or ``temporary`` (never restarted);
- ``one_for_one`` restarts the child that exited, ``one_for_all`` every child,
  ``rest_for_one`` the child and those started after it;
- more than ``max_restarts`` restarts within ``within`` seconds make the
  supervisor stop every child and raise ``RestartIntensityExceeded`` (with the
  last crash as ``__cause__``), never a bare ``ExceptionGroup``.

A child is an async function ``start(*, task_status)`` that calls
``task_status.started()`` once it is ready (the ``start_link`` handshake) and
returns its exit reason, or raises to crash. Restarts wait an exponential
backoff with jitter.

Stopping a child cancels its scope and waits ``ChildSpec.shutdown`` seconds.
OTP then kills the child; anyio cannot kill a task, and a task group cannot
be left while one of its tasks runs. So a child still running after its
shutdown (one that shields its cleanup, blocks the event loop, waits on a
thread, or swallows cancellation in a loop) is logged as
``child.shutdown_timeout``, the remaining children are stopped on time, and
the supervisor then waits for it (``child.stopped_late`` when it ends)
before it starts that child again or returns. Two incarnations of one child
never run at once.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._log import get_logger
from ..errors import ConfigError, RestartIntensityExceeded
from .backoff import Backoff
from .results import is_normal

__all__ = ["ChildSpec", "Restart", "Strategy", "Supervisor"]

Restart = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
log = get_logger("hare_py.supervisor")


class ChildStart(Protocol):
    def __call__(self, *, task_status: TaskStatus[None]) -> Awaitable[Any]: ...


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start one child and when to restart it."""

    id: str
    start: ChildStart | Callable[..., Awaitable[Any]]
    restart: Restart = "permanent"
    #: Seconds to wait for the child after cancelling it before stopping the
    #: next one; a child that is still running then is waited for later (see
    #: the module docstring): anyio cannot kill it.
    shutdown: float = 5.0

    def __post_init__(self) -> None:
        if self.restart not in ("permanent", "transient", "temporary"):
            raise ConfigError(f"child {self.id!r}: unknown restart type {self.restart!r}")
        if not self.shutdown > 0:
            raise ConfigError(f"child {self.id!r}: shutdown must be > 0, got {self.shutdown!r}")


class _StartFailed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _ForwardStatus:
    """Passes the child's ``started()`` on to the supervisor's ``tg.start``."""

    __slots__ = ("_inner", "started_")

    def __init__(self, inner: TaskStatus[Any]) -> None:
        self._inner = inner
        self.started_ = False

    def started(self, value: Any = None) -> None:
        if not self.started_:
            self.started_ = True
            self._inner.started(None)


class _Child:
    def __init__(self, spec: ChildSpec, index: int) -> None:
        self.spec = spec
        self.index = index
        self.scope: anyio.CancelScope | None = None
        self.done = anyio.Event()
        self.running = False
        self.stopping = False
        self.overdue_since: float | None = None  # when its shutdown ran out
        self.generation = 0


# What the inbox carries: a child, its generation, its exit reason and its crash.
_Outcome = tuple[_Child, int, Any, BaseException | None]


class Supervisor:
    """Runs children under a restart strategy; see the module docstring.

    Use ``await supervisor.run()`` (returns when no child is left to run) or
    ``async with supervisor:`` (children run in the background; leaving the
    block stops them in reverse order). Either raises
    ``RestartIntensityExceeded`` when it gives up.
    """

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        within: float = 5.0,
        backoff: Backoff | None = None,
        name: str = "supervisor",
    ) -> None:
        if strategy not in ("one_for_one", "one_for_all", "rest_for_one"):
            raise ConfigError(f"unknown supervisor strategy {strategy!r}")
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ConfigError(f"max_restarts must be an integer >= 0, got {max_restarts!r}")
        if not (isinstance(within, int | float) and within > 0):
            raise ConfigError(f"within must be a positive number of seconds, got {within!r}")
        ids = [c.id for c in children]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"child ids must be unique, got {ids!r}")
        self.name = name
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.within = float(within)
        self.backoff = backoff or Backoff(initial=0.05, maximum=2.0)
        self._children = [_Child(spec, i) for i, spec in enumerate(children)]
        self._restarts: deque[float] = deque()
        self.restart_count = 0
        self._tg: TaskGroup | None = None
        # Made by run(), which closes it: a supervisor never run leaves nothing open.
        self._inbox_send: MemoryObjectSendStream[_Outcome]
        self._inbox_recv: MemoryObjectReceiveStream[_Outcome]
        self._log = log.bind(supervisor=name)
        self._runner: _Running | None = None

    def which_children(self) -> list[tuple[str, bool]]:
        """``(id, running)`` for every child, in start order."""
        return [(c.spec.id, c.running) for c in self._children]

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the children in order, supervise them, and stop them in reverse.

        ``task_status.started()`` is called once every child has started. If a
        child fails to start, the ones already started are stopped and its
        error is raised.
        """
        fatal: BaseException | None = None
        self._inbox_send, self._inbox_recv = anyio.create_memory_object_stream[_Outcome](math.inf)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    for child in self._children:
                        await self._start_child(child, first=True)
                    task_status.started()
                    self._log.info("supervisor.started", children=len(self._children))
                    await self._supervise()
                except (RestartIntensityExceeded, _InitialStartFailed) as exc:
                    fatal = exc
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._stop_children(self._children)
                tg.cancel_scope.cancel()
        finally:
            self._tg = None
            self._inbox_send.close()
            self._inbox_recv.close()
        if isinstance(fatal, _InitialStartFailed):
            raise fatal.error
        if fatal is not None:
            raise fatal

    async def __aenter__(self) -> Supervisor:
        self._runner = _Running(self)
        await self._runner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._runner is not None
        runner, self._runner = self._runner, None
        return await runner.__aexit__(*exc_info)

    async def _start_child(self, child: _Child, *, first: bool = False) -> bool:
        """Start ``child``; False (and a crash in the inbox) if its start failed."""
        assert self._tg is not None
        await self._wait_gone([child])
        child.generation += 1
        child.done = anyio.Event()
        child.stopping = False
        outcome = await self._tg.start(self._child_main, child, child.generation)
        if isinstance(outcome, _StartFailed):
            if first:
                self._log.error(
                    "child.start_failed", child=child.spec.id, error=repr(outcome.error)
                )
                raise _InitialStartFailed(outcome.error)
            self._inbox_send.send_nowait((child, child.generation, None, outcome.error))
            return False
        return True

    async def _child_main(
        self, child: _Child, generation: int, *, task_status: TaskStatus[Any]
    ) -> None:
        status = _ForwardStatus(task_status)
        reason: Any = "shutdown"
        error: BaseException | None = None
        child.running = True
        try:
            # Shielded: only the supervisor stops a child, in reverse start order,
            # even when the supervisor itself is being cancelled.
            with anyio.CancelScope(shield=True) as scope:
                child.scope = scope
                try:
                    reason = await child.spec.start(task_status=status)
                except Exception as exc:
                    if not status.started_:
                        task_status.started(_StartFailed(exc))
                        return
                    error = exc
        finally:
            child.running = False
            child.done.set()
            if child.overdue_since is not None:
                late = anyio.current_time() - child.overdue_since
                child.overdue_since = None
                self._log.warning(
                    "child.stopped_late", child=child.spec.id, seconds_late=round(late, 3)
                )
        if not status.started_:
            task_status.started(None)  # returned without calling started(): it ran and ended
        if not child.stopping:
            self._inbox_send.send_nowait((child, generation, reason, error))

    async def _supervise(self) -> None:
        async for child, generation, reason, error in self._inbox_recv:
            if generation != child.generation or child.stopping:
                continue
            restart = child.spec.restart
            abnormal = error is not None or not is_normal(reason)
            if restart == "permanent" or (restart == "transient" and abnormal):
                await self._restart(child, reason, error)
            else:
                self._log.info("child.exited", child=child.spec.id, reason=repr(reason))
            if (
                not any(c.running for c in self._children)
                and self._inbox_recv.statistics().current_buffer_used == 0
            ):
                self._log.info("supervisor.stopped", reason="no children left")
                return

    async def _restart(self, child: _Child, reason: Any, error: BaseException | None) -> None:
        now = anyio.current_time()
        self._restarts.append(now)
        while self._restarts and self._restarts[0] <= now - self.within:
            self._restarts.popleft()
        if len(self._restarts) > self.max_restarts:
            self._log.error(
                "supervisor.gave_up",
                child=child.spec.id,
                max_restarts=self.max_restarts,
                within=self.within,
                error=repr(error) if error else repr(reason),
            )
            exc = RestartIntensityExceeded(child.spec.id, self.max_restarts, self.within)
            exc.__cause__ = error
            raise exc
        if self.strategy == "one_for_one":
            group = [child]
        elif self.strategy == "one_for_all":
            group = list(self._children)
        else:
            group = self._children[child.index :]
        await self._stop_children([c for c in group if c is not child])
        await self._wait_gone(group)
        delay = self.backoff.delay(len(self._restarts) - 1)
        self.restart_count += 1
        self._log.warning(
            "child.restarting",
            child=child.spec.id,
            reason=repr(error) if error else repr(reason),
            delay=round(delay, 3),
            strategy=self.strategy,
        )
        await anyio.sleep(delay)
        for member in group:
            if not await self._start_child(member):
                return  # its crash is in the inbox and counts as another restart

    async def _stop_children(self, children: Sequence[_Child]) -> None:
        """Cancel children in reverse start order, waiting up to ``shutdown`` for each."""
        for child in reversed(children):
            if not child.running:
                continue
            child.stopping = True
            if child.scope is not None:
                child.scope.cancel()
            with anyio.move_on_after(child.spec.shutdown):
                await child.done.wait()
            if child.running:
                # It cannot be killed: stop the others on time, wait for it later.
                child.overdue_since = anyio.current_time()
                self._log.error(
                    "child.shutdown_timeout",
                    child=child.spec.id,
                    shutdown=child.spec.shutdown,
                    detail="still running after its scope was cancelled; it cannot be killed, "
                    "so the supervisor waits for it to return",
                )

    async def _wait_gone(self, children: Sequence[_Child]) -> None:
        """Wait for children still running past their shutdown: a new incarnation
        beside an old one would share its resources (an actor's mailbox, a queue)."""
        for child in children:
            if child.running:
                await child.done.wait()


class _InitialStartFailed(Exception):
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Running:
    """``async with supervisor``: run it in the background of the block."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.error: BaseException | None = None
        self._tg = anyio.create_task_group()

    async def __aenter__(self) -> None:
        await self._tg.__aenter__()
        try:
            await self._tg.start(self._main)
        except BaseException:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            raise

    async def _main(self, *, task_status: TaskStatus[None]) -> None:
        try:
            await self.supervisor.run(task_status=task_status)
        except RestartIntensityExceeded as exc:
            self.error = exc
            self._tg.cancel_scope.cancel()  # interrupts the body of the block

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        self._tg.cancel_scope.cancel()
        if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
            # A user's exception from the block: let it through unwrapped.
            await self._tg.__aexit__(None, None, None)
            return False
        suppressed = await self._tg.__aexit__(exc_type, exc, tb)
        if self.error is not None:
            raise self.error
        return suppressed
