"""aiormq, pamqp and OS exceptions -> ``hare_py.errors``, at this boundary only.

Rules this module keeps:

- The most specific hare_py exception wins: a broker refusal with a reply code
  is a ``BrokerError``; a channel or connection that went away under an
  operation is ``ConnectionLost`` (with the broker's code when it gave one); a
  connection that could not be made is ``ConnectFailed``.
- No text from an exception that may hold the broker URL's password leaves
  this module; callers pass connect errors through ``_amqp_common.scrub``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import aiormq.connection
from aiormq import exceptions as ax

from ...errors import BrokerError, ConfigError, ConnectFailed, ConnectionLost, HareError
from ..base import ACCESS_REFUSED, NOT_ALLOWED, CloseReason
from ._frames import FrameRefused

__all__ = ["REPLY_OF_CLASS", "connect_error", "operation_error", "reply_of"]

NOT_IMPLEMENTED = 540

# aiormq keeps the reply code only in the class for these channel and
# connection close codes; everything else is ChannelClosed/ConnectionClosed(code, text).
REPLY_OF_CLASS: Mapping[type[ax.AMQPError], int] = {
    ax.ChannelAccessRefused: 403,
    ax.ChannelNotFoundEntity: 404,
    ax.ChannelLockedResource: 405,
    ax.ChannelPreconditionFailed: 406,
    **{cls: code for code, cls in aiormq.connection.EXCEPTION_MAPPING.items()},
}


def reply_of(exc: BaseException) -> tuple[int, str] | None:
    """The AMQP reply code and text of a channel or connection close, if ``exc`` is one."""
    if isinstance(exc, ax.DuplicateConsumerTag):
        return None
    for cls, code in REPLY_OF_CLASS.items():
        if type(exc) is cls:
            return code, str(exc.args[0]) if exc.args else cls.__name__
    if isinstance(exc, (ax.ChannelClosed, ax.ConnectionClosed)) and len(exc.args) >= 2:
        code, text = exc.args[0], exc.args[1]
        if isinstance(code, int):
            return code, str(text or "")
    return None


def _text(exc: BaseException) -> str:
    """A short description of an aiormq or OS error (no URL: aiormq never puts one in)."""
    args = exc.args
    if isinstance(exc, OSError) and len(args) == 2 and isinstance(args[0], int):
        # (errno, message), also as re-wrapped by aiormq; asyncio's message
        # ("Connect call failed ...") does not say what failed.
        errno, message = args[0], str(args[1])
        meaning = os.strerror(errno) if errno > 0 else ""
        return f"{meaning}: {message}" if meaning and meaning not in message else message
    if args and isinstance(args[0], str):
        return args[0]
    return type(exc).__name__


def connect_error(exc: BaseException, where: str) -> HareError:
    """The error for a failed connection attempt to ``where`` (a redacted URL)."""
    if isinstance(exc, ax.ProbableAuthenticationError):
        reason = _text(exc)
        return ConnectFailed(f"{where} refused the login: {reason}", code=ACCESS_REFUSED)
    if isinstance(exc, ax.AuthenticationError):
        return ConnectFailed(f"{where}: no common authentication mechanism", code=ACCESS_REFUSED)
    reply = reply_of(exc)
    if reply is not None:
        code, text = reply
        return ConnectFailed(f"{where} refused the connection: {text}", code=code)
    if isinstance(exc, ax.InvalidFrameError) and "Connection.Close" in str(exc):
        # aiormq reports the connection.close answering connection.open as an
        # unexpected frame and drops its reply; RabbitMQ sends 530 NOT_ALLOWED
        # for a virtual host that does not exist or that the user may not use.
        return ConnectFailed(
            f"{where} refused to open the virtual host (missing, or no access)", code=NOT_ALLOWED
        )
    if isinstance(exc, TimeoutError):
        return ConnectFailed(f"{where} did not answer in time")
    if isinstance(exc, (OSError, ax.AMQPError, EOFError)):
        return ConnectFailed(f"cannot connect to {where}: {_text(exc)}")
    if isinstance(exc, (ValueError, TypeError)):
        return ConfigError(f"cannot connect to {where}: {_text(exc)}")
    return ConnectFailed(f"cannot connect to {where}: {type(exc).__name__}")


def operation_error(exc: BaseException, closed: CloseReason | None) -> HareError | None:
    """The error for a failed channel operation, or ``None`` to let ``exc`` propagate.

    ``closed`` is the channel's close reason when it is already known.
    """
    if isinstance(exc, HareError):
        return exc
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return None  # a real cancellation of the caller
        # aiormq rejects pending operations of a closed connection this way.
        return _lost("the connection closed under the operation", closed)
    if isinstance(exc, ax.DuplicateConsumerTag):
        return BrokerError(NOT_ALLOWED, "NOT_ALLOWED - attempt to reuse consumer tag")
    if isinstance(exc, ax.MethodNotImplemented):
        return BrokerError(NOT_IMPLEMENTED, "NOT_IMPLEMENTED - not supported by the broker")
    if isinstance(exc, ax.DeliveryError):
        return BrokerError(0, "basic.nack: the broker did not take the message")
    if isinstance(exc, FrameRefused):
        return ConnectionLost(exc.text, code=exc.code)
    if isinstance(exc, ax.ChannelInvalidStateError):
        return _lost("the channel is closed", closed)
    reply = reply_of(exc)
    if reply is not None:
        code, text = reply
        if isinstance(exc, ax.ChannelClosed) and code:
            return BrokerError(code, text)
        return ConnectionLost(text or "the connection closed", code=code)
    if isinstance(exc, ax.ChannelClosed):  # ChannelClosed(None, None): closed by us
        return _lost("the channel is closed", closed)
    if isinstance(exc, (OSError, ax.AMQPError, EOFError)):
        return ConnectionLost(_text(exc))
    if isinstance(exc, (ValueError, TypeError)):
        return ConfigError(_text(exc))
    if type(exc) is Exception and not exc.args:
        # aiormq's FutureStore.reject_all(None) fails pending writes of a
        # connection that closed without a reason with a bare Exception.
        return _lost("the connection closed under the operation", closed)
    return None


def _lost(text: str, closed: CloseReason | None) -> ConnectionLost:
    if closed is None:
        return ConnectionLost(text)
    return ConnectionLost(f"{text}: {closed}", code=closed.code)
