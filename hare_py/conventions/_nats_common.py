"""What hare_py's NATS conventions share: the muxed inbox, headers, and the service API.

Clients receive every reply on one subscription, ``_INBOX.<unguessable>.*``;
a request's reply subject is ``<inbox>.<correlation id>``.

Servers answer the NATS service API as nats.go's ``micro`` package and
nats-py's ``nats.micro`` do, so that NATS tooling can discover and measure
them: ``$SRV.PING``, ``$SRV.INFO`` and ``$SRV.STATS``, each also as
``$SRV.<VERB>.<name>`` and ``$SRV.<VERB>.<name>.<id>``, subscribed without a
queue group (every instance answers) and answered by the convention, never by
a handler. The id is random per server instance; the counts are the server's
per endpoint (``EndpointStats``).
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import ConfigError, RemoteError
from ..transport.base import (
    EMPTY_PROPERTIES,
    NATS,
    Delivery,
    Message,
    NatsSession,
    OnCancel,
    OnDelivery,
    ReturnedMessage,
)
from ..transport.subjects import check_queue_group, check_subscribe_subject
from .base import (
    ClientConvention,
    EndpointStats,
    LocalAnswer,
    ServerConvention,
    ServerStopping,
    UndecodableRequest,
)

__all__ = [
    "CONTENT_TYPE_HEADER",
    "ERROR_CODE_HEADER",
    "ERROR_HEADER",
    "Endpoint",
    "InboxClient",
    "NatsServer",
    "check_endpoint",
    "check_service",
    "error_code",
    "first_value",
    "inbox_correlation",
    "nats_headers",
]

ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
CONTENT_TYPE_HEADER = "Content-Type"
PING_TYPE = "io.nats.micro.v1.ping_response"
INFO_TYPE = "io.nats.micro.v1.info_response"
STATS_TYPE = "io.nats.micro.v1.stats_response"
_VERBS = ("PING", "INFO", "STATS")
# A service name and version as micro accepts them (semver.org's pattern).
SERVICE_NAME = re.compile(r"[A-Za-z0-9_-]+")
SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?",
    re.ASCII,
)
_CODE = re.compile(r"[0-9]{1,9}")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]+")
_MAX_ERROR_TEXT = 1000
_ID_ALPHABET = string.digits + string.ascii_letters
# How long a new session's subscriptions may take to reach the server: a server
# reports itself connected only once they have, so that no early call gets no-responders.
SETUP_FLUSH_TIMEOUT = 10.0


def inbox_correlation(subject: str) -> str | None:
    """The correlation id an inbox reply subject ``_INBOX.<id>.<cid>`` carries."""
    head, dot, cid = subject.rpartition(".")
    return cid if dot and head and cid else None


def nats_headers(headers: Mapping[str, Any]) -> dict[str, str | list[str]]:
    """Request headers as NATS carries them: string keys and string values."""
    out: dict[str, str | list[str]] = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not key or any(c in key for c in ": \r\n"):
            raise ConfigError(f"a NATS header name must be a token, got {key!r:.60}")
        if isinstance(value, str):
            values = [value]
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            values = list(value)
        else:
            raise ConfigError(f"NATS header {key!r} must be a string or strings, got {value!r:.60}")
        if any("\r" in v or "\n" in v for v in values):
            raise ConfigError(f"NATS header {key!r} holds a line break")
        out[key] = values[0] if len(values) == 1 else values
    return out


def first_value(headers: Mapping[str, Any], key: str) -> str | None:
    """The first value of a header that may repeat (then it arrives as a list)."""
    value = headers.get(key)
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def _header_text(text: str) -> str:
    """``text`` as a header value can carry it: no control characters, bounded."""
    return _CONTROL_CHARS.sub(" ", text).strip()[:_MAX_ERROR_TEXT]


def error_code(error: BaseException) -> tuple[str, str]:
    """The service API's (code, description) of an error reply.

    500 for a handler's exception, 400 for a request that cannot be decoded,
    503 for one a stopping server could not finish; a ``RemoteError`` whose
    type is a number keeps it as its code (a handler passes a code on so).
    """
    if isinstance(error, RemoteError):
        if _CODE.fullmatch(error.type):
            code, text = error.type, error.message
        else:
            code, text = "500", f"{error.type}: {error.message}"
    elif isinstance(error, UndecodableRequest):
        code, text = "400", str(error)
    elif isinstance(error, ServerStopping):
        code, text = "503", str(error)
    else:
        code, text = "500", f"{type(error).__name__}: {error}"
    return code, _header_text(text) or type(error).__name__


def service_id() -> str:
    """A random instance id shaped like nats' nuid: 22 letters and digits."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(22))


