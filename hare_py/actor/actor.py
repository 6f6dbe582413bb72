"""The actor: a mailbox, one task, callbacks that never run concurrently.

Rules this module keeps:

- The mailbox belongs to the actor object, not to one incarnation: messages
  sent while a supervisor restarts the actor wait for the next ``init``.
- Only the actor's own task runs callbacks and changes ``_state``; callbacks
  thread the state through their results (``Reply``/``NoReply``/``Stop``).
- ``terminate(reason, state)`` runs on every exit after a successful ``init``:
  a ``Stop``, a crash (reason is the exception) or cancellation (``"shutdown"``).
- When an incarnation ends, every caller it holds is answered at once:
  ``ClientCrashed`` after a crash, ``ClientStopped`` after a stop.
"""

from __future__ import annotations

import asyncio
import math
from asyncio import _get_running_loop
from threading import get_ident
from typing import Any, ClassVar, Generic, NoReturn, TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.lowlevel import checkpoint

from .._clock import clock, now
from .._log import get_logger
from ..errors import ClientCrashed, ClientStopped, ConfigError, RequestTimeout
from .backstop import Backstop
from .caller import Caller
from .mailbox import Mailbox
from .results import (
    NOTHING,
    CallResult,
    Ignore,
    InitResult,
    NoReply,
    NoticeResult,
    Reply,
    Stop,
    is_normal,
)

__all__ = ["Actor", "InitRefused", "check_timeout"]

S = TypeVar("S")
log = get_logger("hare_py.actor")

#: A busy loop lets other tasks run every 32 handled messages (a multiple of 8).
_YIELD_MASK = 31


class InitRefused(Exception):
    """``init`` returned ``Stop(reason)``: the actor refuses to start."""

    def __init__(self, reason: Any) -> None:
        super().__init__(f"init refused to start: {reason!r}")
        self.reason = reason


class _StopSignal(Exception):
    """Raised inside the loop to end it with ``reason``."""

    def __init__(self, reason: Any) -> None:
        self.reason = reason


class _Call:
    __slots__ = ("caller", "message")

    def __init__(self, message: Any, caller: Caller) -> None:
        self.message = message
        self.caller = caller


class _Cast:
    __slots__ = ("message",)

    def __init__(self, message: Any) -> None:
        self.message = message


class _Info:
    __slots__ = ("message",)

    def __init__(self, message: Any) -> None:
        self.message = message


class _StopRequest:
    __slots__ = ("caller", "reason")

    def __init__(self, reason: Any, caller: Caller) -> None:
        self.reason = reason
        self.caller = caller


