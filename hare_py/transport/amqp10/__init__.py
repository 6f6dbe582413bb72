"""AMQP 1.0 on qpid-proton's engine, driven by anyio: ``amqp://...?protocol=1.0``.

Needs the extra: ``pip install 'hare_py[amqp10]'`` (python-qpid-proton);
nothing imports this package, or proton, until such a URL is used.

URLs: ``amqp://[user:pass@]host[:port]/?protocol=1.0`` dials a peer (a broker,
or a hare_py server that listens); ``amqps://`` adds TLS through anyio with
``ConnectOptions.tls``; ``listen=1`` listens on the URL's host and port
instead (peer to peer). Without credentials the login is ANONYMOUS, with
them PLAIN and nothing else. Other parameters are in ``_config``.

Layers: proton's engine is the sans-I/O core (bytes in, events out);
``_engine`` drives it with a reader, a writer and a ticker per connection;
``_links`` are receivers (credit) and senders (outcomes); ``_session`` is
one actor's ``LinkSession``; ``_connection`` dials, ``_listener`` listens.

Errors are ``hare_py.errors`` only:

    what happened                                 raised / seen
    refused, DNS, TLS, timeout, refused login     ConnectFailed (no secret in any text)
    a message that cannot be encoded, or over     UnsendableMessage(index); nothing of the
      the peer's max-message-size                   batch is sent
    a receiver the peer refuses (a dynamic node   BrokerError(code, condition) from
      on RabbitMQ 3.x: not-implemented)             open_receiver
    rejected / released / modified, a refused     on_return: ReturnedMessage with the code
      sender link                                   mapped from the condition (404, 403, ...)
    a receiver detached, the AMQP session ended   the session closes (by "broker")
    the peer's close                              CloseReason(by="broker", its condition)
    idle-timeout, framing, a bound, a broken      CloseReason(by="network"); sessions close
      stream, a failure inside event processing     by "connection"
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import ClassVar

from ..base import AMQP_1_0, Backend, ConnectOptions, TransportConnection
from ..url import BrokerURL
from ._config import check_url
from ._connection import Amqp10Connection, connect
from ._session import DialledSession

__all__ = ["Amqp10Backend", "Amqp10Connection", "DialledSession"]


class Amqp10Backend(Backend):
    """Connects (or listens on) ``amqp://`` and ``amqps://`` URLs with ``protocol=1.0``."""

    schemes: ClassVar[tuple[str, ...]] = ("amqp", "amqps")
    wire_protocol: ClassVar[str] = AMQP_1_0

    def connect(
        self, url: BrokerURL, options: ConnectOptions
    ) -> AbstractAsyncContextManager[TransportConnection]:
        return connect(url, options)

    def check(self, url: BrokerURL, options: ConnectOptions) -> None:
        """``ConfigError`` for a URL parameter or TLS file a connect would refuse."""
        check_url(url, options)
