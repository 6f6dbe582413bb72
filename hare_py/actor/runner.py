"""``Behaviour.start(...)``: one actor under its own supervisor, as an async context manager."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from functools import partial
from typing import Any, Generic, TypeAlias, TypeVar

import anyio

from ..errors import ClientStopped, ConfigError, RestartIntensityExceeded
from ..transport.url import BrokerURL
from .actor import Actor, InitRefused
from .backoff import Backoff
from .connection import Connection
from .supervisor import ChildSpec, Supervisor

__all__ = ["ActorRunner", "ConnectionLike", "supervised"]

A = TypeVar("A", bound=Actor[Any])

#: What ``start()`` accepts: a shared ``Connection``, or URL(s) for one of its own.
ConnectionLike: TypeAlias = "Connection | str | BrokerURL | Sequence[str | BrokerURL]"


def supervised(
    build: Callable[[Connection], A],
    conn: ConnectionLike,
    arg: Any,
    *,
    max_restarts: int,
    within: float,
    restart_backoff: Backoff | None,
) -> ActorRunner[A]:
    """The one start path of every behaviour: ``build`` the actor on ``conn`` (a
    ``Connection``, shared and left open, or URLs: then one is opened and closed
    with the block) and run it under its own supervisor."""
    owned: Connection | None
    if isinstance(conn, Connection):
        owned, connection = None, conn
    else:
        owned = connection = Connection(conn)
    return ActorRunner(
        build(connection),
        arg,
        owned_connection=owned,
        max_restarts=max_restarts,
        within=within,
        backoff=restart_backoff,
    )


class ActorRunner(Generic[A]):
    """Runs ``actor`` as a transient child of a one-child supervisor.

    ``__aenter__`` returns the actor once ``init`` has run (OTP's
    ``start_link``); it does not wait for the broker. A normal stop ends the
    actor for good and the block goes on; exceeding the restart intensity
    cancels the block and raises ``RestartIntensityExceeded`` out of it.
    Leaving the block stops the actor (``terminate(reason="shutdown")``) and
    closes the connection if the runner opened it from a URL; a
    ``ConfigError`` that stopped that connection is raised out of the block.
    """

    def __init__(
        self,
        actor: A,
        arg: Any,
        *,
        owned_connection: Connection | None,
        max_restarts: int,
        within: float,
        backoff: Backoff | None,
    ) -> None:
        self.actor = actor
        self._owned = owned_connection
        # Entered and left by the task of the ``async with``, in order.
        self._stack = AsyncExitStack()
        spec = ChildSpec(
            id=actor.name,
            start=partial(actor._run, arg),
            restart="transient",
            shutdown=actor.shutdown_timeout + 1.0,
        )
        self.supervisor = Supervisor(
            [spec],
            max_restarts=max_restarts,
            within=within,
            backoff=backoff,
            name=f"{actor.name}.supervisor",
        )

    async def __aenter__(self) -> A:
        async with AsyncExitStack() as stack:
            if self._owned is not None:
                await stack.enter_async_context(self._owned)
            if self.actor._backstop is not None:  # left after the supervisor: for its callers too
                await stack.enter_async_context(_Beside(self.actor._backstop.run))
            try:
                await stack.enter_async_context(self.supervisor)
            except InitRefused as exc:
                raise ClientStopped(exc.reason, f"{self.actor.name}: {exc}") from None
            except BaseException as exc:
                # init crashed (or the start was cancelled): no incarnation follows.
                self.actor._finish_for_good(exc)
                raise
            self._stack = stack.pop_all()
        return self.actor

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        try:
            return await self._stack.__aexit__(exc_type, exc, tb)
        except (RestartIntensityExceeded, ConfigError) as error:
            if error is not exc:  # the supervisor's or the connection's, not the block's
                self.actor._finish_for_good(error)
            raise
        finally:
            if self.actor._status != "stopped":
                self.actor._finish_for_good("shutdown")


class _Beside:
    """Runs a task beside the block until the block ends, cancelling it then; an
    exception of the block passes through unwrapped (not in an exception group)."""

    def __init__(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._run = run
        self._tg = anyio.create_task_group()

    async def __aenter__(self) -> None:
        await self._tg.__aenter__()
        self._tg.start_soon(self._run)

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        self._tg.cancel_scope.cancel()
        if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
            await self._tg.__aexit__(None, None, None)
            return False
        return await self._tg.__aexit__(exc_type, exc, tb)
