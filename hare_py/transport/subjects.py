"""NATS subject syntax: which subjects are valid, and which subjects a pattern matches.

Rules this module keeps:

- One definition of a valid subject, shared by the NATS client core and the
  in-memory NATS broker, so that both refuse exactly the same subjects.
- Validation is a client's, stricter than nats-server's: tokens are non-empty
  and free of whitespace and control characters; ``*`` and ``>`` appear only
  as whole tokens, ``>`` only last, and never in a subject to publish to.
  Subjects are bounded in bytes (after UTF-8) and in tokens.
- Matching is nats-server's: ``*`` matches exactly one token, ``>`` one or
  more trailing tokens, any other token only itself. A ``*`` or ``>`` in the
  *matched* subject is a token like any other, which only wildcards match
  (nats-server routes such publishes so; this client never sends them).
- Pure functions of their arguments: no state, no I/O; the one exception is
  ``first_sid``, a process-wide count of connections, which both NATS
  transports number their subscriptions from.
"""

from __future__ import annotations

import itertools
import re

from ..errors import ConfigError

__all__ = [
    "MAX_SUBJECT_BYTES",
    "MAX_SUBJECT_TOKENS",
    "InvalidSubject",
    "check_publish_subject",
    "check_queue_group",
    "check_subscribe_subject",
    "first_sid",
    "subject_matches",
]

MAX_SUBJECT_BYTES = 1024  # also for reply subjects and queue groups
MAX_SUBJECT_TOKENS = 64

# A token: no whitespace or control characters, no dot, no wildcard.
_TOKEN = rb"[^\x00-\x20\x7f.*>]+"
_PUBLISH = re.compile(rb"%s(?:\.%s)*" % (_TOKEN, _TOKEN))
_SUB_TOKEN = rb"(?:%s|\*)" % _TOKEN
_SUBSCRIBE = re.compile(rb"%s(?:\.%s)*(?:\.>)?|>" % (_SUB_TOKEN, _SUB_TOKEN))
_QUEUE = re.compile(rb"[^\x00-\x20\x7f]+")

_SUBSCRIBE_RULE = "non-empty tokens without whitespace; '*' and '>' whole tokens, '>' last"
_PUBLISH_RULE = "non-empty tokens without whitespace or wildcards"


class InvalidSubject(ConfigError):
    """A subject or queue group that NATS cannot carry; the message says why."""


def _encode(subject: str, pattern: re.Pattern[bytes], rule: str, bytes_: int, tokens: int) -> bytes:
    try:
        raw = subject.encode()
    except (UnicodeEncodeError, AttributeError):
        raise InvalidSubject(f"subject {subject!r} is not a valid string") from None
    if len(raw) > bytes_:
        raise InvalidSubject(f"subject is longer than {bytes_} bytes")
    if raw.count(b".") >= tokens:
        raise InvalidSubject(f"subject has more than {tokens} tokens")
    if pattern.fullmatch(raw) is None:
        raise InvalidSubject(f"subject {subject!r} is not valid here: {rule}")
    return raw


def check_subscribe_subject(
    subject: str, *, max_bytes: int = MAX_SUBJECT_BYTES, max_tokens: int = MAX_SUBJECT_TOKENS
) -> bytes:
    """``subject`` encoded, if it may be subscribed to; else ``InvalidSubject``.

    Tokens are non-empty and free of whitespace and control characters;
    ``*`` matches one token and ``>`` the rest, each only as a whole token,
    ``>`` only last.
    """
    return _encode(subject, _SUBSCRIBE, _SUBSCRIBE_RULE, max_bytes, max_tokens)


def check_publish_subject(
    subject: str, *, max_bytes: int = MAX_SUBJECT_BYTES, max_tokens: int = MAX_SUBJECT_TOKENS
) -> bytes:
    """``subject`` encoded, if it may be published to (or replied to); else ``InvalidSubject``.

    As ``check_subscribe_subject``, and no ``*`` or ``>`` anywhere.
    """
    return _encode(subject, _PUBLISH, _PUBLISH_RULE, max_bytes, max_tokens)


def check_queue_group(queue: str, *, max_bytes: int = MAX_SUBJECT_BYTES) -> bytes:
    """``queue`` encoded, if it may name a queue group; else ``InvalidSubject``."""
    try:
        group = queue.encode()
    except (UnicodeEncodeError, AttributeError):
        raise InvalidSubject(f"queue group {queue!r} is not a valid string") from None
    if len(group) > max_bytes or _QUEUE.fullmatch(group) is None:
        raise InvalidSubject(f"queue group {queue!r}: non-empty, without whitespace")
    return group


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a subscription to ``pattern`` receives a message published to ``subject``."""
    wanted = pattern.split(".")
    tokens = subject.split(".")
    for i, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > i
        if i >= len(tokens) or (token != "*" and token != tokens[i]):
            return False
    return len(tokens) == len(wanted)


_connections = itertools.count(1)


def first_sid() -> int:
    """A new connection's first subscription id, unique in the process (2**32 sids per
    connection): a message still arriving for a subscription of a connection being
    left (a lame duck move) is then never taken for its successor's by its sid."""
    return (next(_connections) << 32) + 1
