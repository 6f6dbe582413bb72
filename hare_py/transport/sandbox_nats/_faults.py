"""Delivery faults: drop or delay the messages on a subject.

A fault is checked when the server hands a message to one subscription, so
it acts on that delivery alone: a message fanned out to three subscribers is
three deliveries. A dropped delivery still counts as delivered for
no-responders, as a message lost after the server routed it would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from ..subjects import subject_matches
from ._views import SandboxNatsMessage

__all__ = ["Fault", "FaultAction", "FaultSet"]

FaultAction = Literal["drop", "delay"]


@dataclass(eq=False)
class Fault:
    """One fault rule. ``subject`` may hold wildcards; ``times=None`` applies it until
    ``remove()``."""

    action: FaultAction
    subject: str | None = None
    match: Callable[[SandboxNatsMessage], bool] | None = None
    times: int | None = None
    delay: float = 0.0
    connection: int | None = None  # only deliveries to this connection
    hits: int = 0
    _owner: FaultSet | None = field(default=None, repr=False)

    def applies_to(self, message: SandboxNatsMessage) -> bool:
        if self.connection is not None and message.connection != self.connection:
            return False
        if self.subject is not None and not subject_matches(self.subject, message.subject):
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

    def __bool__(self) -> bool:
        return bool(self._faults)

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

    def check(self, message: SandboxNatsMessage) -> Fault | None:
        """The first fault that applies to ``message``, counting the hit."""
        for fault in self._faults:
            if fault.applies_to(message):
                fault.hits += 1
                if fault.times is not None and fault.hits >= fault.times:
                    self.discard(fault)
                return fault
        return None
