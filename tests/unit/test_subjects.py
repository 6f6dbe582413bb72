"""NATS subject matching and validation, shared by the client core and the sandbox."""

from __future__ import annotations

import pytest

from hare_py.errors import ConfigError
from hare_py.transport import subjects
from hare_py.transport.nats import _protocol
from hare_py.transport.subjects import (
    InvalidSubject,
    check_publish_subject,
    check_queue_group,
    check_subscribe_subject,
    subject_matches,
)

MATCHES = [
    ("a", "a"),
    ("a.b", "a.b"),
    ("a.*", "a.b"),
    ("*.b", "a.b"),
    ("*", "a"),
    ("a.*.c", "a.b.c"),
    ("a.>", "a.b"),
    ("a.>", "a.b.c.d"),
    (">", "a"),
    (">", "a.b.c"),
    ("a.*.>", "a.b.c"),
    ("*.*", "é.ü"),
    # A wildcard in a published subject is a token only wildcards match, as on nats-server.
    ("a.*", "a.*"),
    ("a.*", "a.>"),
    ("a.>", "a.>.b"),
    ("a.*", "a.x*"),
]
NO_MATCHES = [
    ("a", "b"),
    ("a", "a.b"),
    ("a.b", "a"),
    ("a.*", "a"),
    ("a.*", "a.b.c"),
    ("*", "a.b"),
    ("a.*.c", "a.b.d"),
    ("a.>", "a"),
    ("a.>", "b.c"),
    ("a.*.>", "a.b"),
    ("a.b", "a.*"),
    ("ab", "a"),
]


@pytest.mark.parametrize(("pattern", "subject"), MATCHES)
def test_a_pattern_matches(pattern: str, subject: str) -> None:
    """'*' takes exactly one token, '>' one or more trailing tokens, others only themselves."""
    assert subject_matches(pattern, subject)


@pytest.mark.parametrize(("pattern", "subject"), NO_MATCHES)
def test_a_pattern_does_not_match(pattern: str, subject: str) -> None:
    """No match across token counts, other literals, or a '>' with nothing after it."""
    assert not subject_matches(pattern, subject)


def test_the_core_uses_the_shared_rules() -> None:
    """The NATS core's InvalidSubject is the shared one, a ConfigError, and its checks agree."""
    assert _protocol.InvalidSubject is subjects.InvalidSubject
    assert issubclass(InvalidSubject, ConfigError)
    for subject in ("a.*", "a..b", "a.>.b", "ok.subject"):
        for shared, core in (
            (check_subscribe_subject, _protocol.check_subscribe_subject),
            (check_publish_subject, _protocol.check_publish_subject),
        ):
            try:
                expected: bytes | None = shared(subject)
            except InvalidSubject:
                expected = None
            try:
                got: bytes | None = core(subject)
            except InvalidSubject:
                got = None
            assert got == expected, (subject, shared)


def test_bounds_are_parameters() -> None:
    """Callers choose the byte and token bounds; the defaults are the core's."""
    assert check_publish_subject("a.b.c", max_tokens=3) == b"a.b.c"
    with pytest.raises(InvalidSubject, match="more than 3 tokens"):
        check_publish_subject("a.b.c.d", max_tokens=3)
    with pytest.raises(InvalidSubject, match="longer than 4 bytes"):
        check_subscribe_subject("ééé", max_bytes=4)
    with pytest.raises(InvalidSubject, match="longer than 1024 bytes"):
        check_subscribe_subject("a" * 1025)


@pytest.mark.parametrize("queue", ["", "two words", "q\r\n", "\ud800"])
def test_bad_queue_groups_are_refused(queue: str) -> None:
    """A queue group is non-empty, without whitespace or control characters."""
    with pytest.raises(InvalidSubject, match="queue group"):
        check_queue_group(queue)


def test_a_queue_group_may_hold_dots_and_stars() -> None:
    """Queue groups are names, not subjects: dots and wildcard characters are plain."""
    assert check_queue_group("svc.workers*") == b"svc.workers*"
