"""What both AMQP 0-9-1 backends share: URL options, TLS, and keeping secrets out.

No aiormq here: the anyio backend must not import it.
"""

from __future__ import annotations

import math
import ssl

from ..errors import ConfigError, HareError
from .base import ConnectOptions, TLSOptions
from .url import BrokerURL

__all__ = [
    "CLOSE_TIMEOUT",
    "DIRECT_REPLY_TO",
    "URL_PARAMETERS",
    "check_url",
    "heartbeat_seconds",
    "login_mechanism",
    "max_body_size",
    "scrub",
    "tls_context",
]

# Every query parameter of an amqp:// or amqps:// URL; any other is refused, so
# that a misspelt one is not silently ignored. A new parameter goes here and
# into check_url.
URL_PARAMETERS = ("auth", "backend", "heartbeat", "max_body_size", "name")

# Bounds our own connection.close and channel.close handshakes, in seconds: the
# connection or channel is gone for us either way, so a broker that does not
# answer must not hold the caller.
CLOSE_TIMEOUT = 10.0

# RabbitMQ's direct reply-to pseudo-queue: no queue, replies go straight to the
# channel that consumes it.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

_MECHANISMS = {"plain": "PLAIN", "amqplain": "AMQPLAIN", "external": "EXTERNAL"}


def heartbeat_seconds(url: BrokerURL, options: ConnectOptions) -> int:
    """Whole seconds for connection.tune-ok: the URL's ``heartbeat=`` wins over the options."""
    raw = url.param("heartbeat")
    try:
        value = float(raw) if raw is not None else float(options.heartbeat)
    except ValueError:
        raise ConfigError(f"heartbeat={raw!r} in {url} is not a number of seconds") from None
    if not 0 <= value < 65536 or math.isnan(value):
        raise ConfigError(f"heartbeat must be 0 (off) to 65535 seconds, got {value:g}")
    return 0 if value == 0 else max(1, math.ceil(value))


def max_body_size(url: BrokerURL, options: ConnectOptions) -> int:
    """The largest body a delivery may carry, in bytes: the URL's ``max_body_size=`` wins."""
    raw = url.param("max_body_size")
    if raw is None:
        value = options.max_body_size
    else:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(
                f"max_body_size={raw[:40]!r} in {url} is not a whole number of bytes"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"max_body_size must be a number of bytes (0 or more), got {value!r}")
    return value


def tls_context(
    url: BrokerURL, options: ConnectOptions
) -> tuple[ssl.SSLContext | None, str | None]:
    """The SSL context (verifying by default) and server_hostname for ``amqps://``."""
    if url.scheme != "amqps":
        # TLS follows the scheme; a failover list may mix amqp:// and amqps://
        # URLs under one set of options.
        return None, None
    tls = options.tls or TLSOptions()
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except OSError as exc:  # ssl.SSLError included
        raise ConfigError(f"cannot load the TLS certificates or key: {exc}") from None
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context, tls.server_hostname


def login_mechanism(url: BrokerURL) -> str:
    """The SASL mechanism named by the URL's ``auth=`` (PLAIN when absent)."""
    raw = url.param("auth")
    if raw is None:
        return "PLAIN"
    mechanism = _MECHANISMS.get(raw.lower())
    if mechanism is None:
        raise ConfigError(f"auth={raw!r} in {url}: use one of {', '.join(_MECHANISMS)}")
    return mechanism


def scrub(error: HareError, cause: BaseException | None, secret: str) -> HareError:
    """Attach ``cause`` to ``error`` unless the secret shows up anywhere in its chain.

    ``error`` itself is built from the redacted URL only.
    """
    seen: set[int] = set()
    link = cause
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if secret and (secret in str(link) or secret in repr(link)):
            cause = None
            break
        link = link.__cause__ or link.__context__
    error.__cause__ = cause
    error.__suppress_context__ = True
    return error


def check_url(url: BrokerURL, options: ConnectOptions) -> None:
    """``ConfigError`` for any URL parameter or TLS setting a connect would refuse.

    ``Connection`` calls this before connecting, so that a mistake fails at
    once instead of being retried. ``backend=`` is checked where the backend
    is chosen (``transport.backend_for``).
    """
    unknown = sorted({key for key, _ in url.query} - set(URL_PARAMETERS))
    if unknown:
        raise ConfigError(
            f"unknown URL parameter {', '.join(repr(k[:40]) for k in unknown)} in {url}; "
            f"known: {', '.join(URL_PARAMETERS)}"
        )
    heartbeat_seconds(url, options)
    max_body_size(url, options)
    login_mechanism(url)
    tls_context(url, options)
