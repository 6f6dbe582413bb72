"""A sans-I/O NATS client: bytes in, events out; calls in, bytes out.

Rules this module keeps:

- No I/O, no event loop, no clock. ``receive_data`` parses every whole
  operation buffered so far, keeps the partial tail and returns the events;
  ``data_to_send`` hands back everything queued since its last call. The
  caller owns the socket, the timers and the waiting.
- The handshake lives here. The server's first INFO queues CONNECT (verbose
  and pedantic off, headers and no_responders on) and a PING; the PONG that
  answers it is ``Connected``. Every PING from the server queues its PONG.
- It is a security boundary. Every length the server announces is checked
  before anything is buffered (``NatsLimits``): control lines, the INFO line,
  payloads (the server's ``max_payload``, never above a hard cap), header
  blocks, header counts, subject bytes and tokens. A stream that breaks the
  protocol or a bound raises ``NatsProtocolError`` and nothing else (never
  IndexError, ValueError or UnicodeDecodeError); the connection is then done.
- A well-framed message whose *content* is bad (a header block that is not
  ``NATS/1.0``, a subject that is not UTF-8, too many headers) is
  ``BadMsgReceived``, not an exception: any client may publish such bytes,
  and one bad publisher must not drop its subscribers' connections.
- Parsing is linear: one bytearray with a read offset, a CRLF search that
  resumes where the last one stopped, payloads copied once out of a memoryview.
- Nothing unchecked goes out. Subjects, queue groups, header keys and values
  and payload sizes are checked first; a value NATS cannot carry raises
  ``InvalidSubject``, ``InvalidHeader`` or ``PayloadTooLarge`` (ConfigErrors)
  before anything is queued, and the connection stays usable.
- ``-ERR`` texts are classified as nats-server 2.9 acts on them
  (``err_closes_connection``): permission violations, invalid subjects and the
  subscription limit leave the connection open; everything else closes it.
- Credentials appear only in the CONNECT bytes, never in a repr or an error.

Errors::

    HareError
    ├── NatsProtocolError     the server's bytes broke NATS or a bound: reconnect
    └── ConfigError
        ├── InvalidSubject    a subject or queue group NATS cannot carry
        ├── InvalidHeader     a header key or value NATS cannot carry
        └── PayloadTooLarge   headers + payload over the server's max_payload
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from ...errors import ConfigError, HareError
from .. import subjects
from ..subjects import InvalidSubject as InvalidSubject

__all__ = [
    "DEFAULT_LIMITS",
    "BadMsgReceived",
    "Connected",
    "ConnectionState",
    "ErrReceived",
    "Event",
    "Headers",
    "InfoReceived",
    "InvalidHeader",
    "InvalidSubject",
    "MsgReceived",
    "NatsClientProtocol",
    "NatsLimits",
    "NatsProtocolError",
    "OkReceived",
    "PayloadTooLarge",
    "PingReceived",
    "PongReceived",
    "ServerInfo",
    "check_publish_subject",
    "check_subscribe_subject",
    "err_closes_connection",
]

_CRLF = b"\r\n"
_HEADER_LINE = b"NATS/1.0"
_DEFAULT_MAX_PAYLOAD = 1 << 20  # nats-server's default, when INFO leaves it out
_MAX_DIGITS = 10  # sizes: a 64 MiB cap needs 8
_MAX_SID_DIGITS = 19
_PLAIN_TOKEN = re.compile(r"[0-9A-Za-z_-]{1,64}").fullmatch  # a valid token, in ASCII

_HEADER_KEY = re.compile(rb"[!-9;-~]+")  # printable ASCII but ':'
_HEADER_VALUE = re.compile(rb"(?:[^\x00-\x20\x7f][^\x00-\x08\x0a-\x1f\x7f]*)?")

# -ERR texts after which nats-server 2.9 keeps the connection open, as
# lower-case prefixes (server/client.go: pubPermissionViolation,
# subPermissionViolation, replySubjectViolation, maxTokensViolation,
# maxSubsExceeded, processSub's "Invalid Subject", pedantic "Invalid Publish
# Subject"). Every other text closes it: 'Stale Connection', 'Authorization
# Violation', 'Authentication Timeout', 'User/Account Authentication Expired',
# 'Maximum Payload Violation', 'Unknown Protocol Operation', 'maximum control
# line exceeded', 'maximum connections exceeded', 'invalid client protocol',
# 'Secure Connection - TLS Required', and the 'Parser Error' and 'Slow
# Consumer' of the protocol documentation. An unknown text closes too.
_KEEPS_OPEN = (
    "permissions violation",
    "maximum subscriptions exceeded",
    "invalid subject",
    "invalid publish subject",
)
_AUTH_ERRORS = (
    "authorization violation",
    "authentication timeout",
    "authorization timeout",
    "user authentication expired",
    "user authentication revoked",
    "account authentication expired",
)


# -- errors -----------------------------------------------------------------------


class NatsProtocolError(HareError):
    """The server's bytes broke the NATS protocol or one of the parser's bounds,
    or a call came in a state that forbids it.

    The byte stream cannot be trusted past this point: close the connection
    and connect again.
    """


class InvalidHeader(ConfigError):
    """A header key or value that NATS cannot carry; the message says why."""


class PayloadTooLarge(ConfigError):
    """Headers and payload together exceed the server's ``max_payload``.

    nats-server would close the whole connection with 'Maximum Payload
    Violation', so the message is refused before it is sent. Send less.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a message of {size} bytes exceeds the server's max_payload of {limit}")
        self.size = size
        self.limit = limit


