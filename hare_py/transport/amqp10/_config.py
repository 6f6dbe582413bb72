"""What an AMQP 1.0 connection is told: URL parameters, SASL, TLS, limits; no I/O.

Rules this module keeps:

- It imports nothing of proton, so that a URL is checked without the extra.
- Every parameter of an ``amqp://...?protocol=1.0`` URL is listed in
  ``URL_PARAMETERS``; any other is a ``ConfigError``, so that a misspelt one
  is not silently ignored. The URL's values win over ``ConnectOptions``.
- Credentials come from the URL only and reach the engine and nothing else:
  no credentials log in with ANONYMOUS, credentials with PLAIN only (proton
  would otherwise fall back to ANONYMOUS and silently drop them).

Parameters:

- ``protocol=1.0`` picks AMQP 1.0 (the name is fixed);
- ``heartbeat=SECONDS``: the idle-timeout we announce (the peer sends a frame
  at least every half of it; silence for that long ends the connection);
  0 turns it off;
- ``name=``: our container-id (a random one by default);
- ``connect_timeout=SECONDS``;
- ``max_frame_size=BYTES``: the largest frame we take (512 to 1 MiB, default
  64 KiB);
- ``max_body_size=BYTES``: the largest message we take on a receiver link
  (announced as its max-message-size; a larger one arrives undecodable);
- ``listen=1``: serve peers that dial in on the URL's host and port instead of
  dialling out (a hare_py ``RPCServer`` with no broker).
"""

from __future__ import annotations

import math
import secrets
import ssl
from dataclasses import dataclass, field

from ...errors import ConfigError
from ..base import ConnectOptions, TLSOptions
from ..url import BrokerURL

__all__ = ["URL_PARAMETERS", "Amqp10Config", "check_url", "config_for", "is_amqp10"]

URL_PARAMETERS = (
    "connect_timeout",
    "heartbeat",
    "listen",
    "max_body_size",
    "max_frame_size",
    "name",
    "protocol",
)
DEFAULT_FRAME = 64 * 1024
MIN_FRAME = 512  # the least AMQP 1.0 allows
MAX_FRAME = 1024 * 1024


def is_amqp10(url: BrokerURL) -> bool:
    """True for ``amqp://`` and ``amqps://`` URLs with ``protocol=1.0``."""
    return url.scheme in ("amqp", "amqps") and url.param("protocol") == "1.0"


@dataclass(frozen=True, slots=True)
class Amqp10Config:
    """One connection's settings; its repr never shows the password."""

    where: str  # the redacted URL, for texts
    host: str
    port: int
    user: str | None = field(repr=False)
    password: str | None = field(repr=False)
    container_id: str
    heartbeat: float
    connect_timeout: float
    max_frame_size: int
    max_body_size: int
    listen: bool
    tls: TLSOptions | None  # None: plain TCP

    @property
    def mechanism(self) -> str:
        return "PLAIN" if self.user else "ANONYMOUS"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The context for ``amqps://``: a client one that verifies the peer, or
        for a listener a server one with ``cert_file``; None for ``amqp://``."""
        tls = self.tls
        if tls is None:
            return None
        purpose = ssl.Purpose.CLIENT_AUTH if self.listen else ssl.Purpose.SERVER_AUTH
        try:
            context = ssl.create_default_context(purpose, cafile=tls.ca_file)
            if tls.cert_file:
                context.load_cert_chain(tls.cert_file, tls.key_file)
        except OSError as exc:  # ssl.SSLError included
            raise ConfigError(f"cannot load the TLS certificates or key: {exc}") from None
        if self.listen:
            if not tls.cert_file:
                raise ConfigError("an amqps:// listener needs TLSOptions(cert_file=, key_file=)")
            if tls.ca_file and tls.verify:
                context.verify_mode = ssl.CERT_OPTIONAL
        elif not tls.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    @property
    def tls_hostname(self) -> str:
        tls = self.tls
        return (tls.server_hostname if tls is not None else None) or self.host


def _number(url: BrokerURL, name: str, default: float, least: float, most: float) -> float:
    raw = url.param(name)
    try:
        value = float(raw) if raw is not None else float(default)
    except ValueError:
        raise ConfigError(f"{name}={(raw or '')[:40]!r} in {url} is not a number") from None
    if math.isnan(value) or not least <= value <= most:
        raise ConfigError(f"{name} must be {least:g} to {most:g}, got {value:g}")
    return value


def config_for(url: BrokerURL, options: ConnectOptions) -> Amqp10Config:
    """The settings for ``url``; ``ConfigError`` for anything that cannot work."""
    unknown = sorted({key for key, _ in url.query} - set(URL_PARAMETERS))
    if unknown:
        raise ConfigError(
            f"unknown URL parameter {', '.join(repr(k[:40]) for k in unknown)} in {url}; "
            f"known with protocol=1.0: {', '.join(URL_PARAMETERS)}"
        )
    listen_raw = url.param("listen") or "0"
    if listen_raw not in ("0", "1"):
        raise ConfigError(f"listen={listen_raw[:40]!r} in {url}: use listen=1 or leave it out")
    listen = listen_raw == "1"
    if listen and url.username:
        raise ConfigError(
            f"{url}: a listener takes ANONYMOUS logins only; drop the credentials "
            "(use amqps:// with client certificates to know who dials in)"
        )
    if url.password and not url.username:
        raise ConfigError(f"{url} has a password but no user name")
    body = _number(url, "max_body_size", options.max_body_size, 0, 2**32 - 1)
    if body != int(body):
        raise ConfigError(f"max_body_size must be a whole number of bytes, got {body:g}")
    frame = _number(url, "max_frame_size", DEFAULT_FRAME, MIN_FRAME, MAX_FRAME)
    name = url.param("name") or options.name or f"hare-py-{secrets.token_hex(8)}"
    tls = (options.tls or TLSOptions()) if url.scheme == "amqps" else None
    return Amqp10Config(
        where=str(url),
        host=url.host,
        port=url.port,
        user=url.username or None,
        password=url.password or None,
        container_id=name,
        heartbeat=_number(url, "heartbeat", options.heartbeat, 0, 86_400),
        connect_timeout=_number(url, "connect_timeout", options.connect_timeout, 0.001, 3600),
        max_frame_size=int(frame),
        max_body_size=int(body),
        listen=listen,
        tls=tls,
    )


def check_url(url: BrokerURL, options: ConnectOptions) -> None:
    """``ConfigError`` for anything a connect to ``url`` would refuse, without connecting."""
    config_for(url, options).ssl_context()
