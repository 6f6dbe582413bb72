"""``now()``: the event loop's clock, as ``anyio.current_time()`` reads it, but cheaper.

anyio looks the running async library up (through sniffio) on every call; on
the request path that lookup cost more than everything else the clock does.
"""

from __future__ import annotations

import sys
from asyncio import _get_running_loop

import anyio

__all__ = ["now"]


def now() -> float:
    """Seconds on the running loop's clock (asyncio's ``loop.time()``, trio's clock)."""
    loop = _get_running_loop()
    if loop is not None:
        return loop.time()
    trio = sys.modules.get("trio")
    if trio is not None:
        return float(trio.current_time())
    return anyio.current_time()
