"""NATS URLs: no default credentials, tokens in two forms, and no secret in any text."""

from __future__ import annotations

import pytest

from hare_py.errors import ConfigError
from hare_py.transport import backend_for
from hare_py.transport.base import ConnectOptions, TLSOptions
from hare_py.transport.nats import NatsBackend
from hare_py.transport.nats._config import check_url, config_for
from hare_py.transport.url import parse_url

SECRET = "Pl4in:Secret"
TOKEN = "T0ken-Secret"


def _texts(url: str) -> str:
    try:
        parsed = parse_url(url)
    except ConfigError as exc:
        return f"{exc} {exc!r} {exc.__cause__!r} {exc.__context__!r}"
    return " ".join([str(parsed), repr(parsed), parsed.host, parsed.username, str(parsed.query)])


def test_nats_urls_have_no_default_credentials_and_amqp_keeps_guest() -> None:
    """nats:// and tls:// default to port 4222 and no login; amqp:// still means guest/guest."""
    for scheme in ("nats", "tls"):
        url = parse_url(f"{scheme}://127.0.0.1")
        assert (url.port, url.username, url.password, url.token) == (4222, "", "", "")
        assert str(url) == f"{scheme}://127.0.0.1:4222/"
    amqp = parse_url("amqp://127.0.0.1")
    assert (amqp.username, amqp.password) == ("guest", "guest")


@pytest.mark.parametrize(
    "raw",
    [
        f"nats://{TOKEN}@h:4222",
        f"nats://h:4222?token={TOKEN}",
        f"tls://h/?heartbeat=5&token={TOKEN}",
    ],
)
def test_a_token_in_either_form_is_kept_apart_and_never_shown(raw: str) -> None:
    """token@host and ?token= both give the token, out of the query and out of every text;
    with_secret() renders it in the token@host form."""
    url = parse_url(raw)
    assert url.token == TOKEN and (url.username, url.password) == ("", "")
    assert all(key != "token" for key, _ in url.query)
    assert TOKEN not in _texts(raw) and "***@h:" in str(url)
    assert url.with_secret().startswith(f"{url.scheme}://{TOKEN}@h:4222/")


def test_user_and_password_are_a_login_and_the_password_is_hidden() -> None:
    """user:pass@ is a login; str() and repr() show *** for the password."""
    url = parse_url("nats://alice:Pl4in%3ASecret@h:4333")
    assert (url.username, url.password, url.token, url.port) == ("alice", SECRET, "", 4333)
    assert SECRET not in _texts("nats://alice:Pl4in%3ASecret@h:4333")


@pytest.mark.parametrize(
    "raw",
    [
        f"nats://alice:pw@h?token={TOKEN}",  # both a login and a token
        f"nats://{TOKEN}@h:99999",  # a port that does not parse
        f"nats://h:12x?token={TOKEN}",
    ],
)
def test_a_bad_nats_url_is_a_config_error_that_shows_no_token(raw: str) -> None:
    """A URL with a token and a login, or one that does not parse, is a ConfigError whose
    text hides the token."""
    with pytest.raises(ConfigError):
        parse_url(raw)
    assert TOKEN not in _texts(raw)


def test_nats_urls_choose_the_nats_backend_and_unknown_parameters_are_refused() -> None:
    """backend_for picks NatsBackend for both schemes; check() refuses an unknown parameter,
    a bad heartbeat and unloadable TLS files without connecting."""
    for scheme in ("nats", "tls"):
        assert isinstance(backend_for(parse_url(f"{scheme}://h")), NatsBackend)
    options = ConnectOptions()
    with pytest.raises(ConfigError, match="hearbeat"):
        check_url(parse_url("nats://h?hearbeat=1"), options)
    with pytest.raises(ConfigError, match="heartbeat"):
        check_url(parse_url("nats://h?heartbeat=-1"), options)
    with pytest.raises(ConfigError, match="TLS"):
        check_url(parse_url("tls://h"), ConnectOptions(tls=TLSOptions(ca_file="/nonexistent")))
    config = config_for(parse_url("nats://h?heartbeat=0.25&drain_timeout=0"), options)
    assert (config.heartbeat, config.drain_timeout) == (0.25, 0.0)
    assert config_for(parse_url("nats://h"), ConnectOptions(heartbeat=7)).heartbeat == 7
