"""Logging what a flood sends without flooding the log.

A hostile or broken peer can send a client a million unknown replies, or a
server a million malformed requests. Each is dropped at once; the log gets
the first few of every window in full, and one summary of the rest.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from .._clock import now

__all__ = ["WINDOW", "DropLog"]

#: Seconds of each window: its first drops are logged in full.
WINDOW = 10.0


class DropLog:
    """Logs ``event`` for the first ``burst`` drops of each ``window`` seconds.

    The drops past ``burst`` are counted, by reason, and reported as one
    ``<event>_suppressed`` event when the window ends: the actor calls
    ``flush()`` at ``due``.
    """

    __slots__ = ("_burst", "_ends", "_event", "_level", "_log", "_logged", "_reasons", "_window")

    def __init__(
        self,
        log: Any,
        event: str,
        *,
        level: str = "info",
        burst: int = 10,
        window: float | None = None,
    ) -> None:
        self._log = log
        self._event = event
        self._level = level
        self._burst = burst
        self._window = WINDOW if window is None else window
        self._ends = -1.0
        self._logged = 0
        self._reasons: Counter[str] = Counter()

    def drop(self, reason: str, **fields: Any) -> None:
        """Note one drop: logged in full while the window's burst lasts, else counted."""
        t = now()
        if t >= self._ends:
            self.flush(t)
            self._ends = t + self._window
        if self._logged < self._burst:
            self._logged += 1
            getattr(self._log, self._level)(self._event, reason=reason, **fields)
        else:
            self._reasons[reason] += 1

    @property
    def pending(self) -> bool:
        """True while some drops are counted but not reported."""
        return bool(self._reasons)

    @property
    def due(self) -> float:
        """When ``flush()`` has a summary to report (loop time; inf: nothing to report)."""
        return self._ends if self._reasons else math.inf

    def flush(self, t: float | None = None) -> None:
        """Report the counted drops if the window is over (``t`` is the loop time)."""
        if t is None:
            t = now()
        if t < self._ends:
            return
        self._logged = 0
        if self._reasons:
            reasons, self._reasons = dict(self._reasons), Counter()
            getattr(self._log, self._level)(
                f"{self._event}_suppressed",
                count=sum(reasons.values()),
                reasons=reasons,
                window_s=self._window,
            )
