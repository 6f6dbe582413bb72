"""``Behaviour.start(...)``: one actor under its own supervisor, as an async context manager."""

from __future__ import annotations

from functools import partial
from typing import Any, Generic, TypeVar

from ..errors import ClientStopped, RestartIntensityExceeded
from .actor import Actor, InitRefused
from .backoff import Backoff
from .connection import Connection
from .supervisor import ChildSpec, Supervisor

__all__ = ["ActorRunner"]

A = TypeVar("A", bound=Actor[Any])


class ActorRunner(Generic[A]):
    """Runs ``actor`` as a transient child of a one-child supervisor.

    ``__aenter__`` returns the actor once ``init`` has run (OTP's
    ``start_link``); it does not wait for the broker. A normal stop ends the
    actor for good and the block goes on; exceeding the restart intensity
    cancels the block and raises ``RestartIntensityExceeded`` out of it.
    Leaving the block stops the actor (``terminate(reason="shutdown")``) and
    closes the connection if the runner opened it from a URL.
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
        if self._owned is not None:
            await self._owned.__aenter__()
        try:
            await self.supervisor.__aenter__()
        except InitRefused as exc:
            await self._close_connection()
            raise ClientStopped(exc.reason, f"{self.actor.name}: {exc}") from None
        except BaseException:
            await self._close_connection()
            raise
        return self.actor

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        try:
            return await self.supervisor.__aexit__(exc_type, exc, tb)
        except RestartIntensityExceeded as error:
            self.actor._finish_for_good(error)
            raise
        finally:
            if self.actor._status != "stopped":
                self.actor._finish_for_good("shutdown")
            await self._close_connection()

    async def _close_connection(self) -> None:
        if self._owned is not None:
            await self._owned.aclose()
