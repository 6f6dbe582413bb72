"""What callbacks return: each value tells the runtime what to do next.

Returning ``Reply(value, state)`` answers the caller with ``value`` (an
exception instance is raised in the caller) and goes on with ``state``.
Returning ``NoReply(state)`` goes on with ``state``; a caller is answered later
with ``reply(caller, value)``. Returning ``Stop(reason, state)`` runs
``terminate(reason, state)`` and ends the actor; ``reply=`` answers the caller
first. ``init`` may return ``Ignore()`` (do not start, exit normally) or
``Stop(reason)`` (refuse to start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Generic, TypeAlias, TypeVar

from .._frozen import quick_init

__all__ = [
    "NORMAL_REASONS",
    "NOTHING",
    "CallResult",
    "Ignore",
    "InitResult",
    "NoReply",
    "NoticeResult",
    "Reply",
    "Stop",
    "is_normal",
]

S = TypeVar("S")


class _Nothing:
    """Marks an absent ``reply=`` (``None`` is a valid reply)."""

    _instance: _Nothing | None = None

    def __new__(cls) -> _Nothing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOTHING"


NOTHING: Final = _Nothing()

#: Stop reasons after which a transient child is not restarted (as in OTP).
NORMAL_REASONS: Final = frozenset({"normal", "shutdown"})


def is_normal(reason: object) -> bool:
    """True when ``reason`` ends an actor for good rather than asking for a restart."""
    return reason is None or (isinstance(reason, str) and reason in NORMAL_REASONS)


@quick_init
@dataclass(frozen=True, slots=True)
class Reply(Generic[S]):
    """Answer the caller with ``value`` and go on with ``state``."""

    value: Any
    state: S


@quick_init
@dataclass(frozen=True, slots=True)
class NoReply(Generic[S]):
    """Go on with ``state`` without answering now."""

    state: S


@dataclass(frozen=True, slots=True)
class Stop(Generic[S]):
    """End the actor with ``reason`` after ``terminate(reason, state)``.

    ``reply`` (if given) answers the current caller first; other callers get
    ``ClientStopped``. A reason other than ``"normal"``/``"shutdown"`` counts as
    abnormal: the supervisor restarts a transient actor.
    """

    reason: Any
    state: S | None = None
    reply: Any = NOTHING


@dataclass(frozen=True, slots=True)
class Ignore:
    """From ``init``: do not start; the actor exits normally at once."""


#: What ``init`` returns: the state, ``Ignore()`` or ``Stop(reason)``.
InitResult: TypeAlias = S | Ignore | Stop[S]
#: What a callback with a caller returns (``handle_call``, ``handle_response``, ...).
CallResult: TypeAlias = Reply[S] | NoReply[S] | Stop[S]
#: What a callback without a caller returns (``handle_cast``, ``handle_info``, ...).
NoticeResult: TypeAlias = NoReply[S] | Stop[S]
