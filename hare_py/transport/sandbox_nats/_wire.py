"""What a NATS client refuses to send, and how headers look on the wire.

Rules this module keeps:

- A ``Message`` becomes a publish exactly as the ``NatsSession`` docstring
  maps it: the subject is ``routing_key``, ``exchange`` must be ``""``, the
  reply subject is ``properties.reply_to``, headers are strings (a list or
  tuple of strings repeats a key), and any other property is unsendable.
- The checks are hare_py's NATS client's, in its order: subjects as
  ``transport.subjects`` defines them, header keys and values as the client
  core encodes them, and headers plus body within the server's
  ``max_payload``. The first failure is an ``UnsendableMessage`` naming the
  message's index; nothing is published before every message passed.
- Sizes are counted as on the wire: a message without headers is a PUB (the
  body alone), one with headers (even none) an HPUB (the header block too).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ...errors import UnsendableMessage
from ..base import Message, Properties
from ..subjects import InvalidSubject, check_publish_subject
from ._state import Headers

__all__ = ["Outgoing", "encode_batch", "header_block_size", "headers_mapping"]

_HEADER_KEY = re.compile(r"[!-9;-~]+")  # printable ASCII but ':'
_HEADER_VALUE = re.compile(r"(?:[^\x00-\x20\x7f][^\x00-\x08\x0a-\x1f\x7f]*)?")
_MAX_HEADERS = 256
_MAX_HEADER_BLOCK = 64 * 1024
# "NATS/1.0\r\n" ... "\r\n", and ": " plus CRLF per header
_BLOCK_FRAME = 12
_LINE_FRAME = 4
_NATS_PROPERTIES = frozenset({"headers", "reply_to"})
_OTHER_PROPERTIES = tuple(f.name for f in fields(Properties) if f.name not in _NATS_PROPERTIES)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One checked publish."""

    subject: str
    reply: str | None
    body: bytes
    headers: Headers | None


class _Refused(Exception):
    """Why one message cannot be sent (becomes UnsendableMessage with its index)."""


def encode_batch(messages: Sequence[Message], max_payload: int) -> list[Outgoing]:
    """Every message checked, or ``UnsendableMessage`` for the first that is not."""
    out = []
    for index, message in enumerate(messages):
        try:
            out.append(_encode(message, max_payload))
        except _Refused as exc:
            raise UnsendableMessage(index, str(exc)) from None
    return out


def _encode(message: Message, max_payload: int) -> Outgoing:
    exchange, subject, body, props = message
    if exchange:
        raise _Refused(f"NATS has no exchanges (exchange {exchange!r}): leave it ''")
    for name in _OTHER_PROPERTIES:
        if getattr(props, name) is not None:
            raise _Refused(f"NATS cannot carry the {name} property: put it in a header")
    if not isinstance(body, bytes | bytearray | memoryview):
        raise _Refused(f"the body is {type(body).__name__}, not bytes")
    try:
        check_publish_subject(subject)
        if props.reply_to is not None:
            check_publish_subject(props.reply_to)
    except InvalidSubject as exc:
        raise _Refused(str(exc)) from None
    headers = None if props.headers is None else _header_pairs(props.headers)
    size = len(body) + (0 if headers is None else header_block_size(headers))
    if size > max_payload:
        raise _Refused(
            f"a message of {size} bytes exceeds the server's max_payload of {max_payload}"
        )
    return Outgoing(subject, props.reply_to, bytes(body), headers)


def _header_pairs(headers: Mapping[str, Any]) -> Headers:
    pairs: list[tuple[str, str]] = []
    for key, value in headers.items():
        values = value if isinstance(value, list | tuple) else (value,)
        for item in values:
            if not isinstance(key, str) or not isinstance(item, str) or not _utf8(item):
                raise _Refused(f"header {key!r} is not a pair of strings")
            pairs.append((key, item))
    if len(pairs) > _MAX_HEADERS:
        raise _Refused(f"more than {_MAX_HEADERS} headers")
    for key, item in pairs:
        if not key.isascii() or _HEADER_KEY.fullmatch(key) is None:
            raise _Refused(f"header key {key!r}: printable ASCII without ':' or spaces")
        if _HEADER_VALUE.fullmatch(item) is None:
            raise _Refused(
                f"header {key!r}: a value has no control characters and starts with no space"
            )
    if header_block_size(tuple(pairs)) > _MAX_HEADER_BLOCK:
        raise _Refused(f"the header block is longer than {_MAX_HEADER_BLOCK} bytes")
    return tuple(pairs)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def header_block_size(headers: Headers) -> int:
    """Bytes of the ``NATS/1.0`` header block that carries ``headers``."""
    return _BLOCK_FRAME + sum(
        len(key.encode()) + len(value.encode()) + _LINE_FRAME for key, value in headers
    )


def headers_mapping(headers: Headers | None) -> dict[str, str | list[str]] | None:
    """Headers as a subscriber receives them: a repeated key as a list, in wire order."""
    if headers is None:
        return None
    mapping: dict[str, str | list[str]] = {}
    for key, value in headers:
        seen = mapping.get(key)
        if seen is None:
            mapping[key] = value
        elif isinstance(seen, list):
            seen.append(value)
        else:
            mapping[key] = [seen, value]
    return mapping
