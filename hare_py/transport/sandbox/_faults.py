"""Delivery faults: drop, delay or duplicate deliveries that match a rule.

A fault is checked when the broker hands a message to a consumer, so it acts
on the delivery, not on the publish: a message that waits in a queue is
faulted when it is finally delivered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .._sandbox_common import FaultRule, FaultSet
from ._views import SandboxMessage

__all__ = ["Fault", "FaultAction", "FaultSet"]

FaultAction = Literal["drop", "delay", "duplicate"]


@dataclass(eq=False)
class Fault(FaultRule[SandboxMessage]):
    """One fault rule. ``times=None`` applies it until ``remove()``."""

    action: FaultAction
    queue: str | None = None
    match: Callable[[SandboxMessage], bool] | None = None
    times: int | None = None
    delay: float = 0.0
    hits: int = 0
    _owner: FaultSet[Any] | None = field(default=None, repr=False)

    def applies_to(self, message: SandboxMessage) -> bool:
        if self.queue is not None and message.queue != self.queue:
            return False
        return self.match is None or self.match(message)