def err_closes_connection(text: str) -> bool:
    """Whether nats-server closes the connection after sending ``-ERR 'text'``."""
    return not text.lower().startswith(_KEEPS_OPEN)


# -- limits and server info ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NatsLimits:
    """The parser's bounds, in bytes unless said otherwise."""

    control_line: int = 4096  # MSG/HMSG/-ERR/... lines, without their CRLF
    info_line: int = 64 * 1024
    max_payload: int = 64 * 1024 * 1024  # hard cap above the server's max_payload
    header_block: int = 64 * 1024
    headers: int = 256  # header lines per message
    subject_bytes: int = 1024  # also for reply subjects and queue groups
    subject_tokens: int = 64


DEFAULT_LIMITS = NatsLimits()


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """The fields of an INFO that a client acts on; ``raw`` holds all of them."""

    server_id: str = ""
    server_name: str = ""
    version: str = ""
    proto: int = 0
    headers: bool = False
    max_payload: int = _DEFAULT_MAX_PAYLOAD
    auth_required: bool = False
    tls_required: bool = False
    tls_available: bool = False
    client_id: int = 0
    nonce: str = ""
    connect_urls: tuple[str, ...] = ()
    lame_duck_mode: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


def _info_field(raw: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = raw.get(key, default)
    # bool is an int to Python, but never to the server
    if type(value) is not kind:
        raise NatsProtocolError(f"INFO field {key!r} is not a {kind.__name__}")
    return value


def _server_info(raw: Mapping[str, Any]) -> ServerInfo:
    urls = raw.get("connect_urls", [])
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        raise NatsProtocolError("INFO field 'connect_urls' is not a list of strings")
    return ServerInfo(
        server_id=_info_field(raw, "server_id", str, ""),
        server_name=_info_field(raw, "server_name", str, ""),
        version=_info_field(raw, "version", str, ""),
        proto=_info_field(raw, "proto", int, 0),
        headers=_info_field(raw, "headers", bool, False),
        max_payload=_info_field(raw, "max_payload", int, _DEFAULT_MAX_PAYLOAD),
        auth_required=_info_field(raw, "auth_required", bool, False),
        tls_required=_info_field(raw, "tls_required", bool, False),
        tls_available=_info_field(raw, "tls_available", bool, False),
        client_id=_info_field(raw, "client_id", int, 0),
        nonce=_info_field(raw, "nonce", str, ""),
        connect_urls=tuple(urls),
        lame_duck_mode=_info_field(raw, "ldm", bool, False),
        raw=raw,
    )


# -- events -----------------------------------------------------------------------

Headers: TypeAlias = tuple[tuple[str, str], ...]
"""Header (key, value) pairs in wire order; a key may repeat (multi-valued)."""


@dataclass(frozen=True, slots=True)
class InfoReceived:
    """INFO: the first one queues CONNECT and PING; later ones update the cluster."""

    info: ServerInfo


@dataclass(frozen=True, slots=True)
class Connected:
    """The PONG to the handshake's PING: the server accepted CONNECT."""


@dataclass(slots=True)  # not frozen: one per message, and a frozen init costs 3x
class MsgReceived:
    """MSG or HMSG. ``headers`` is None for MSG; ``status`` is an HMSG's inline
    status (``NATS/1.0 503``: no responders), with its ``description``."""

    sid: int
    subject: str
    reply: str | None
    payload: bytes
    headers: Headers | None = None
    status: int | None = None
    description: str = ""

    @property
    def no_responders(self) -> bool:
        """The server's answer to a request that no subscriber received."""
        return self.status == 503 and not self.payload

    def header(self, key: str) -> str | None:
        """The first value of header ``key`` (case-sensitive), or None."""
        for name, value in self.headers or ():
            if name == key:
                return value
        return None

    def header_values(self, key: str) -> list[str]:
        """Every value of header ``key`` (case-sensitive), in wire order."""
        return [value for name, value in self.headers or () if name == key]


@dataclass(frozen=True, slots=True)
class BadMsgReceived:
    """A well-framed MSG/HMSG whose subject or headers are unusable; drop it.

    ``subject`` and ``reply`` are decoded with replacement characters, for logs.
    """

    sid: int
    subject: str
    reply: str | None
    error: NatsProtocolError


@dataclass(frozen=True, slots=True)
class PingReceived:
    """The server's PING; its PONG is queued."""


@dataclass(frozen=True, slots=True)
class PongReceived:
    """A PONG to one of our PINGs (``ping()``), oldest first."""


@dataclass(frozen=True, slots=True)
class OkReceived:
    """+OK (only sent in verbose mode, which CONNECT turns off)."""


@dataclass(frozen=True, slots=True)
class ErrReceived:
    """-ERR. ``closes`` says whether the server closes the connection after it."""

    text: str
    closes: bool

    @property
    def auth(self) -> bool:
        """A login failure or expiry ('Authorization Violation' and kin)."""
        return self.text.lower().startswith(_AUTH_ERRORS)


Event: TypeAlias = (
    InfoReceived
    | Connected
    | MsgReceived
    | BadMsgReceived
    | PingReceived
    | PongReceived
    | OkReceived
    | ErrReceived
)


class ConnectionState(enum.Enum):
    AWAIT_INFO = "await-info"
    CONNECTING = "connecting"  # CONNECT and PING sent, PONG awaited
    CONNECTED = "connected"
    CLOSED = "closed"  # a closing -ERR arrived, or the stream broke


# -- outgoing checks ------------------------------------------------------------------


def check_subscribe_subject(subject: str, limits: NatsLimits = DEFAULT_LIMITS) -> bytes:
    """``subject`` encoded, if it may be subscribed to; else ``InvalidSubject``.

    Tokens are non-empty and free of whitespace and control characters;
    ``*`` matches one token and ``>`` the rest, each only as a whole token,
    ``>`` only last.
    """
    return subjects.check_subscribe_subject(
        subject, max_bytes=limits.subject_bytes, max_tokens=limits.subject_tokens
    )


def check_publish_subject(subject: str, limits: NatsLimits = DEFAULT_LIMITS) -> bytes:
    """``subject`` encoded, if it may be published to; else ``InvalidSubject``.

    As ``check_subscribe_subject``, and no ``*`` or ``>`` anywhere.
    """
    return subjects.check_publish_subject(
        subject, max_bytes=limits.subject_bytes, max_tokens=limits.subject_tokens
    )


def _encode_headers(
    headers: Mapping[str, str] | Sequence[tuple[str, str]], limits: NatsLimits
) -> bytes:
    items = headers.items() if isinstance(headers, Mapping) else headers
    lines = [_HEADER_LINE, _CRLF]
    for count, (key, value) in enumerate(items, 1):
        if count > limits.headers:
            raise InvalidHeader(f"more than {limits.headers} headers")
        try:
            k, v = key.encode(), value.encode()
        except (UnicodeEncodeError, AttributeError):
            raise InvalidHeader(f"header {key!r} is not a pair of strings") from None
        if _HEADER_KEY.fullmatch(k) is None:
            raise InvalidHeader(f"header key {key!r}: printable ASCII without ':' or spaces")
        if _HEADER_VALUE.fullmatch(v) is None:
            raise InvalidHeader(
                f"header {key!r}: a value has no control characters and starts with no space"
            )
        lines += (k, b": ", v, _CRLF)
    lines.append(_CRLF)
    block = b"".join(lines)
    if len(block) > limits.header_block:
        raise InvalidHeader(f"the header block is longer than {limits.header_block} bytes")
    return block


# -- incoming helpers ---------------------------------------------------------------


def _number(token: bytes, digits: int, what: str) -> int:
    if not token.isdigit() or len(token) > digits:
        raise NatsProtocolError(f"bad {what} {token[:24]!r}")
    return int(token)


def _check_received_subject(name: bytes, limits: NatsLimits) -> None:
    if len(name) > limits.subject_bytes:
        raise NatsProtocolError(f"a subject longer than {limits.subject_bytes} bytes")
    if name.count(b".") >= limits.subject_tokens:
        raise NatsProtocolError(f"a subject of over {limits.subject_tokens} tokens")


def _parse_headers(block: bytes, limits: NatsLimits) -> tuple[Headers, int | None, str]:
    """(headers, status, description) of an HMSG header block, or NatsProtocolError."""
    if not block.startswith(_HEADER_LINE) or not block.endswith(b"\r\n\r\n"):
        raise NatsProtocolError("the header block is not NATS/1.0 ... CRLF CRLF")
    if block.count(_CRLF) > limits.headers + 2:
        raise NatsProtocolError(f"more than {limits.headers} headers")
    lines = block[:-4].split(_CRLF)
    status: int | None = None
    description = ""
    first = lines[0][len(_HEADER_LINE) :]
    try:
        if first:
            if first[:1] != b" ":
                raise NatsProtocolError("the header block is not NATS/1.0 ... CRLF CRLF")
            code, _, text = first.strip().partition(b" ")
            if len(code) != 3 or not code.isdigit():
                raise NatsProtocolError(f"bad status {code[:8]!r}")
            status, description = int(code), text.strip().decode()
        pairs = []
        for line in lines[1:]:
            key, sep, value = line.partition(b":")
            if not sep:
                raise NatsProtocolError("a header line without ':'")
            if key:  # nats.go skips empty keys too
                pairs.append((key.decode(), value.lstrip(b" \t").decode()))
    except UnicodeDecodeError:
        raise NatsProtocolError("a header that is not UTF-8") from None
    return tuple(pairs), status, description


#: How many checked publish subjects a connection keeps (it starts over when full).
_CHECKED_SUBJECTS = 256


@dataclass(slots=True)
class _Pending:
    """A MSG/HMSG control line whose payload has not all arrived."""

    sid: int
    subject: bytes
    reply: bytes | None
    header_size: int  # -1 for MSG
    size: int


# -- the protocol ---------------------------------------------------------------------


class NatsClientProtocol:
    """The client side of one NATS connection, without I/O.

    ``user``/``password`` or ``token`` go into CONNECT as given; ``name``
    names the connection in the server's monitoring; ``version`` is the
    client's, ``echo=False`` keeps our own publishes from our subscriptions,
    ``tls_required`` tells the server we want TLS (the driver upgrades the
    socket after INFO and before it flushes CONNECT).
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        version: str = "",
        lang: str = "python",
        echo: bool = True,
        tls_required: bool = False,
        limits: NatsLimits = DEFAULT_LIMITS,
        first_sid: int = 1,
    ) -> None:
        self._connect: dict[str, Any] = {
            "verbose": False,
            "pedantic": False,
            "tls_required": tls_required,
            "lang": lang,
            "version": version,
            "protocol": 1,  # asynchronous INFO: cluster updates, lame duck mode
            "echo": echo,
            "headers": True,
            "no_responders": True,
        }
        for key, value in (("name", name), ("user", user), ("pass", password)):
            if value is not None:
                self._connect[key] = value
        if token is not None:
            self._connect["auth_token"] = token
        self.limits = limits
        self.state = ConnectionState.AWAIT_INFO
        self.server_info: ServerInfo | None = None
        self.max_payload = 0  # until INFO: then min(server's max_payload, limits.max_payload)
        self.pings_outstanding = 0  # our PINGs without their PONG yet
        self._next_sid = first_sid
        self._buf = bytearray()
        self._scan = 0  # where the next CRLF search resumes
        self._pending: _Pending | None = None
        self._out: list[bytes] = []
        self._out_size = 0
        # Subjects published to, checked and encoded: a client sends to a few again and again.
        self._checked: dict[str, bytes] = {}
        # Prefixes of subjects checked: (encoded with the dot, its length, its dots).
        self._prefixes: dict[str, tuple[bytes, int, int]] = {}

    def __repr__(self) -> str:
        return f"<NatsClientProtocol {self.state.value}>"

    @property
    def closed(self) -> bool:
        """True once a closing -ERR arrived or the stream broke: nothing more is parsed."""
        return self.state is ConnectionState.CLOSED

    # -- outgoing -------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued since the last call, as one buffer (``b""`` if none)."""
        data = b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        return data

    @property
    def bytes_to_send(self) -> int:
        """How many bytes are queued for ``data_to_send``."""
        return self._out_size

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)

    def _require_info(self, what: str) -> None:
        if self.state is ConnectionState.AWAIT_INFO or self.state is ConnectionState.CLOSED:
            raise NatsProtocolError(f"cannot {what}: the connection is {self.state.value}")

    def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        reply: str | None = None,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    ) -> None:
        """Queue PUB, or HPUB when ``headers`` is given (even empty).

        All or nothing: ``InvalidSubject``, ``InvalidHeader`` or
        ``PayloadTooLarge`` before anything is queued.
        """
        state = self.state
        if state is ConnectionState.AWAIT_INFO or state is ConnectionState.CLOSED:
            self._require_info("publish")
        checked = self._checked
        head = checked.get(subject) if type(subject) is str else None
        if head is None:
            # A reply subject is new each time (a server answering): known by its prefix.
            head = self._under_known_prefix(subject)
            if head is None:
                head = self._check_subject(subject)
                if len(checked) >= _CHECKED_SUBJECTS:
                    checked.clear()
                checked[subject] = head
        if reply is not None:
            head += b" " + self._reply_subject(reply)
        size = len(payload)
        if headers is None:
            if size > self.max_payload:
                raise PayloadTooLarge(size, self.max_payload)
            self._queue(b"PUB %s %d\r\n%s\r\n" % (head, size, payload))
            return
        if self.server_info is not None and not self.server_info.headers:
            raise InvalidHeader("the server does not support headers")
        block = _encode_headers(headers, self.limits)
        total = len(block) + size
        if total > self.max_payload:
            raise PayloadTooLarge(total, self.max_payload)
        self._queue(b"HPUB %s %d %d\r\n%s%s\r\n" % (head, len(block), total, block, payload))

    def _reply_subject(self, reply: str) -> bytes:
        """``reply`` checked and encoded."""
        head = self._under_known_prefix(reply)
        return head if head is not None else self._check_subject(reply)

    def _under_known_prefix(self, subject: str) -> bytes | None:
        """``subject`` encoded, if it is a prefix checked before plus a token of ASCII
        letters, digits, ``-`` and ``_`` (a correlation id, say): only the token is
        checked then, against the bounds of the whole subject. Else None."""
        if type(subject) is not str:
            return None
        prefix, dot, token = subject.rpartition(".")
        known = self._prefixes.get(prefix) if dot else None
        if (
            known is not None
            and _PLAIN_TOKEN(token) is not None
            and known[1] + len(token) <= self.limits.subject_bytes
            and known[2] < self.limits.subject_tokens
        ):
            return known[0] + token.encode()
        return None

    def _check_subject(self, subject: str) -> bytes:
        """``subject`` checked in full and encoded; its prefix is known from then on."""
        limits = self.limits
        encoded = subjects.check_publish_subject(
            subject, max_bytes=limits.subject_bytes, max_tokens=limits.subject_tokens
        )
        prefix, dot, token = subject.rpartition(".")
        if dot:
            prefixes = self._prefixes
            if len(prefixes) >= _CHECKED_SUBJECTS:
                prefixes.clear()
            head = encoded[: len(encoded) - len(token.encode())]  # the prefix and its dot
            prefixes[prefix] = (head, len(head), head.count(b"."))
        return encoded

    def subscribe(self, subject: str, queue: str | None = None) -> int:
        """Queue SUB (in queue group ``queue`` if given); return the new sid."""
        self._require_info("subscribe")
        head = check_subscribe_subject(subject, self.limits)
        if queue is not None:
            head += b" " + subjects.check_queue_group(queue, max_bytes=self.limits.subject_bytes)
        sid = self._next_sid
        self._next_sid += 1
        self._queue(b"SUB %s %d\r\n" % (head, sid))
        return sid

    def unsubscribe(self, sid: int, max_msgs: int | None = None) -> None:
        """Queue UNSUB; with ``max_msgs`` the server ends it after that many more."""
        self._require_info("unsubscribe")
        if max_msgs is None:
            self._queue(b"UNSUB %d\r\n" % sid)
        elif max_msgs < 1:
            raise ConfigError(f"max_msgs must be at least 1, not {max_msgs}")
        else:
            self._queue(b"UNSUB %d %d\r\n" % (sid, max_msgs))

    def ping(self) -> None:
        """Queue PING; a ``PongReceived`` answers it."""
        self._require_info("ping")
        self.pings_outstanding += 1
        self._queue(b"PING\r\n")

    def pong(self) -> None:
        """Queue PONG (the server's PINGs are answered already)."""
        self._require_info("pong")
        self._queue(b"PONG\r\n")

    # -- incoming -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse every whole operation buffered so far; return the events they make."""
        if self.closed:
            return []
        buf = self._buf
        buf += data
        events: list[Event] = []
        pos = 0
        try:
            with memoryview(buf) as view:
                pos = self._parse(buf, view, events)
        except NatsProtocolError:
            self.state = ConnectionState.CLOSED
            buf.clear()
            raise
        if self.closed:
            buf.clear()
            self._pending = None
        else:
            del buf[:pos]
            self._scan = max(0, self._scan - pos)
        return events

    def _parse(self, buf: bytearray, view: memoryview, events: list[Event]) -> int:
        """Parse from the start of ``buf``; return how many bytes were used."""
        limits = self.limits
        pos = 0
        end = len(buf)
        while self.state is not ConnectionState.CLOSED:
            pending = self._pending
            if pending is not None:
                stop = pos + pending.size
                if end < stop + 2:
                    return pos
                if buf[stop] != 13 or buf[stop + 1] != 10:
                    raise NatsProtocolError("a message payload not followed by CRLF")
                events.append(self._message(pending, view, pos, stop))
                self._pending = None
                pos = stop + 2
                continue
            if pos >= end:
                return pos
            limit = limits.info_line if buf[pos] in b"Ii" else limits.control_line
            scan = self._scan
            eol = buf.find(_CRLF, scan if scan > pos else pos, pos + limit + 2)
            if eol < 0:
                if end - pos >= limit + 2:
                    raise NatsProtocolError(f"a control line longer than {limit} bytes")
                self._scan = max(pos, end - 1)
                return pos
            line = bytes(view[pos:eol])
            pos = eol + 2
            self._scan = pos
            if line[:4] == b"MSG " and self.state is not ConnectionState.AWAIT_INFO:
                after = self._whole_msg(line, buf, view, pos, events)
                if after >= 0:
                    pos = after
                    continue
            self._control_line(line, events)
        return pos

    def _whole_msg(
        self, line: bytes, buf: bytearray, view: memoryview, start: int, events: list[Event]
    ) -> int:
        """The common case, a valid MSG whose payload has arrived, in one step: append
        its event and return where the next operation starts. -1 for anything else,
        which the general path then parses (and refuses) as before, from the same line."""
        args = line[4:].split()
        count = len(args)
        if count != 3 and count != 4:
            return -1
        sid_token, size_token = args[1], args[-1]
        if not (
            sid_token.isdigit()
            and size_token.isdigit()
            and len(sid_token) <= _MAX_SID_DIGITS
            and len(size_token) <= _MAX_DIGITS
        ):
            return -1
        stop = start + int(size_token)
        if stop - start > self.max_payload or len(buf) < stop + 2:
            return -1
        if buf[stop] != 13 or buf[stop + 1] != 10:
            return -1
        limits = self.limits
        subject = args[0]
        reply = args[2] if count == 4 else None
        if len(subject) > limits.subject_bytes or subject.count(b".") >= limits.subject_tokens:
            return -1
        if reply is not None and (
            len(reply) > limits.subject_bytes or reply.count(b".") >= limits.subject_tokens
        ):
            return -1
        try:
            text = subject.decode()
            reply_text = None if reply is None else reply.decode()
        except UnicodeDecodeError:
            return -1
        events.append(MsgReceived(int(sid_token), text, reply_text, bytes(view[start:stop])))
        return stop + 2

    def _control_line(self, line: bytes, events: list[Event]) -> None:
        op, _, rest = line.partition(b" ")
        if b"\t" in op:
            op, _, tail = op.partition(b"\t")
            rest = tail + b" " + rest
        op = op.upper()
        state = self.state
        if op == b"MSG" or op == b"HMSG":
            if state is ConnectionState.AWAIT_INFO:
                raise NatsProtocolError(f"{op.decode()} before INFO")
            self._pending = self._msg_args(op, rest.split())
        elif op == b"PING":
            if state is ConnectionState.AWAIT_INFO:
                raise NatsProtocolError("PING before INFO")
            self._queue(b"PONG\r\n")
            events.append(PingReceived())
        elif op == b"PONG":
            if state is ConnectionState.CONNECTING:
                self.state = ConnectionState.CONNECTED
                events.append(Connected())
            elif self.pings_outstanding > 0:
                self.pings_outstanding -= 1
                events.append(PongReceived())
            else:
                raise NatsProtocolError("PONG without a PING")
        elif op == b"INFO":
            events.append(InfoReceived(self._info(rest)))
        elif op == b"-ERR":
            text = rest.strip().decode(errors="replace")
            if len(text) >= 2 and text[0] == text[-1] == "'":
                text = text[1:-1]
            closes = err_closes_connection(text)
            if closes:
                self.state = ConnectionState.CLOSED
            events.append(ErrReceived(text, closes))
        elif op == b"+OK":
            if state is ConnectionState.AWAIT_INFO:
                raise NatsProtocolError("+OK before INFO")
            events.append(OkReceived())
        else:
            raise NatsProtocolError(f"unknown operation {op[:16]!r}")

    def _info(self, rest: bytes) -> ServerInfo:
        try:
            raw = json.loads(rest.decode())
        except (ValueError, RecursionError):  # JSON and UTF-8 errors are ValueErrors
            raise NatsProtocolError("INFO is not JSON") from None
        if not isinstance(raw, dict):
            raise NatsProtocolError("INFO is not a JSON object")
        info = _server_info(raw)
        server_max = info.max_payload if info.max_payload > 0 else self.limits.max_payload
        self.max_payload = min(server_max, self.limits.max_payload)
        self.server_info = info
        if self.state is ConnectionState.AWAIT_INFO:
            self.state = ConnectionState.CONNECTING
            connect = json.dumps(self._connect, separators=(",", ":")).encode()
            self._queue(b"CONNECT %s\r\nPING\r\n" % connect)
        return info

    def _msg_args(self, op: bytes, args: list[bytes]) -> _Pending:
        has_headers = op == b"HMSG"
        fixed = 4 if has_headers else 3
        if len(args) not in (fixed, fixed + 1):
            raise NatsProtocolError(f"{op.decode()} with {len(args)} arguments")
        reply = args[2] if len(args) > fixed else None
        sid_token, size_token = args[1], args[-1]
        if (
            sid_token.isdigit()
            and size_token.isdigit()
            and len(sid_token) <= _MAX_SID_DIGITS
            and len(size_token) <= _MAX_DIGITS
        ):  # the common case, without two calls per message
            sid, size = int(sid_token), int(size_token)
        else:
            sid = _number(sid_token, _MAX_SID_DIGITS, "sid")
            size = _number(size_token, _MAX_DIGITS, "size")
        header_size = _number(args[-2], _MAX_DIGITS, "header size") if has_headers else -1
        if size > self.max_payload:
            raise NatsProtocolError(
                f"a message of {size} bytes exceeds the max_payload of {self.max_payload}"
            )
        if header_size > size:
            raise NatsProtocolError("a header size larger than the total size")
        return _Pending(sid, args[0], reply, header_size, size)

    def _message(
        self, pending: _Pending, view: memoryview, start: int, stop: int
    ) -> MsgReceived | BadMsgReceived:
        limits = self.limits
        subject, reply = pending.subject, pending.reply
        try:
            _check_received_subject(subject, limits)
            if reply is not None:
                _check_received_subject(reply, limits)
            try:
                text = subject.decode()
                reply_text = None if reply is None else reply.decode()
            except UnicodeDecodeError:
                raise NatsProtocolError("a subject that is not UTF-8") from None
            hsize = pending.header_size
            if hsize < 0:
                return MsgReceived(pending.sid, text, reply_text, bytes(view[start:stop]))
            if hsize > limits.header_block:
                raise NatsProtocolError(f"a header block over {limits.header_block} bytes")
            headers, status, description = _parse_headers(
                bytes(view[start : start + hsize]), limits
            )
        except NatsProtocolError as exc:
            return BadMsgReceived(
                pending.sid,
                subject.decode(errors="replace"),
                None if reply is None else reply.decode(errors="replace"),
                exc,
            )
        payload = bytes(view[start + hsize : stop])
        return MsgReceived(pending.sid, text, reply_text, payload, headers, status, description)
