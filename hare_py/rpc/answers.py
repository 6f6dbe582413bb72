"""The server's bounded cache of answers, so that a repeated request is answered, not redone.

A request comes again in two ways. Its caller repeats it with the same request
id (the Cloud.Service.RPC1 conventions' ``RequestId``). Or the broker
redelivers it: the server had sent the reply, and its channel or connection
closed before the ack reached the broker (a node restarted, a TCP cut). Then
the caller already has its answer and the broker still holds the request,
marked redelivered. Such a request is keyed on its correlation id and reply
address, and answered from the cache again: the caller ignores the second
reply, and the handler runs once.

The cache is bounded three ways: ``count`` entries, ``max_bytes`` of answer
bodies, and time. An entry lives for the request's time to live (its
expiration, which a hare_py client sets to what is left of the caller's
deadline; after it the broker drops the request rather than redeliver it), or
``ttl`` seconds for a request without one. This holds for one server: a
request redelivered to another instance is handled again there (handling is
at least once across instances).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import NamedTuple

__all__ = ["Answer", "AnswerCache"]

#: Seconds an answer is kept for a request that carries no expiration.
DEFAULT_TTL = 60.0
#: Bytes of answer bodies kept at most; the oldest go first.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024


class Answer(NamedTuple):
    body: bytes
    content_type: str | None
    error: BaseException | None


class AnswerCache:
    """Answers by key, oldest first, within ``count`` entries, ``max_bytes`` and time."""

    __slots__ = ("_bytes", "_entries", "count", "max_bytes", "ttl")

    def __init__(
        self, count: int, *, max_bytes: int = DEFAULT_MAX_BYTES, ttl: float = DEFAULT_TTL
    ) -> None:
        self.count = count
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._entries: OrderedDict[Hashable, tuple[float, Answer]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, now: float) -> Answer | None:
        """The answer kept for ``key``, unless it has expired."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def put(self, key: Hashable, answer: Answer, now: float, ttl: float | None = None) -> None:
        """Keep ``answer`` for ``ttl`` seconds (default ``self.ttl``), evicting the oldest
        and the expired ones to stay within the bounds."""
        if not self.count or len(answer.body) > self.max_bytes:
            return
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1].body)
        entries[key] = (now + (self.ttl if ttl is None else ttl), answer)
        self._bytes += len(answer.body)
        while entries and (
            len(entries) > self.count
            or self._bytes > self.max_bytes
            or next(iter(entries.values()))[0] <= now
        ):
            _, (_, dropped) = entries.popitem(last=False)
            self._bytes -= len(dropped.body)
