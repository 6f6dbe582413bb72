"""structlog loggers for hare_py; the library never configures structlog itself."""

from __future__ import annotations

from typing import Any

import structlog

__all__ = ["get_logger"]


def get_logger(name: str, **bound: Any) -> Any:
    """A structlog logger named ``name`` with ``bound`` context."""
    return structlog.get_logger(name).bind(**bound) if bound else structlog.get_logger(name)
