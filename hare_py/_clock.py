"""``now()``: the event loop's clock, as ``anyio.current_time()`` reads it, but cheaper.

anyio looks the running async library up (through sniffio) on every call; on
the request path that lookup cost more than everything else the clock does.
``clock()`` is the running loop's own clock function, for code that reads the
time often on one loop: it skips even the lookup of the running loop (on
Python 3.11 a system call).
"""

from __future__ import annotations

import sys
from asyncio import _get_running_loop
from collections.abc import Callable

import anyio

__all__ = ["clock", "now"]


def now() -> float:
    """Seconds on the running loop's clock (asyncio's ``loop.time()``, trio's clock)."""
    loop = _get_running_loop()
    if loop is not None:
        return loop.time()
    trio = sys.modules.get("trio")
    if trio is not None:
        return float(trio.current_time())
    return anyio.current_time()


def clock() -> Callable[[], float]:
    """The running loop's clock, as a function that reads it (``now`` outside a loop)."""
    loop = _get_running_loop()
    if loop is not None:
        return loop.time
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.current_time()
        except RuntimeError:  # trio is loaded, but this is not a trio task
            return now
        current_time: Callable[[], float] = trio.current_time
        return current_time
    return now
