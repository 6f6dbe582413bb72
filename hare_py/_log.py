"""structlog loggers for hare_py; the library never configures structlog itself."""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["debug_enabled", "get_logger"]


def get_logger(name: str, **bound: Any) -> Any:
    """A structlog logger named ``name`` with ``bound`` context."""
    return structlog.get_logger(name).bind(**bound) if bound else structlog.get_logger(name)


def debug_enabled(logger: Any) -> bool:
    """Whether ``logger`` passes debug events (True when it cannot tell)."""
    check = getattr(logger, "is_enabled_for", None) or getattr(logger, "isEnabledFor", None)
    return True if check is None else bool(check(logging.DEBUG))
