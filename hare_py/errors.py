"""Every exception hare_py raises, under one base class.

    HareError                      catch this to catch everything hare_py raises
    ├── ConfigError                a bad value given to hare_py (also a ValueError)
    │   └── UnsendableMessage      one message of a batch cannot be put on the wire
    ├── ConnectionLost             the channel or connection went away under an operation
    │   └── ConnectFailed          no broker could be reached (refused, DNS, TLS, auth)
    ├── BrokerError                the broker refused an operation (reply code and text)
    ├── RequestTimeout             no answer within the request's deadline (also a TimeoutError)
    ├── Unroutable                 a mandatory request matched no queue
    ├── RemoteError                the server answered with an error
    ├── ClientStopped              the client has stopped for good (or never started)
    ├── ClientCrashed              the client's actor crashed while the caller waited
    └── RestartIntensityExceeded   a supervisor gave up restarting a child

Backends translate their own errors into these at the transport boundary and
nowhere else. Messages never contain credentials.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BrokerError",
    "ClientCrashed",
    "ClientStopped",
    "ConfigError",
    "ConnectFailed",
    "ConnectionLost",
    "HareError",
    "RemoteError",
    "RequestTimeout",
    "RestartIntensityExceeded",
    "Unroutable",
    "UnsendableMessage",
]


class HareError(Exception):
    """Base class of every error raised by hare_py."""


class ConfigError(HareError, ValueError):
    """A value given to hare_py is not acceptable; the message names it.

    Fix the call or the configuration: retrying will not help.
    """


class UnsendableMessage(ConfigError):
    """Message ``index`` of a batch cannot be encoded (or exceeds a limit); nothing of
    the batch was sent.

    Raised by ``Channel.basic_publish_many`` before it writes anything, so that
    the caller can fail that one message and send the others.
    """

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"message {index} of the batch cannot be sent: {reason}")
        self.index = index
        self.reason = reason


class ConnectionLost(HareError):
    """The channel or the connection under an operation went away.

    ``code`` and ``text`` are the AMQP reply code and text when the broker gave
    them (``320 CONNECTION_FORCED`` for ``rabbitmqctl close_connection``), else
    ``0`` and a description of the network failure. A request that fails with
    this may or may not have reached the server: retry it only if it is
    idempotent (or mark it ``idempotent=True`` and hare_py will).
    """

    def __init__(self, text: str, *, code: int = 0) -> None:
        super().__init__(f"{text} (code {code})" if code else text)
        self.code = code
        self.text = text


class ConnectFailed(ConnectionLost):
    """No connection could be made (refused, unreachable, TLS or login failure)."""


class BrokerError(HareError):
    """The broker refused an operation, closing the channel with ``code`` and ``text``.

    For example ``404 NOT_FOUND`` for a missing exchange or queue,
    ``406 PRECONDITION_FAILED`` for a redeclaration with other arguments,
    ``405 RESOURCE_LOCKED`` for another connection's exclusive queue.
    """

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


class RequestTimeout(HareError, TimeoutError):
    """No answer arrived within the request's deadline.

    The request may still be processed by the server; its late reply is dropped.
    """


class Unroutable(HareError):
    """The broker returned a mandatory request: no queue is bound for its routing key.

    Usually no server is running, or the routing key or exchange is wrong.
    """

    def __init__(self, exchange: str, routing_key: str, code: int = 312, text: str = "NO_ROUTE"):
        super().__init__(
            f"request to exchange {exchange!r} with routing key {routing_key!r} "
            f"was returned by the broker: {code} {text}"
        )
        self.exchange = exchange
        self.routing_key = routing_key
        self.code = code
        self.text = text


class RemoteError(HareError):
    """The server answered with an error: ``type`` and ``message`` are the remote ones."""

    def __init__(self, type: str, message: str, details: Any = None) -> None:
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message
        self.details = details


class ClientStopped(HareError):
    """The client has stopped for good (or ``init`` refused to start it).

    ``reason`` is the stop reason. Start a new client to go on.
    """

    def __init__(self, reason: Any = "normal", message: str | None = None) -> None:
        super().__init__(message or f"client stopped: {reason!r}")
        self.reason = reason


class ClientCrashed(HareError):
    """The client's actor crashed while this caller waited; its supervisor restarts it.

    The crash is the ``__cause__``. The request may or may not have been sent.
    """


class RestartIntensityExceeded(HareError):
    """A supervisor restarted a child more than ``max_restarts`` times within ``within`` seconds.

    It has stopped every child and given up, as OTP does. The last crash is the
    ``__cause__``; fix it, or raise the intensity if crashes are expected.
    """

    def __init__(self, child: str, max_restarts: int, within: float) -> None:
        super().__init__(
            f"child {child!r} crashed more than {max_restarts} times within {within:g} s; "
            "the supervisor gave up"
        )
        self.child = child
        self.max_restarts = max_restarts
        self.within = within
