"""The aiormq backend's exception translation, without a broker."""

from __future__ import annotations

from hare_py import ConfigError, ConnectionLost
from hare_py.transport.aiormq_backend._errors import operation_error
from hare_py.transport.aiormq_backend._frames import FrameRefused
from hare_py.transport.base import CloseReason


def test_bare_exception_from_a_closing_connection_is_connection_lost() -> None:
    """aiormq fails pending writes with a bare Exception on close: that is ConnectionLost."""
    error = operation_error(Exception(), CloseReason(320, "CONNECTION_FORCED", "connection"))
    assert isinstance(error, ConnectionLost)
    assert error.code == 320


def test_other_exceptions_keep_their_meaning() -> None:
    """A bare Exception with a message is not guessed at; bad values are ConfigError."""
    assert operation_error(Exception("a bug"), None) is None
    assert isinstance(operation_error(ValueError("bad"), None), ConfigError)


def test_a_refused_frame_is_connection_lost_with_its_code() -> None:
    """A frame the guard refused fails pending operations with ConnectionLost and its code."""
    error = operation_error(FrameRefused(501, "a frame over frame_max"), None)
    assert isinstance(error, ConnectionLost)
    assert (error.code, error.text) == (501, "a frame over frame_max")
