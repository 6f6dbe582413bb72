"""Exponential backoff with jitter, shared by supervisors and reconnects."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before attempt ``n`` (0-based): ``initial * multiplier**n``, capped at ``maximum``.

    ``jitter`` is the fraction of each delay that is randomised (0.5 means a
    delay falls in ``[d/2, d]``), so that many clients do not retry in step.
    """

    initial: float = 0.1
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (self.initial >= 0 and self.maximum >= self.initial):
            raise ConfigError(
                f"backoff needs 0 <= initial <= maximum, got initial={self.initial!r} "
                f"maximum={self.maximum!r}"
            )
        if self.multiplier < 1:
            raise ConfigError(f"backoff multiplier must be >= 1, got {self.multiplier!r}")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"backoff jitter must be within [0, 1], got {self.jitter!r}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt``."""
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        return base * (1 - self.jitter * random.random())
