"""The chaos report: one row of recovery figures per fault and backend, from
tests/chaos and tests/chaos_nats alike, printed as one table at the end of the
run (``pytest_terminal_summary`` in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

__all__ = ["ROWS", "write"]

ROWS: list[dict[str, Any]] = []


def write(terminalreporter: Any) -> None:
    """The rows recorded, if any, in a section of their own."""
    if not ROWS:
        return
    terminalreporter.section("chaos: recovery figures")
    for row in ROWS:
        terminalreporter.write_line(" ".join(f"{k}={v}" for k, v in row.items()))
