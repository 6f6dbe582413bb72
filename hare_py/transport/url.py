"""Broker URLs, parsed once and never printed with their password or token.

AMQP 0-9-1 URLs default to guest/guest; AMQP 1.0 ones (``?protocol=1.0``)
have no default credentials (ANONYMOUS). NATS URLs (``nats://``, ``tls://``) have no
default credentials: ``nats://user:pass@host``, or a token as
``nats://token@host`` or ``?token=``; the token is kept apart from the query
so that no rendering of the URL shows it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit

from ..errors import ConfigError

__all__ = ["KNOWN_SCHEMES", "NATS_SCHEMES", "SANDBOX_SCHEMES", "BrokerURL", "parse_url"]

KNOWN_SCHEMES: dict[str, int] = {
    "amqp": 5672,
    "amqps": 5671,
    "sandbox": 0,
    "nats": 4222,
    "tls": 4222,
    "sandbox+nats": 0,
}
#: In-memory brokers, reached by name: ``sandbox://NAME`` (AMQP 0-9-1), ``sandbox+nats://NAME``.
SANDBOX_SCHEMES = frozenset({"sandbox", "sandbox+nats"})
#: Schemes whose URLs carry no default credentials and may carry a token.
NATS_SCHEMES = frozenset({"nats", "tls"})


@dataclass(frozen=True, slots=True)
class BrokerURL:
    """A parsed broker URL. ``str()`` and ``repr()`` hide the password."""

    scheme: str
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    vhost: str
    query: tuple[tuple[str, str], ...] = ()
    token: str = field(default="", repr=False)  # NATS only

    def param(self, name: str, default: str | None = None) -> str | None:
        """The query parameter ``name`` (last one wins)."""
        found = default
        for key, value in self.query:
            if key == name:
                found = value
        return found

    def with_secret(self) -> str:
        """The full URL, password included: for handing to a client library only."""
        return self._render(quote(self.password, safe=""), quote(self.token, safe=""))

    def _render(self, password: str, token: str) -> str:
        if self.scheme in SANDBOX_SCHEMES:
            return f"{self.scheme}://{self.host}"
        auth = ""
        if token:
            auth = token + "@"
        elif self.username or password:
            auth = quote(self.username, safe="")
            if password:
                auth += ":" + password
            auth += "@"
        vhost = "/" + quote(self.vhost, safe="") if self.vhost != "/" else "/"
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in self.query)
        return f"{self.scheme}://{auth}{self.host}:{self.port}{vhost}" + (
            f"?{query}" if query else ""
        )

    def __str__(self) -> str:
        return self._render("***" if self.password else "", "***" if self.token else "")

    def __repr__(self) -> str:
        return f"BrokerURL({str(self)!r})"


def parse_url(url: str | BrokerURL) -> BrokerURL:
    """Parse ``amqp://``, ``amqps://``, ``nats://``, ``tls://``, ``sandbox://`` or
    ``sandbox+nats://`` URLs; ``ConfigError`` otherwise."""
    if isinstance(url, BrokerURL):
        return url
    if not isinstance(url, str):
        raise ConfigError(f"broker URL must be a string, got {type(url).__name__}")
    _check_userinfo(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # urlsplit's message quotes the URL's pieces, which may be the password's.
        raise ConfigError(
            f"malformed broker URL {_redact(url)!r}: the host, port or credentials do not parse"
            f"{_ENCODE_HINT}"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in KNOWN_SCHEMES:
        known = ", ".join(f"{s}://" for s in KNOWN_SCHEMES)
        raise ConfigError(
            f"unknown URL scheme {scheme + '://' if scheme else '(none)'!r} in "
            f"{_redact(url)!r}; expected one of {known}"
        )
    if scheme in SANDBOX_SCHEMES:
        name = (parts.netloc or parts.path.lstrip("/")).strip()
        if not name:
            raise ConfigError(f"{scheme} URL {url!r} needs a broker name: {scheme}://NAME")
        return BrokerURL(scheme, name, 0, "", "", "/")
    if not parts.hostname:
        raise ConfigError(f"broker URL {_redact(url)!r} has no host")
    path = parts.path
    vhost = unquote(path[1:]) if len(path) > 1 else "/"
    query = tuple(parse_qsl(parts.query, keep_blank_values=True))
    if scheme in NATS_SCHEMES:
        return _nats_url(url, scheme, parts.hostname, port or KNOWN_SCHEMES[scheme], parts, query)
    # AMQP 1.0 logs in with ANONYMOUS unless the URL names a user.
    default = "" if ("protocol", "1.0") in query else "guest"
    return BrokerURL(
        scheme=scheme,
        host=parts.hostname,
        port=port or KNOWN_SCHEMES[scheme],
        username=unquote(parts.username) if parts.username is not None else default,
        password=unquote(parts.password) if parts.password is not None else default,
        vhost=vhost,
        query=query,
    )


def _nats_url(
    url: str,
    scheme: str,
    host: str,
    port: int,
    parts: SplitResult,
    query: tuple[tuple[str, str], ...],
) -> BrokerURL:
    """A NATS URL: ``user:pass@`` is a login, a lone ``user@`` or ``?token=`` a token."""
    username = unquote(parts.username) if parts.username is not None else ""
    password = unquote(parts.password) if parts.password is not None else ""
    token = ""
    if parts.username is not None and parts.password is None:
        token, username = username, ""
    tokens = [value for key, value in query if key == "token"]
    if tokens:
        if token or username:
            raise ConfigError(
                f"broker URL {_redact(url)!r} has a token and credentials: give one of them"
            )
        token = tokens[-1]
        query = tuple((key, value) for key, value in query if key != "token")
    return BrokerURL(scheme, host, port, username, password, "/", query, token)


_ENCODE_HINT = " (percent-encode any of : / ? # [ ] @ in the user name or password)"


def _check_userinfo(url: str) -> None:
    """Refuse a URL whose credentials would be split into its host, path or query.

    An unencoded ``/``, ``?`` or ``#`` in a password ends the URL's authority
    early: the rest of the password would be parsed as the port, vhost or a
    query key, and shown back in messages. Such a URL has no ``@`` in its
    authority but one later (a query *value* such as ``name=me@host`` is fine).
    """
    _, sep, rest = url.partition("://")
    if not sep:
        return
    cut = [i for i in (rest.find(c) for c in "/?#") if i != -1]
    authority, tail = (rest[: min(cut)], rest[min(cut) :]) if cut else (rest, "")
    if "@" in authority or "@" not in tail:
        return
    before_fragment, _, fragment = tail.partition("#")
    path, _, query = before_fragment.partition("?")
    keys = (pair.partition("=")[0] for pair in query.split("&"))
    if "@" in path or "@" in fragment or any("@" in key for key in keys):
        raise ConfigError(
            f"malformed broker URL {_redact(url)!r}: an '@' follows the host{_ENCODE_HINT}"
        )


_TOKEN_PARAM = re.compile(r"(?i)([?&;]token=)[^&;#]*")


def _redact(url: str) -> str:
    """Hide the password or token of a URL that may not parse: everything between
    the scheme and the last ``@`` is credentials, whatever characters it holds,
    and so is the value of a ``token=`` parameter."""
    url = _TOKEN_PARAM.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "(not a URL)" if "@" in url else url
    auth, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = auth.partition(":")
    if any(c in user for c in "/?#"):  # not a user name: part of a mangled password
        return f"{scheme}://***@{host}"
    if not colon and scheme.lower() in NATS_SCHEMES:  # a lone user is a NATS token
        return f"{scheme}://***@{host}"
    return f"{scheme}://{user}:***@{host}" if colon else f"{scheme}://{user}@{host}"
