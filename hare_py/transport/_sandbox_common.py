"""What the in-memory brokers share: ``sandbox`` (AMQP 0-9-1) and ``sandbox_nats``.

Each keeps its own model, views and rules; this module holds only the parts
that are the same logic in both:

- ``Registry``: the process-wide brokers of one kind, by name, that a URL's
  host reaches;
- ``SandboxBrokerBase``: the backdoor every sandbox broker has (history,
  scripted connects, outages, delivery faults) and the routing of model
  events to the backend's connections;
- ``FaultRule`` and ``FaultSet``: delivery faults, checked in order, each
  counting its hits;
- ``serve_connection``: a backend connection's task group, with errors
  raised outside it.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

import anyio
from anyio.abc import TaskGroup

from ..errors import ConfigError, ConnectFailed

__all__ = [
    "FaultRule",
    "FaultSet",
    "Registry",
    "SandboxBrokerBase",
    "Script",
    "serve_connection",
]

Script = Exception | None
B = TypeVar("B")
C = TypeVar("C")
EventT = TypeVar("EventT")
MessageT = TypeVar("MessageT", contravariant=True)
FaultT = TypeVar("FaultT", bound="FaultRule[Any]")


class Registry(Generic[B]):
    """The brokers of one kind by name; ``kind`` names them in errors."""

    def __init__(self, kind: str, prefix: str, factory: str) -> None:
        self._brokers: dict[str, B] = {}
        self._numbers = itertools.count(1)
        self._kind = kind
        self._prefix = prefix
        self._factory = factory

    def claim(self, name: str | None) -> str:
        """``name``, or a fresh one if None; ``ConfigError`` if it is taken."""
        if name is None:
            name = f"{self._prefix}-{next(self._numbers)}-{secrets.token_hex(3)}"
        if name in self._brokers:
            raise ConfigError(f"a {self._kind} named {name!r} is already registered")
        return name

    def add(self, name: str, broker: B) -> None:
        self._brokers[name] = broker

    def remove(self, name: str, broker: B) -> None:
        if self._brokers.get(name) is broker:
            del self._brokers[name]

    def lookup(self, name: str) -> B:
        """The registered broker called ``name``; ``ConnectFailed`` if there is none."""
        broker = self._brokers.get(name)
        if broker is None:
            known = ", ".join(sorted(self._brokers)) or "none"
            raise ConnectFailed(
                f"no {self._kind} named {name!r} (registered: {known}); create one with "
                f"hare_py.testing.{self._factory}() and connect to its .url"
            )
        return broker


# -- delivery faults ------------------------------------------------------------------


class FaultRule(Generic[MessageT]):
    """What every fault rule has, whatever it matches: ``times`` (None: until
    ``remove()``), its ``hits`` so far and the set it is in."""

    times: int | None
    hits: int
    _owner: FaultSet[Any] | None

    def applies_to(self, message: MessageT) -> bool:
        raise NotImplementedError

    @property
    def active(self) -> bool:
        return self._owner is not None and (self.times is None or self.hits < self.times)

    def remove(self) -> None:
        """Stop applying this fault."""
        if self._owner is not None:
            self._owner.discard(self)


class FaultSet(Generic[FaultT]):
    """The active faults, checked in the order they were added."""

    def __init__(self) -> None:
        self._faults: list[FaultT] = []

    def __bool__(self) -> bool:
        return bool(self._faults)

    def add(self, fault: FaultT) -> FaultT:
        fault._owner = self
        self._faults.append(fault)
        return fault

    def discard(self, fault: FaultT) -> None:
        if fault in self._faults:
            self._faults.remove(fault)
        fault._owner = None

    def clear(self) -> None:
        for fault in list(self._faults):
            self.discard(fault)

    def __iter__(self) -> Iterator[FaultT]:
        return iter(list(self._faults))

    def check(self, message: Any) -> FaultT | None:
        """The first fault that applies to ``message``, counting the hit."""
        for fault in self._faults:
            if fault.applies_to(message):
                fault.hits += 1
                if fault.times is not None and fault.hits >= fault.times:
                    self.discard(fault)
                return fault
        return None


# -- the broker -----------------------------------------------------------------------


class RecordedOp(Protocol):
    """A recorded operation, as ``ops()`` filters it."""

    @property
    def name(self) -> str: ...

    @property
    def args(self) -> Mapping[str, Any]: ...


OpT = TypeVar("OpT", bound=RecordedOp)


class Model(Protocol[OpT, FaultT]):
    """What the backdoor needs of a sans-I/O broker model."""

    history: list[OpT]
    faults: FaultSet[FaultT]

    def open_connection(self, name: str | None = None) -> int: ...

    def record(self, op: OpT) -> None: ...


class SandboxBrokerBase(Generic[OpT, FaultT, EventT]):
    """A named in-memory broker with a backdoor; a subclass brings the model.

    A subclass claims its name from ``_registry`` first, checks its settings,
    then calls this, which registers it; ``close()`` or the end of a ``with``
    block unregisters it.
    """

    _registry: ClassVar[Registry[Any]]
    _scheme: ClassVar[str]
    _closed_text: ClassVar[str]  # what its connections are told on close()
    _model: Model[OpT, FaultT]

    def __init__(self, name: str, model: Model[OpT, FaultT]) -> None:
        self.name = name
        self._model = model
        self._sinks: dict[int, Callable[[EventT], None]] = {}
        self._connect_script: deque[Script] = deque()
        self._down = False
        self._registry.add(name, self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def url(self) -> str:
        """The URL that reaches this broker: ``sandbox://NAME`` or ``sandbox+nats://NAME``."""
        return f"{self._scheme}://{self.name}"

    def close(self) -> None:
        """Unregister the broker and close its connections."""
        self.kill_all_connections(text=self._closed_text)
        self._registry.remove(self.name, self)

    def kill_all_connections(self, *, text: str) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- used by the backend -----------------------------------------------------

    def _route_event(self, connection: int, event: EventT) -> None:
        sink = self._sinks.get(connection)
        if sink is not None:
            sink(event)

    def _refusal(self) -> Exception | None:
        """Why a connect is refused now (not scripted), or None."""
        raise NotImplementedError

    def _failed_connect(self, name: str | None, failure: Exception) -> OpT:
        raise NotImplementedError

    def accept_connection(self, name: str | None, sink: Callable[[EventT], None]) -> int:
        """Open a connection for the backend, or raise ``ConnectFailed`` (or the script's)."""
        failure = self._connect_script.popleft() if self._connect_script else None
        if failure is None:
            failure = self._refusal()
        if failure is not None:
            self._model.record(self._failed_connect(name, failure))
            raise failure
        connection = self._model.open_connection(name)
        self._sinks[connection] = sink
        return connection

    def detach(self, connection: int) -> None:
        """Stop routing events to a connection that has gone."""
        self._sinks.pop(connection, None)

    # -- history -----------------------------------------------------------------

    @property
    def history(self) -> list[OpT]:
        """Every recorded operation, oldest first."""
        return list(self._model.history)

    def ops(self, name: str | None = None, **args: Any) -> list[OpT]:
        """Recorded operations named ``name`` whose arguments include ``args``."""
        return [
            op
            for op in self._model.history
            if (name is None or op.name == name)
            and all(k in op.args and op.args[k] == v for k, v in args.items())
        ]

    def clear_history(self) -> None:
        """Forget the recorded operations."""
        self._model.history.clear()

    # -- scripted results and outages ---------------------------------------------------

    def script_connect(self, *results: Script) -> None:
        """Queue results for the next connects: an exception to raise, or None to succeed."""
        self._connect_script.extend(results)

    @property
    def is_up(self) -> bool:
        """False between ``down()`` and ``up()``."""
        return not self._down

    # -- delivery faults ---------------------------------------------------------------------

    def _add_fault(self, fault: FaultT) -> FaultT:
        if fault.times is not None and fault.times < 1:
            raise ConfigError(f"times must be at least 1 (or None for always), got {fault.times}")
        return self._model.faults.add(fault)

    @staticmethod
    def _check_delay(seconds: float) -> None:
        if seconds < 0:
            raise ConfigError(f"delay must not be negative, got {seconds}")

    @property
    def faults(self) -> list[FaultT]:
        """The active delivery faults."""
        return list(self._model.faults)

    def clear_faults(self, faults: Iterable[FaultT] | None = None) -> None:
        """Remove the given faults, or all of them."""
        if faults is None:
            self._model.faults.clear()
        else:
            for fault in faults:
                fault.remove()


# -- the backend ----------------------------------------------------------------------


@asynccontextmanager
async def serve_connection(
    open_: Callable[[TaskGroup], C], finish: Callable[[C], Awaitable[None]]
) -> AsyncIterator[C]:
    """A connection in a task group of its own: ``open_(tg)`` makes it, and
    ``finish(conn)`` ends it when the ``async with`` block ends, before the
    group is cancelled.

    Errors (from ``open_``, such as ``ConnectFailed`` or a scripted one, or
    from the block) are raised outside the task group, so that they are not
    wrapped in an ExceptionGroup.
    """
    body_error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        try:
            conn = open_(tg)
        except Exception as exc:
            body_error = exc
        else:
            try:
                yield conn
            except BaseException as exc:
                body_error = exc
            finally:
                try:
                    await finish(conn)
                finally:
                    tg.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
