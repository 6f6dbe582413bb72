"""Exchange matching rules, as RabbitMQ applies them. Pure functions, no state."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

__all__ = ["headers_match", "topic_match"]


def _words(key: str) -> tuple[str, ...]:
    # RabbitMQ splits "" into no words at all, so "*" does not match "".
    return tuple(key.split(".")) if key else ()


@lru_cache(maxsize=4096)
def topic_match(pattern: str, routing_key: str) -> bool:
    """Whether a topic binding ``pattern`` matches ``routing_key``.

    ``*`` matches exactly one word, ``#`` zero or more words; words are
    separated by dots.
    """
    return _match(_words(pattern), _words(routing_key))


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        # "#" swallows 0..n words; try every split point.
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    if head == "*" or head == words[0]:
        return _match(rest, words[1:])
    return False


def _normalize(value: Any) -> Any:
    # AMQP long strings arrive as str or bytes depending on the client; compare alike.
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return bytes(value)
    return value


def headers_match(
    binding_args: Mapping[str, Any] | None, headers: Mapping[str, Any] | None
) -> bool:
    """Whether a headers-exchange binding matches a message's headers.

    ``x-match`` is ``all`` (the default), ``any``, ``all-with-x`` or
    ``any-with-x``. For ``all`` and ``any`` binding keys starting with ``x-`` are
    ignored. A binding value of ``None`` (AMQP void) matches on the key's
    presence alone. ``all`` with nothing to match matches every message; ``any``
    with nothing to match matches none.
    """
    args = dict(binding_args or {})
    kind = _normalize(args.pop("x-match", "all"))
    with_x = kind in ("all-with-x", "any-with-x")
    wanted = {k: v for k, v in args.items() if with_x or not k.startswith("x-")}
    data = dict(headers or {})

    def matches(key: str, value: Any) -> bool:
        if key not in data:
            return False
        return value is None or _normalize(data[key]) == _normalize(value)

    if kind in ("any", "any-with-x"):
        return any(matches(k, v) for k, v in wanted.items())
    return all(matches(k, v) for k, v in wanted.items())
