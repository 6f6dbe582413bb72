"""AMQP 0-9-1 on asyncio through aiormq: the backend for ``amqp://`` and ``amqps://``.

aiormq runs on asyncio only; ``hare_py.transport.backend_for`` refuses these
schemes on trio with a ``ConfigError`` (an anyio-native AMQP backend is a
separate piece of work).

URL query parameters: ``heartbeat=SECONDS`` overrides ``ConnectOptions.heartbeat``,
``name=`` is the connection name when ``ConnectOptions.name`` is unset,
``auth=plain|external`` picks the login mechanism (``auth=amqplain`` is a
``ConfigError`` here: the anyio backend has it), and ``max_body_size=BYTES``
overrides ``ConnectOptions.max_body_size``. TLS settings come
from ``ConnectOptions.tls`` only and apply to ``amqps://``; verification is on
unless ``TLSOptions(verify=False)``.

Exceptions are translated at this boundary (``_errors``):

    aiormq / pamqp / OS                      hare_py
    ChannelNotFoundEntity (404), ...         BrokerError(code, text): the broker's channel.close
      (also a confirm cut short by it)
    DeliveryError (basic.nack)               BrokerError(0, "basic.nack ...")
    ChannelInvalidStateError                 ConnectionLost(text, code of the channel's close)
    CancelledError rejecting a pending call  ConnectionLost (the caller itself was not cancelled)
    ConnectionClosed (320 forced, ...)       ConnectionLost(text, code=...)
    AMQPConnectionError, OSError, EOF        ConnectionLost (ConnectFailed while connecting)
    a frame the FrameGuard refuses           ConnectionLost(text, code=501 or 505)
    refused / DNS / TLS / timeout at connect ConnectFailed
    ProbableAuthenticationError (login)      ConnectFailed(code=403)
    a message the encoder refuses            ConfigError (UnsendableMessage in a batch)
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import ClassVar

from ..base import Backend, ConnectOptions, TransportConnection
from ..url import BrokerURL
from ._channel import AiormqChannel
from ._connection import AiormqConnection, connect

__all__ = ["AiormqBackend", "AiormqChannel", "AiormqConnection"]


class AiormqBackend(Backend):
    """Connects ``amqp://`` and ``amqps://`` URLs through aiormq (asyncio only)."""

    schemes: ClassVar[tuple[str, ...]] = ("amqp", "amqps")

    def connect(
        self, url: BrokerURL, options: ConnectOptions
    ) -> AbstractAsyncContextManager[TransportConnection]:
        return connect(url, options)