class InboxClient(ClientConvention[NatsSession]):
    """A client that receives every reply on one inbox subscription, ``<inbox>.*``."""

    wire_protocol = NATS

    _inbox: str | None = None

    async def setup(self, session: NatsSession, on_reply: OnDelivery, on_cancel: OnCancel) -> str:
        # One inbox for the client's life: the replies to requests sent on a session
        # that is draining (lame duck) also reach the session that succeeds it.
        if self._inbox is None:
            # Letters and digits only: the inbox is one token, whatever the alphabet.
            token = secrets.token_urlsafe(16).replace("-", "A").replace("_", "B")
            self._inbox = f"_INBOX.{token}"
        await session.subscribe(f"{self._inbox}.*", on_reply)
        return self._inbox

    def check_headers(self, headers: Mapping[str, Any]) -> None:
        nats_headers(headers)

    def request_subject(self, routing_key: str) -> str:
        """The subject a request with ``routing_key`` goes to."""
        return routing_key

    def returned_correlation(self, returned: ReturnedMessage) -> str | None:
        return inbox_correlation(returned.routing_key)

    def returned_address(self, returned: ReturnedMessage, routing_key: str) -> tuple[str, str]:
        return "", self.request_subject(routing_key)  # NATS names the reply subject only


@dataclass(frozen=True, slots=True, eq=False)
class Endpoint:
    """One subscription of a server, as the service API lists it."""

    name: str
    subject: str
    queue_group: str  # "" for none: every instance receives every request
    metadata: Mapping[str, str] | None = None
    stats: EndpointStats = field(default_factory=EndpointStats)


def check_service(name: str | None, version: str, metadata: Any, what: str) -> dict[str, str]:
    """``ConfigError`` unless micro would take this name and version; the metadata."""
    if name is not None and (not isinstance(name, str) or not SERVICE_NAME.fullmatch(name)):
        raise ConfigError(
            f"{what}: a service name is letters, digits, '-' and '_', got {name!r:.60}"
        )
    if not isinstance(version, str) or not SEMVER.fullmatch(version):
        raise ConfigError(f"{what}: version must be a semantic version, got {version!r:.60}")
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ConfigError(f"{what}: metadata must map strings to strings")
    return dict(metadata)


def check_endpoint(subject: object, queue_group: str, what: str) -> str:
    """``ConfigError`` unless ``subject`` can be subscribed in ``queue_group``."""
    if not isinstance(subject, str):
        raise ConfigError(f"{what} must be a subject string, got {subject!r:.60}")
    check_subscribe_subject(subject)
    if queue_group:
        check_queue_group(queue_group)
    return subject


