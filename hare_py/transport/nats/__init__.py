"""NATS on anyio streams: the ``nats://`` and ``tls://`` backend, on asyncio and trio.

URLs: ``nats://[user:pass@]host[:port]``, a token as ``nats://token@host`` or
``nats://host?token=...``, and ``tls://...`` for TLS through anyio with
``ConnectOptions.tls`` (``TLSOptions``); a server whose INFO requires TLS gets
it on a ``nats://`` URL too. Parameters: ``heartbeat=SECONDS`` (a PING that
often; two unanswered and the server is dead), ``name=``,
``connect_timeout=``, ``drain_timeout=`` and ``tls_hostname=`` (see
``_config``). Several servers: give the supervised ``Connection`` a list of
URLs; it adds the cluster's other servers from INFO ``connect_urls``
(``TransportConnection.discovered_urls``).

Layers: ``_protocol`` is the sans-I/O client core (bytes in, events out;
calls in, bytes out), with no sockets and no clock; ``_handshake`` opens
the socket (TCP, INFO, TLS, CONNECT); ``_connection`` drives the core with
one reader, one writer and one pinger per connection; ``_session`` is one
actor's ``NatsSession`` on it.

Errors are ``hare_py.errors`` only:

    what happened                                  raised / seen
    refused, DNS, TLS, timeout, bad login          ConnectFailed (no secret in any text)
    a message over max_payload, a bad subject,     UnsendableMessage(index) for that message
      header or property                             of the batch; nothing of it is sent
    a bad subject or queue group to subscribe      ConfigError (InvalidSubject)
    the connection went away                       ConnectionLost; sessions close by "connection"
    a closing -ERR ('Stale Connection', ...)       CloseReason(by="broker", text=the -ERR's)
    silence (no PONG to 2 PINGs), a broken stream  CloseReason(by="network")
    a permission violation of a subscription       that session closes by "broker"; flush()
                                                     on it raises BrokerError
    lame duck mode                                 CloseReason(by="broker", "lame duck mode");
                                                     sessions drain (``Session.draining``)
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import ClassVar

from ..base import NATS, Backend, ConnectOptions, TransportConnection
from ..url import BrokerURL
from ._config import check_url
from ._connection import NatsConnection, connect
from ._session import NatsClientSession

__all__ = ["NatsBackend", "NatsClientSession", "NatsConnection"]


class NatsBackend(Backend):
    """Connects ``nats://`` and ``tls://`` URLs on anyio (asyncio or trio)."""

    schemes: ClassVar[tuple[str, ...]] = ("nats", "tls")
    wire_protocol: ClassVar[str] = NATS

    def connect(
        self, url: BrokerURL, options: ConnectOptions
    ) -> AbstractAsyncContextManager[TransportConnection]:
        return connect(url, options)

    def check(self, url: BrokerURL, options: ConnectOptions) -> None:
        """``ConfigError`` for a URL parameter or TLS file a connect would refuse."""
        check_url(url, options)
