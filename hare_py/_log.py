"""hare_py's loggers: structlog bound loggers over stdlib loggers named ``hare_py.*``.

The rules this module keeps (docs/logging.md is the user's side of them):

- The library never configures logging: no ``structlog.configure``, no handler,
  no level. Those belong to the application.
- Every event goes to ``logging.getLogger(name)``, whose level decides. The
  level is checked before the event dict is built, so a filtered-out event
  costs one call and the stdlib's cached ``isEnabledFor``.
- Nothing is written to stdout. With nothing configured, the stdlib's last
  resort prints WARNING and up to stderr, as ``event key=value ...``.
- A record's ``msg`` is the event dict (an :class:`Event`, which prints as
  ``event key=value ...``), with ``_logger`` and ``_name`` set as structlog's
  ``ProcessorFormatter.wrap_for_formatter`` sets them, so a ``ProcessorFormatter``
  renders hare_py's events like the application's own structlog events. Each
  field whose name is not a ``LogRecord`` attribute is also set on the record,
  for ``%(field)s`` formats and JSON formatters.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["Event", "Logger", "console_handler", "debug_enabled", "get_logger"]

_METHODS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}
# Names makeRecord refuses in ``extra``: such fields stay in the msg dict only.
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _text(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"'=" for c in value):
        return value
    return repr(value)


class Event(dict[str, Any]):
    """An event dict that prints as ``event key=value ...``: the ``msg`` of hare_py's records."""

    __slots__ = ()

    def __str__(self) -> str:
        fields = " ".join(
            f"{key}={_text(value)}" for key, value in self.items() if key not in _NOT_SHOWN
        )
        event = str(self.get("event"))
        return f"{event} {fields}" if fields else event


_NOT_SHOWN = frozenset({"event", "exc_info"})  # the traceback is the formatter's to print


class Logger(structlog.BoundLoggerBase):
    """A structlog bound logger that hands its events to a stdlib logger.

    ``bind``, ``unbind`` and ``new`` work as in structlog; ``debug`` ...
    ``critical``, ``exception`` and ``log`` take an event name and fields.
    """

    _logger: logging.Logger

    def is_enabled_for(self, level: int) -> bool:
        """Whether an event at ``level`` would be handled (the stdlib's answer)."""
        return self._logger.isEnabledFor(level)

    def debug(self, event: str, **fields: Any) -> None:
        if self._logger.isEnabledFor(logging.DEBUG):
            self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        if self._logger.isEnabledFor(logging.INFO):
            self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        if self._logger.isEnabledFor(logging.WARNING):
            self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        if self._logger.isEnabledFor(logging.ERROR):
            self._emit(logging.ERROR, event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        if self._logger.isEnabledFor(logging.CRITICAL):
            self._emit(logging.CRITICAL, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the exception being handled (``exc_info=True`` unless given)."""
        if self._logger.isEnabledFor(logging.ERROR):
            fields.setdefault("exc_info", True)
            self._emit(logging.ERROR, event, fields)

    def log(self, level: int, event: str, **fields: Any) -> None:
        if self._logger.isEnabledFor(level):
            self._emit(level, event, fields)

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        # Always called straight from one of the methods above: two frames up is
        # the call site, which the record names (not this wrapper).
        record_dict = Event(event=event, **fields)
        for key, value in self._context.items():
            record_dict.setdefault(key, value)
        exc_info = record_dict.pop("exc_info", None)
        if exc_info is True:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if not exc_info or exc_info[0] is None:
            exc_info = None
        else:
            record_dict["exc_info"] = exc_info  # for ProcessorFormatter chains
        extra = {key: value for key, value in record_dict.items() if key not in _RESERVED}
        extra["_logger"] = self._logger
        extra["_name"] = _METHODS.get(level) or logging.getLevelName(level).lower()
        frame = sys._getframe(2)
        code = frame.f_code
        logger = self._logger
        record = logger.makeRecord(
            logger.name,
            level,
            code.co_filename,
            frame.f_lineno,
            record_dict,
            (),
            exc_info,
            code.co_name,
            extra,
        )
        logger.handle(record)


def get_logger(name: str, /, **bound: Any) -> Logger:
    """The logger for ``logging.getLogger(name)`` (a ``hare_py.*`` name), with ``bound``
    context."""
    return Logger(logging.getLogger(name), (), dict(bound))


def debug_enabled(logger: Any) -> bool:
    """Whether ``logger`` passes debug events: cheap, so callers can skip building one.

    For hare_py's loggers it is the stdlib level; True for a logger it cannot ask.
    """
    if isinstance(logger, Logger):
        return logger._logger.isEnabledFor(logging.DEBUG)
    check = getattr(logger, "is_enabled_for", None) or getattr(logger, "isEnabledFor", None)
    return True if check is None else bool(check(logging.DEBUG))


def console_handler(
    stream: Any, *, colors: bool = False, timestamps: str = "%H:%M:%S"
) -> logging.Handler:
    """A handler that prints hare_py's records as structlog's console renderer does.

    For applications (the demo, the CLI); the library itself installs nothing.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.stdlib.add_log_level,
                structlog.processors.TimeStamper(fmt=timestamps),
                structlog.dev.ConsoleRenderer(colors=colors),
            ],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.processors.TimeStamper(fmt=timestamps),
            ],
        )
    )
    return handler
