"""AMQP 0-9-1 on anyio streams: the ``amqp://`` and ``amqps://`` backend.

The default on asyncio and on trio (``?backend=aiormq`` picks aiormq instead,
on asyncio; ``?backend=anyio`` names this one). It takes the
same URL parameters as the aiormq backend: ``heartbeat=SECONDS``, ``name=`` and
``auth=plain|amqplain|external``, and ``max_body_size=BYTES`` (over
``ConnectOptions.max_body_size``, default 128 MiB); TLS settings come from
``ConnectOptions.tls``.

Layers: ``_protocol`` is a sans-I/O state machine (bytes in, events out; calls
in, bytes out) with no sockets and no clock; ``_connection`` drives it with
one reader, one writer and one heartbeat task per connection; ``_channel``
matches replies to calls and hands deliveries, returns and cancels on.

Errors are ``hare_py.errors`` only:

    what happened                               raised
    the broker's channel.close (404, 406, ...)  BrokerError(code, text), to every waiting call
    basic.nack                                  BrokerError(0, "basic.nack ...")
    channel or connection gone                  ConnectionLost (with the broker's code if any)
    refused, DNS, TLS, timeout, bad login       ConnectFailed (403 login, 530 virtual host)
    a value AMQP cannot carry                   ConfigError (UnsendableMessage in a batch)
    a frame over the limits, a broken frame     ConnectionLost (505 UNEXPECTED_FRAME)

A delivered message whose properties do not decode, or whose body is over
``max_body_size``, raises nothing: it arrives with ``Delivery.undecodable`` set.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import ClassVar

from ..base import Backend, ConnectOptions, TransportConnection
from ..url import BrokerURL
from ._channel import AmqpChannel
from ._connection import AmqpConnection, connect

__all__ = ["AmqpChannel", "AmqpConnection", "AnyioAmqpBackend"]


class AnyioAmqpBackend(Backend):
    """Connects ``amqp://`` and ``amqps://`` URLs on anyio (asyncio or trio)."""

    schemes: ClassVar[tuple[str, ...]] = ("amqp", "amqps")

    def connect(
        self, url: BrokerURL, options: ConnectOptions
    ) -> AbstractAsyncContextManager[TransportConnection]:
        return connect(url, options)
