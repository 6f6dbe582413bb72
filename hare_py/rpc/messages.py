"""The values RPC callbacks see and return."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .._frozen import quick_init
from ..errors import RemoteError

__all__ = [
    "ConnectedMeta",
    "Forward",
    "Request",
    "Response",
    "Returned",
]

S = TypeVar("S")


@quick_init
@dataclass(frozen=True, slots=True)
class Request:
    """A request on its way out; ``handle_request`` may ``replace()`` any field.

    ``deadline`` is on the event loop's clock (``anyio.current_time()``).
    ``idempotent=True`` lets hare_py republish it after a reconnect instead of
    failing it with ``ConnectionLost``.
    """

    payload: Any
    routing_key: str = ""
    headers: Mapping[str, Any] = field(default_factory=dict)
    correlation_id: str = ""
    deadline: float = math.inf
    idempotent: bool = False
    #: The caller's trace id, on a server, where the convention carries one (Loom).
    trace_id: str | None = None

    def replace(self, **changes: Any) -> Request:
        """A copy with ``changes`` applied, e.g. ``request.replace(routing_key="v2.x")``."""
        return dataclasses.replace(self, **changes)


@quick_init
@dataclass(frozen=True, slots=True)
class Response:
    """A reply from the server, decoded by the client's codec.

    ``error`` is set when the server answered with an error instead of a value.
    """

    payload: Any
    headers: Mapping[str, Any]
    correlation_id: str
    content_type: str | None = None
    error: RemoteError | None = None


@dataclass(frozen=True, slots=True)
class Returned:
    """A mandatory request the broker could not route (``basic.return``)."""

    request: Request
    exchange: str
    routing_key: str
    reply_code: int
    reply_text: str


@dataclass(frozen=True, slots=True)
class ConnectedMeta:
    """What ``handle_connected`` learns each time the channel opens."""

    reply_queue: str
    exchange: str
    connects: int  # 1 on the first channel, then one more per reopened channel


@quick_init
@dataclass(frozen=True, slots=True)
class Forward(Generic[S]):
    """From ``handle_request``: publish the request (``request`` rewrites it)."""

    state: S
    request: Request | None = None