def check_timeout(timeout: float, what: str = "timeout") -> float:
    """Validate a timeout in seconds (``math.inf`` allowed)."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigError(f"{what} must be a number of seconds, got {timeout!r:.60}")
    if timeout != timeout or timeout <= 0:  # NaN, or not positive
        raise ConfigError(f"{what} must be positive (or math.inf), got {timeout!r:.60}")
    try:
        return float(timeout)
    except OverflowError:  # an int beyond any float: as good as forever
        return math.inf


class Actor(Generic[S]):
    """Base of hare_py's behaviours: override the callbacks, use the methods.

    Callbacks (all ``async``, all optional):

    - ``init(arg)`` -> state, ``Ignore()`` or ``Stop(reason)``.
    - ``handle_call(message, caller, state)`` -> ``Reply``, ``NoReply`` or ``Stop``.
    - ``handle_cast(message, state)`` and ``handle_info(message, state)`` ->
      ``NoReply`` or ``Stop``.
    - ``terminate(reason, state)``: clean up; its result is ignored.

    A callback that raises crashes the actor; its supervisor restarts it.
    """

    #: Grace given to ``terminate`` when the actor is cancelled.
    shutdown_timeout: float = 5.0
    _kind: ClassVar[str] = "actor"

    def __init__(self, *, name: str | None = None) -> None:
        self.name = name or type(self).__name__
        # Opened by the first incarnation (_run), so that an actor never started,
        # or whose constructor fails, leaves no stream to close.
        self._mailbox_open = False
        self._state: Any = None
        # "new" -> "running" <-> "restarting" -> "stopped" (for good, with _stop_reason)
        self._status = "new"
        self._stop_reason: Any = None
        self._held: set[Caller] = set()  # callers given NoReply, answered later by reply()
        self._current: Any = None  # the message being handled
        self._stopper: Caller | None = None  # the caller of stop(), if any
        # Gives up on callers of a stuck actor (a behaviour whose callers need it).
        self._backstop: Backstop | None = None
        # Where the actor runs: its mailbox and callers are not thread-safe.
        self._thread: int | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None  # None on trio
        self._now = now  # the loop's clock once an incarnation runs: read per request
        self._log = log.bind(actor=self.name)
        self._handlers: dict[type, Any] = {
            _Call: self._on_call,
            _Cast: self._on_cast,
            _Info: self._on_info,
            _StopRequest: self._on_stop_request,
        }

    # -- callbacks ---------------------------------------------------------------

    async def init(self, arg: Any) -> InitResult[S]:
        """Build the initial state from ``arg`` (default: ``arg`` itself)."""
        state: S = arg
        return state

    async def handle_call(self, message: Any, caller: Caller, state: S) -> CallResult[S]:
        """Answer ``call(message)``. Default: the caller gets ``NotImplementedError``."""
        return Reply(
            NotImplementedError(f"{type(self).__name__}.handle_call is not implemented"), state
        )

    async def handle_cast(self, message: Any, state: S) -> NoticeResult[S]:
        """Handle ``cast(message)``. Default: log and ignore."""
        self._log.warning("actor.unhandled_cast", message=repr(message)[:200])
        return NoReply(state)

    async def handle_info(self, message: Any, state: S) -> NoticeResult[S]:
        """Handle ``send(message)``. Default: log and ignore."""
        self._log.warning("actor.unhandled_info", message=repr(message)[:200])
        return NoReply(state)

    async def terminate(self, reason: Any, state: S) -> None:
        """Called once when the actor ends, with the reason and the last state."""

    # -- API, usable from any task ------------------------------------------------

    @property
    def running(self) -> bool:
        """True while an incarnation is running (between ``init`` and ``terminate``)."""
        return self._status == "running"

    def send(self, message: Any) -> None:
        """Deliver ``message`` to ``handle_info``."""
        self._post(_Info(message))

    def cast(self, message: Any) -> None:
        """Deliver ``message`` to ``handle_cast``; returns at once."""
        self._post(_Cast(message))

    async def call(self, message: Any, *, timeout: float = 5.0) -> Any:
        """Deliver ``message`` to ``handle_call`` and wait for its reply.

        Raises ``RequestTimeout`` after ``timeout`` seconds, ``ClientStopped``
        if the actor is stopped, ``ClientCrashed`` if it crashed meanwhile; a
        reply that is an exception instance is raised.
        """
        timeout = check_timeout(timeout)
        caller = Caller(now() + timeout)
        self._post(_Call(message, caller))
        return await self._await_caller(caller, f"call {message!r:.100}")

    async def stop(self, reason: Any = "normal", *, timeout: float = 5.0) -> None:
        """Stop the actor with ``reason`` (``terminate`` runs) and wait until it has."""
        if self._status == "stopped":
            return
        caller = Caller(now() + check_timeout(timeout))
        self._post(_StopRequest(reason, caller))
        await self._await_caller(caller, "stop")

    def reply(self, caller: Caller, value: Any) -> None:
        """Answer a caller that a callback held with ``NoReply``.

        An exception instance as ``value`` is raised in the caller. Answering
        twice, or after the caller gave up, does nothing.
        """
        self._forget(caller)
        caller.resolve(value)

    # -- the runtime --------------------------------------------------------------

    def _post(self, message: Any) -> None:
        if self._status in ("running", "restarting"):
            loop = self._event_loop
            # One loop runs on a thread at a time: on the actor's thread, with its loop
            # running, this is its loop (without asking asyncio, a getpid() on 3.11).
            if get_ident() != self._thread or (loop is not None and not loop.is_running()):
                self._wrong_thread()
            self._send.send_nowait(message)
        elif self._status == "new":
            raise ClientStopped("not started", f"{self.name} is not running: use start()")
        else:
            raise ClientStopped(self._stop_reason)

    async def _await_caller(self, caller: Caller, what: str) -> Any:
        try:
            await caller.wait(caller.deadline)
        finally:
            if not caller.done:  # timed out or cancelled: leave no trace
                self._forget(caller)
                caller.give_up()
        if caller.gave_up:
            raise RequestTimeout(f"{what} got no reply from {self.name} in time")
        value = caller.value
        if isinstance(value, BaseException):
            raise value
        return value

    def _wrong_thread(self) -> NoReturn:
        here = _get_running_loop()
        raise ConfigError(
            f"{self.name} runs on the event loop of thread {self._thread}, but was used from "
            f"thread {get_ident()}{' (another event loop)' if here is not None else ''}; an "
            "actor is not thread-safe: call it from its own loop, for example through "
            "anyio.from_thread.run() from a worker thread that loop started"
        )

    def _forget(self, caller: Caller) -> None:
        """Drop every trace of ``caller`` (it was answered or gave up)."""
        self._held.discard(caller)

    async def _run(self, arg: Any, *, task_status: TaskStatus[None]) -> Any:
        """Run one incarnation: ``init``, the loop, ``terminate``. Returns the exit reason.

        Raises the crash (an exception from a callback) for the supervisor to see.
        """
        if not self._mailbox_open:  # stopped for good before: a permanent child restarts
            self._open_mailbox()
        self._status = "restarting"
        self._thread, self._event_loop = get_ident(), _get_running_loop()
        self._now = clock()
        result = await self.init(arg)
        if isinstance(result, Ignore):
            self._log.info("actor.ignored")
            self._finish_for_good("ignore")
            task_status.started()
            return "normal"
        if isinstance(result, Stop):
            self._finish_for_good(result.reason)
            raise InitRefused(result.reason)
        self._state = result
        self._status = "running"
        self._log.info("actor.started")
        reason: Any = "shutdown"
        crash: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                await self._on_start(tg)
                task_status.started()
                try:
                    reason = await self._loop()
                except Exception as exc:
                    crash = exc
                tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._end("shutdown", None)
            raise
        except BaseExceptionGroup as group:  # a helper task failed: a crash too
            crash = group.exceptions[0] if len(group.exceptions) == 1 else group
        with anyio.CancelScope(shield=True):
            await self._end(reason, crash)
        if crash is not None:
            raise crash
        return reason

    async def _end(self, reason: Any, crash: BaseException | None) -> None:
        """Run ``terminate`` and answer every caller this incarnation held."""
        final = crash if crash is not None else reason
        with anyio.move_on_after(self.shutdown_timeout) as scope:
            try:
                await self.terminate(final, self._state)
            except Exception as exc:
                self._log.error("actor.terminate_failed", error=repr(exc))
        if scope.cancelled_caught:
            self._log.error("actor.terminate_timeout", seconds=self.shutdown_timeout)
        stopper, self._stopper = self._stopper, None
        if stopper is not None:
            stopper.resolve(None)
        if crash is not None:
            self._log.error("actor.crashed", error=repr(crash), exc_info=crash)
            self._status = "restarting"

            def error() -> BaseException:
                exc = ClientCrashed(f"{self.name} crashed: {crash!r}")
                exc.__cause__ = crash
                return exc

            self._fail_held(error)
        elif is_normal(reason):
            self._log.info("actor.stopped", reason=reason)
            self._finish_for_good(reason)
        else:
            self._log.warning("actor.stopped", reason=repr(reason))
            self._status = "restarting"
            self._fail_held(lambda: ClientStopped(reason))

    def _finish_for_good(self, reason: Any) -> None:
        """No incarnation will follow: fail the held callers and the mailbox."""
        self._status = "stopped"
        self._stop_reason = reason
        self._fail_held(lambda: ClientStopped(reason))
        self._drain_mailbox(reason)

    def _open_mailbox(self) -> None:
        self._send = self._recv = Mailbox()
        self._mailbox_open = True

    def _enqueue(self, message: Any) -> None:
        """Put ``message`` in the mailbox; dropped once the actor has stopped for good
        (a late delivery from a closing channel, say)."""
        if self._mailbox_open:
            self._send.send_nowait(message)

    def _drain_mailbox(self, reason: Any) -> None:
        """Answer every caller still in the mailbox, then close it."""
        while self._mailbox_open:
            try:
                message = self._recv.receive_nowait()
            except anyio.WouldBlock:
                self._mailbox_open = False
                self._send.close()
                self._recv.close()
                return
            caller = getattr(message, "caller", None)
            if isinstance(caller, Caller):
                if isinstance(message, _StopRequest):
                    caller.resolve(None)
                else:
                    caller.resolve(ClientStopped(reason))

    def _hold(self, caller: Caller) -> None:
        """Keep ``caller`` waiting for ``reply()``."""
        self._held.add(caller)

    def _fail_held(self, error: Any) -> None:
        """Answer every caller this incarnation held with ``error()``, and the
        caller of the message being handled when it ended."""
        current, self._current = self._current, None
        caller = getattr(current, "caller", None)
        if isinstance(caller, Caller):
            caller.resolve(error())
        held, self._held = self._held, set()
        for caller in held:
            caller.resolve(error())

    async def _on_start(self, tg: TaskGroup) -> None:
        """Start helper tasks of the incarnation (subclasses)."""

    async def _on_idle(self) -> bool:
        """Work deferred until the mailbox is empty (subclasses); True if any was done."""
        return False

    def _next_deadline(self) -> float:
        """When the loop must wake up for timers (subclasses)."""
        return math.inf

    async def _on_timers(self, now: float) -> None:
        """Handle timers due at ``now`` (subclasses)."""

    async def _loop(self) -> Any:
        recv = self._recv
        handlers = self._handlers
        current_time = self._now  # read per message: keep it cheap
        handled = 0
        try:
            while True:
                try:
                    message = recv.receive_nowait()
                except anyio.WouldBlock:
                    if await self._on_idle():
                        continue  # it awaited: messages may have arrived meanwhile
                    deadline = self._next_deadline()
                    if deadline == math.inf:
                        message = await recv.receive()
                    else:
                        message = None
                        with anyio.CancelScope(deadline=deadline):
                            message = await recv.receive()
                        if message is None:
                            await self._on_timers(current_time())
                            continue
                self._current = message
                # A handler is a coroutine function, or a plain one that returns None
                # or what is left to await: the common message costs no coroutine.
                pending = handlers[type(message)](message)
                if pending is not None:
                    await pending
                handled += 1
                if not handled & 7:
                    # A busy mailbox must not starve the timers; every few messages is enough.
                    if self._next_deadline() <= current_time():
                        await self._on_timers(current_time())
                    if not handled & _YIELD_MASK:
                        # Nor the other tasks: the callers and the transport's reader and
                        # writer run meanwhile, so bursts pipeline instead of ping-ponging.
                        await checkpoint()
        except _StopSignal as signal:
            return signal.reason

    def _apply(self, result: Any, callback: str, caller: Caller | None = None) -> None:
        """Carry out a callback's result; raise ``_StopSignal`` on ``Stop``."""
        kind = type(result)
        if kind is NoReply:
            self._state = result.state
            if caller is not None and not caller.done:
                self._hold(caller)
        elif kind is Reply and caller is not None:
            self._state = result.state
            self._forget(caller)
            caller.resolve(result.value)
        elif kind is Stop:
            if result.state is not None:
                self._state = result.state
            if caller is not None:
                self._forget(caller)
                if result.reply is not NOTHING:
                    caller.resolve(result.reply)
                else:
                    caller.resolve(ClientStopped(result.reason))
            raise _StopSignal(result.reason)
        else:
            allowed = "Reply, NoReply or Stop" if caller is not None else "NoReply or Stop"
            raise TypeError(
                f"{type(self).__name__}.{callback} returned {result!r}; expected {allowed}"
            )

    async def _on_call(self, message: _Call) -> None:
        if message.caller.done:
            return
        result = await self.handle_call(message.message, message.caller, self._state)
        self._apply(result, "handle_call", message.caller)

    async def _on_cast(self, message: _Cast) -> None:
        self._apply(await self.handle_cast(message.message, self._state), "handle_cast")

    async def _on_info(self, message: _Info) -> None:
        self._apply(await self.handle_info(message.message, self._state), "handle_info")

    async def _on_stop_request(self, message: _StopRequest) -> None:
        self._stopper = message.caller  # answered once terminate has run
        self._current = None
        raise _StopSignal(message.reason)
