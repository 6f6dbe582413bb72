"""Delivery faults: drop, delay or duplicate deliveries that match a rule.

A fault is checked when the broker hands a message to a consumer, so it acts
on the delivery, not on the publish: a message that waits in a queue is
faulted when it is finally delivered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from ._views import SandboxMessage

__all__ = ["Fault", "FaultAction", "FaultSet"]

FaultAction = Literal["drop", "delay", "duplicate"]


@dataclass(eq=False)
class Fault:
    """One fault rule. ``times=None`` applies it until ``remove()``."""

    action: FaultAction
    queue: str | None = None
    match: Callable[[SandboxMessage], bool] | None = None
    times: int | None = None
    delay: float = 0.0
    hits: int = 0
    _owner: FaultSet | None = field(default=None, repr=False)

    def applies_to(self, message: SandboxMessage) -> bool:
        if self.queue is not None and message.queue != self.queue:
            return False
        return self.match is None or self.match(message)

    @property
    def active(self) -> bool:
        return self._owner is not None and (self.times is None or self.hits < self.times)

    def remove(self) -> None:
        """Stop applying this fault."""
        if self._owner is not None:
            self._owner.discard(self)


class FaultSet:
    """The active faults, checked in the order they were added."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        fault._owner = self
        self._faults.append(fault)
        return fault

    def discard(self, fault: Fault) -> None:
        if fault in self._faults:
            self._faults.remove(fault)
        fault._owner = None

    def clear(self) -> None:
        for fault in list(self._faults):
            self.discard(fault)

    def __iter__(self) -> Iterator[Fault]:
        return iter(list(self._faults))

    def check(self, message: SandboxMessage) -> Fault | None:
        """The first fault that applies to ``message``, counting the hit."""
        for fault in self._faults:
            if fault.applies_to(message):
                fault.hits += 1
                if fault.times is not None and fault.hits >= fault.times:
                    self.discard(fault)
                return fault
        return None