class NatsServer(ServerConvention[NatsSession]):
    """A server half on NATS: its endpoints, the service API, and draining.

    ``setup`` subscribes every endpoint (in its queue group, if any) and the
    service API subjects, then flushes. ``unwrap`` of a subclass calls
    ``answer_control`` first and takes ``stats_of`` for the Incoming.
    """

    wire_protocol = NATS
    drains = True

    def __init__(
        self,
        name: str,
        version: str,
        description: str,
        metadata: Mapping[str, str],
        endpoints: Sequence[Endpoint],
    ) -> None:
        self.service_name = name
        self.service_id = service_id()
        self.version = version
        self.description = description
        self.metadata = dict(metadata)
        self.endpoints = tuple(endpoints)
        self.started: datetime | None = None
        # Exact subjects: a control request is told by its subject, which no
        # stale delivery of an earlier session can fake with a reused sid.
        self._control = {
            f"$SRV.{verb}{suffix}": verb
            for verb in _VERBS
            for suffix in ("", f".{name}", f".{name}.{self.service_id}")
        }
        # The endpoint of each subscription, by consumer tag (sids are unique in the
        # process), kept for every session still open: during a lame duck move the
        # session being left still delivers what it had.
        self._by_sid: dict[str, Endpoint] = {}
        self._tags: dict[NatsSession, list[str]] = {}  # every subscription, by session

    async def limit(self, session: NatsSession, prefetch: int) -> None:
        """NATS has no prefetch: a server holds what it was sent."""

    async def setup(
        self, session: NatsSession, on_request: OnDelivery, on_cancel: OnCancel
    ) -> None:
        by_sid, tags = self._by_sid, self._tags
        for gone in [s for s in tags if not s.is_open]:
            for tag in tags.pop(gone):
                by_sid.pop(tag, None)
        sids: list[str] = []
        tags[session] = sids
        for endpoint in self.endpoints:
            queue = endpoint.queue_group or None
            sid = await session.subscribe(endpoint.subject, on_request, queue=queue)
            by_sid[sid] = endpoint
            sids.append(sid)
        for subject in self._control:
            sids.append(await session.subscribe(subject, on_request))
        await session.flush(SETUP_FLUSH_TIMEOUT)
        if self.started is None:
            self.started = datetime.now(UTC)

    async def quiesce(self, session: NatsSession, timeout: float) -> None:
        for sid in self._tags.get(session, ()):  # a session's UNSUB again is a no-op
            await session.unsubscribe(sid)
        # The PONG comes after every message the server routed before the UNSUBs.
        await session.flush(timeout)

    async def flush(self, session: NatsSession, timeout: float) -> None:
        await session.flush(timeout)

    def stats_of(self, delivery: Delivery) -> EndpointStats | None:
        endpoint = self._by_sid.get(delivery.consumer_tag)
        return endpoint.stats if endpoint is not None else None

    def answer_control(self, delivery: Delivery) -> None:
        """Raise ``LocalAnswer`` for a service API request (PING, INFO, STATS)."""
        verb = self._control.get(delivery.routing_key)
        if verb is None:
            return
        reply = delivery.properties.reply_to
        if not reply:
            raise LocalAnswer(None)
        body = self.ping() if verb == "PING" else self.info() if verb == "INFO" else self.stats()
        raise LocalAnswer(Message("", reply, _dump(body), EMPTY_PROPERTIES))

    # -- the service API's answers, with nats.go micro's fields in its order ---------

    def _identity(self) -> dict[str, Any]:
        return {
            "name": self.service_name,
            "id": self.service_id,
            "version": self.version,
            "metadata": self.metadata,
        }

    def ping(self) -> dict[str, Any]:
        return {**self._identity(), "type": PING_TYPE}

    def info(self) -> dict[str, Any]:
        return {
            **self._identity(),
            "type": INFO_TYPE,
            "description": self.description,
            "endpoints": [
                {
                    "name": e.name,
                    "subject": e.subject,
                    "queue_group": e.queue_group,
                    "metadata": None if e.metadata is None else dict(e.metadata),
                }
                for e in self.endpoints
            ],
        }

    def stats(self) -> dict[str, Any]:
        # Microseconds always: nats-py parses '%Y-%m-%dT%H:%M:%S.%fZ', Go any RFC 3339.
        started = (self.started or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return {
            **self._identity(),
            "type": STATS_TYPE,
            "started": started,
            "endpoints": [_endpoint_stats(e) for e in self.endpoints],
        }


def _endpoint_stats(endpoint: Endpoint) -> dict[str, Any]:
    stats = endpoint.stats
    last = stats.last_error
    return {
        "name": endpoint.name,
        "subject": endpoint.subject,
        "queue_group": endpoint.queue_group,
        "num_requests": stats.requests,
        "num_errors": stats.errors,
        "last_error": "" if last is None else ":".join(error_code(last)),
        "processing_time": stats.processing_ns,
        "average_processing_time": stats.processing_ns // stats.requests if stats.requests else 0,
        "data": None,  # nats-py's reader wants the key; nats.go takes null
    }


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
