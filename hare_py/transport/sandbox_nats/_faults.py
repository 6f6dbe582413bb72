"""Delivery faults: drop or delay the messages on a subject.

A fault is checked when the server hands a message to one subscription, so
it acts on that delivery alone: a message fanned out to three subscribers is
three deliveries. A dropped delivery still counts as delivered for
no-responders, as a message lost after the server routed it would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .._sandbox_common import FaultRule, FaultSet
from ..subjects import subject_matches
from ._views import SandboxNatsMessage

__all__ = ["Fault", "FaultAction", "FaultSet"]

FaultAction = Literal["drop", "delay"]


@dataclass(eq=False)
class Fault(FaultRule[SandboxNatsMessage]):
    """One fault rule. ``subject`` may hold wildcards; ``times=None`` applies it until
    ``remove()``."""

    action: FaultAction
    subject: str | None = None
    match: Callable[[SandboxNatsMessage], bool] | None = None
    times: int | None = None
    delay: float = 0.0
    connection: int | None = None  # only deliveries to this connection
    hits: int = 0
    _owner: FaultSet[Any] | None = field(default=None, repr=False)

    def applies_to(self, message: SandboxNatsMessage) -> bool:
        if self.connection is not None and message.connection != self.connection:
            return False
        if self.subject is not None and not subject_matches(self.subject, message.subject):
            return False
        return self.match is None or self.match(message)
