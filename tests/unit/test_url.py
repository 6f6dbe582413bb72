"""Broker URLs: parsing, and no password in any text derived from one."""

from __future__ import annotations

import pytest

from hare_py.errors import ConfigError
from hare_py.transport.url import parse_url

# Every character with a meaning in a URL, and a few without.
SPECIAL = ":/?#[]@!$&'()*+,;=% \\\"<>^`{|}~"
TEMPLATES = [
    "amqp://app:Pl4in{c}Secret@rabbit.internal:5672/",
    "amqps://app:Pl4in{c}Secret@rabbit.internal/vhost?heartbeat=10",
    "amqp://app:12{c}34Secret@rabbit.internal/",  # digits first: would parse as a port
]


def _texts(url: str) -> str:
    """Every text a user may see for ``url``: the error, or the parsed URL's forms."""
    try:
        parsed = parse_url(url)
    except ConfigError as exc:
        return f"{exc} {exc!r} {exc.__cause__!r} {exc.__context__!r}"
    return " ".join(
        [str(parsed), repr(parsed), parsed.host, parsed.username, parsed.vhost, str(parsed.query)]
    )


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("char", list(SPECIAL))
def test_no_piece_of_the_password_in_any_text(template: str, char: str) -> None:
    """A password holding any URL-special character, encoded or not, never shows up."""
    url = template.replace("{c}", char)
    texts = _texts(url)
    for piece in ("Pl4in", "Secret", "34Secret"):
        assert piece not in texts, texts


@pytest.mark.parametrize("char", list(SPECIAL))
def test_an_encoded_password_round_trips(char: str) -> None:
    """A percent-encoded password with any character parses back to exactly that password."""
    from urllib.parse import quote

    password = f"Pl4in{char}Secret"
    parsed = parse_url(f"amqp://app:{quote(password, safe='')}@rabbit.internal/")
    assert parsed.password == password
    assert parsed.host == "rabbit.internal"
    assert parse_url(parsed.with_secret()).password == password


def test_an_unencoded_slash_in_the_password_is_refused_with_a_hint() -> None:
    """A password cut short by '/' is a ConfigError that says to percent-encode it."""
    with pytest.raises(ConfigError, match="percent-encode") as info:
        parse_url("amqp://app:12/34Secret@rabbit.internal/")
    assert "34Secret" not in str(info.value)


def test_an_at_sign_in_a_query_value_is_allowed() -> None:
    """'@' in a query value (a connection name) is not mistaken for credentials."""
    parsed = parse_url("amqp://rabbit.internal/?name=worker@host")
    assert parsed.param("name") == "worker@host"
    assert parsed.username == "guest"
