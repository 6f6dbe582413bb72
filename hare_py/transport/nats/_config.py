"""What a NATS connection is told: URL parameters, credentials, TLS; no I/O.

URL parameters (the URL's win over ``ConnectOptions``):

- ``heartbeat=SECONDS``: a PING every that many seconds (fractions allowed;
  0 turns it off); two PINGs without a PONG and the server is dead.
- ``name=``: the connection's name in the server's monitoring.
- ``drain_timeout=SECONDS``: how long a connection in lame duck mode waits
  for its sessions to close before it hangs up (default 30).
- ``tls_hostname=``: the name to verify the server's certificate against
  (a discovered server is reached by address, but its certificate names the
  cluster's host).

Credentials come from the URL only: ``user:pass@``, or a token (``token@``
or ``?token=``). They go to the protocol object and nowhere else.
"""

from __future__ import annotations

import math
import ssl
from dataclasses import dataclass, field

from ...errors import ConfigError, HareError
from ..base import ConnectOptions, TLSOptions
from ..url import BrokerURL

__all__ = ["URL_PARAMETERS", "NatsConfig", "check_url", "config_for", "scrub"]

DRAIN_TIMEOUT = 30.0
URL_PARAMETERS = ("connect_timeout", "drain_timeout", "heartbeat", "name", "tls_hostname")


@dataclass(frozen=True, slots=True)
class NatsConfig:
    """One connect attempt's settings; ``str()`` of it never shows a secret."""

    where: str  # the redacted URL, for texts
    host: str
    port: int
    user: str | None = field(repr=False)
    password: str | None = field(repr=False)
    token: str | None = field(repr=False)
    name: str | None
    heartbeat: float
    connect_timeout: float
    drain_timeout: float
    want_tls: bool  # tls:// asks for it; a server's tls_required forces it anyway
    tls: TLSOptions
    tls_hostname: str

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.password, self.token) if s)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the server unless ``TLSOptions.verify`` is off."""
        tls = self.tls
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
            if tls.cert_file:
                context.load_cert_chain(tls.cert_file, tls.key_file)
        except OSError as exc:  # ssl.SSLError included
            raise ConfigError(f"cannot load the TLS certificates or key: {exc}") from None
        if not tls.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def _seconds(url: BrokerURL, name: str, default: float, *, zero: bool) -> float:
    raw = url.param(name)
    try:
        value = float(raw) if raw is not None else float(default)
    except ValueError:
        shown = (raw or "")[:40]
        raise ConfigError(f"{name}={shown!r} in {url} is not a number of seconds") from None
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not zero):
        least = "0 or more" if zero else "more than 0"
        raise ConfigError(f"{name} must be {least} seconds, got {value:g}")
    return value


def config_for(url: BrokerURL, options: ConnectOptions) -> NatsConfig:
    """The settings for ``url``; ``ConfigError`` for a parameter that cannot work."""
    unknown = sorted({key for key, _ in url.query} - set(URL_PARAMETERS))
    if unknown:
        raise ConfigError(
            f"unknown URL parameter {', '.join(repr(k[:40]) for k in unknown)} in {url}; "
            f"known: {', '.join(URL_PARAMETERS)}, token"
        )
    tls = options.tls or TLSOptions()
    return NatsConfig(
        where=str(url),
        host=url.host,
        port=url.port,
        user=url.username if url.username else None,
        password=url.password if url.username else None,
        token=url.token or None,
        name=options.name or url.param("name"),
        heartbeat=_seconds(url, "heartbeat", options.heartbeat, zero=True),
        connect_timeout=_seconds(url, "connect_timeout", options.connect_timeout, zero=False),
        drain_timeout=_seconds(url, "drain_timeout", DRAIN_TIMEOUT, zero=True),
        want_tls=url.scheme == "tls",
        tls=tls,
        tls_hostname=tls.server_hostname or url.param("tls_hostname") or url.host,
    )


def scrub(error: HareError, cause: BaseException | None, secrets: tuple[str, ...]) -> HareError:
    """Attach ``cause`` to ``error`` unless a secret shows up anywhere in its chain.

    ``error`` itself is built from the redacted URL only.
    """
    seen: set[int] = set()
    link = cause
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        texts = (str(link), repr(link))
        if any(secret in text for secret in secrets for text in texts):
            cause = None
            break
        link = link.__cause__ or link.__context__
    error.__cause__ = cause
    error.__suppress_context__ = True
    return error


def check_url(url: BrokerURL, options: ConnectOptions) -> None:
    """``ConfigError`` for anything a connect to ``url`` would refuse, without connecting."""
    config = config_for(url, options)
    if config.want_tls or options.tls is not None:
        config.ssl_context()
