"""A sans-I/O AMQP 0-9-1 client: bytes in, events out; calls in, bytes out.

Rules this module keeps:

- No I/O, no event loop, no clock. ``receive_data`` parses every whole frame in
  the buffer, keeps the partial tail, and returns the events those frames make;
  ``data_to_send`` hands back everything queued since its last call as one
  buffer. The caller owns the socket, the timers and the waiting.
- Everything that changes connection or channel state lives here: the
  handshake (protocol header, Start/StartOk with PLAIN, AMQPLAIN or EXTERNAL,
  Tune/TuneOk, Open/OpenOk),
  channel open/close in both directions, connection close in both directions.
  Replies the protocol owes the broker (StartOk, TuneOk, Open, the CloseOk
  handshakes) are queued automatically.
- Content (``basic.deliver``, ``basic.return``, ``basic.get-ok`` followed by a
  header and body frames) is reassembled per channel and surfaces as one
  ``ContentReceived`` with the whole body. Any other method from the broker on an
  open channel surfaces as ``MethodReceived``; matching replies to requests is
  the caller's job.
- While a channel (or the connection) is closing, incoming methods other than
  Close/CloseOk are dropped, as AMQP 0-9-1 says.
- A broken stream or a call the state does not allow raises ``ProtocolError``;
  the backend translates it into a ``hare_py.errors`` exception.
- Nothing the broker sends is buffered without bound: a frame over the
  negotiated ``frame_max`` (``HANDSHAKE_FRAME_MAX`` before ``connection.tune``)
  is refused from its 7-byte header, the negotiated ``frame_max`` is never
  over ``FRAME_MAX_LIMIT`` (a broker's 0, "no limit", included), and a body
  announced over ``max_body_size`` is counted and dropped as it streams by.
- One bad message is not a broken stream: a content header whose values do
  not decode, or a body over ``max_body_size``, still completes its message,
  as a ``ContentReceived`` with empty properties and the reason in
  ``undecodable``, so that the consumer can refuse it alone.
- The codec is pamqp, except for the frames every RPC makes (publish, deliver,
  content header, body: ``transport._amqp_codec``). Methods are pamqp objects; message
  properties are hare_py ``Properties``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from pamqp import commands, constants, encode, frame as pamqp_frame, header as pamqp_header
from pamqp.base import Frame
from pamqp.exceptions import UnmarshalingException
from pamqp.heartbeat import Heartbeat

from ..._frozen import quick_init
from .._amqp_codec import (
    FRAME_MAX_LIMIT,
    FRAME_MIN_SIZE,
    HANDSHAKE_FRAME_MAX,
    UndecodableProperties,
    decode_close,
    decode_deliver,
    decode_header,
    decode_start,
    encode_publish,
)
from ..base import EMPTY_PROPERTIES, NORMAL_CLOSE_TEXT, REPLY_SUCCESS, Message, Properties

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "FRAME_MAX_LIMIT",
    "FRAME_MIN_SIZE",
    "HANDSHAKE_FRAME_MAX",
    "PROTOCOL_HEADER",
    "AMQPClientProtocol",
    "ChannelClosed",
    "ChannelOpened",
    "ConnectionBlocked",
    "ConnectionClosed",
    "ConnectionOpened",
    "ConnectionStarted",
    "ConnectionState",
    "ConnectionTuned",
    "ConnectionUnblocked",
    "ContentReceived",
    "Event",
    "HeartbeatReceived",
    "MethodReceived",
    "ProtocolError",
    "UnencodableMessage",
]

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
_FRAME_HEADER = struct.Struct(">BHI")
_FRAME_OVERHEAD = constants.FRAME_HEADER_SIZE + 1  # type, channel, size + frame-end
_BODY = constants.FRAME_BODY
_HEADER = constants.FRAME_HEADER
_DELIVER = b"\x00\x3c\x00\x3c"  # class 60 (basic), method 60 (deliver)
_START = b"\x00\x0a\x00\x0a"
# basic.deliver; the closes, whose reply texts the broker may cut mid-character;
# connection.start, whose table goes through the bounded decoder
_BY_HAND = (_DELIVER, b"\x00\x14\x00\x28", b"\x00\x0a\x00\x32", _START)
MECHANISMS = ("PLAIN", "AMQPLAIN", "EXTERNAL")

DEFAULT_MAX_BODY_SIZE = 128 << 20  # RabbitMQ's own default max_message_size

# Methods a broker sends a client. Anything else (a queue.declare with a table
# nested a thousand deep, say) is refused by its method id, before pamqp decodes it.
_FROM_BROKER = frozenset(
    method.index
    for method in (
        commands.Connection.Start,
        commands.Connection.Secure,
        commands.Connection.Tune,
        commands.Connection.OpenOk,
        commands.Connection.Close,
        commands.Connection.CloseOk,
        commands.Connection.Blocked,
        commands.Connection.Unblocked,
        commands.Connection.UpdateSecretOk,
        commands.Channel.OpenOk,
        commands.Channel.Flow,
        commands.Channel.FlowOk,
        commands.Channel.Close,
        commands.Channel.CloseOk,
        commands.Exchange.DeclareOk,
        commands.Exchange.DeleteOk,
        commands.Exchange.BindOk,
        commands.Exchange.UnbindOk,
        commands.Queue.DeclareOk,
        commands.Queue.BindOk,
        commands.Queue.PurgeOk,
        commands.Queue.DeleteOk,
        commands.Queue.UnbindOk,
        commands.Basic.QosOk,
        commands.Basic.ConsumeOk,
        commands.Basic.Cancel,
        commands.Basic.CancelOk,
        commands.Basic.Return,
        commands.Basic.Deliver,
        commands.Basic.GetOk,
        commands.Basic.GetEmpty,
        commands.Basic.Ack,
        commands.Basic.Nack,
        commands.Basic.RecoverOk,
        commands.Tx.SelectOk,
        commands.Tx.CommitOk,
        commands.Tx.RollbackOk,
        commands.Confirm.SelectOk,
    )
)
_METHOD_ID = struct.Struct(">I")

ContentMethod: TypeAlias = commands.Basic.Deliver | commands.Basic.Return | commands.Basic.GetOk


class ProtocolError(Exception):
    """The byte stream broke AMQP 0-9-1, or a call came in a state that forbids it."""


class UnencodableMessage(ValueError):
    """Message ``index`` of a ``publish_many`` batch cannot be encoded; nothing was queued."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


class ConnectionState(enum.Enum):
    AWAIT_START = "await-start"
    AWAIT_TUNE = "await-tune"
    AWAIT_OPEN_OK = "await-open-ok"
    OPEN = "open"
    CLOSING = "closing"  # we sent connection.close
    CLOSED = "closed"


class _ChannelState(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"  # we sent channel.close
    CLOSED = "closed"  # the broker's close crossed ours: its close-ok to ours is still due


_WINDING_DOWN = (_ChannelState.CLOSING, _ChannelState.CLOSED)


# -- events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionStarted:
    """``connection.start`` arrived; StartOk is queued."""

    server_properties: Mapping[str, Any]
    mechanisms: str
    locales: str


@dataclass(frozen=True, slots=True)
class ConnectionTuned:
    """``connection.tune`` arrived; TuneOk and ``connection.open`` are queued."""

    channel_max: int
    frame_max: int
    heartbeat: int


@dataclass(frozen=True, slots=True)
class ConnectionOpened:
    """``connection.open-ok``: channels may be opened."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection closed: the broker's close (CloseOk is queued) or our CloseOk."""

    reply_code: int
    reply_text: str
    by: Literal["client", "broker"]
    class_id: int = 0
    method_id: int = 0


@dataclass(frozen=True, slots=True)
class ConnectionBlocked:
    """``connection.blocked``: the broker stops reading publishes (resource alarm)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionUnblocked:
    """``connection.unblocked``: publishing is accepted again."""


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    """``channel.open-ok`` for a channel we opened."""

    channel: int


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """A channel closed: the broker's close (CloseOk is queued) or our CloseOk."""

    channel: int
    reply_code: int
    reply_text: str
    by: Literal["client", "broker"]
    class_id: int = 0
    method_id: int = 0


@quick_init
@dataclass(frozen=True, slots=True)
class MethodReceived:
    """Any other method on an open channel (declare-oks, acks, cancels, ...)."""

    channel: int
    method: Frame


@quick_init
@dataclass(frozen=True, slots=True)
class ContentReceived:
    """A deliver/return/get-ok with its properties and its whole body.

    ``undecodable`` says why the message cannot be decoded: its properties are
    then empty; ``dropped`` counts the body bytes dropped (a body over
    ``max_body_size``, whose ``body`` is then empty).
    """

    channel: int
    method: ContentMethod
    properties: Properties
    body: bytes
    undecodable: str | None = None
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class HeartbeatReceived:
    """A heartbeat frame arrived."""


Event: TypeAlias = (
    ConnectionStarted
    | ConnectionTuned
    | ConnectionOpened
    | ConnectionClosed
    | ConnectionBlocked
    | ConnectionUnblocked
    | ChannelOpened
    | ChannelClosed
    | MethodReceived
    | ContentReceived
    | HeartbeatReceived
)


@dataclass(slots=True)
class _Content:
    """A content method waiting for its header and body frames."""

    method: ContentMethod
    body_size: int = -1  # -1 until the content header arrives
    properties: Properties | None = None
    chunks: list[bytes] = field(default_factory=list)
    received: int = 0
    undecodable: str | None = None
    keep: bool = True  # False: a body over max_body_size, counted and dropped


# -- the protocol ---------------------------------------------------------------


class AMQPClientProtocol:
    """The client side of one AMQP 0-9-1 connection, without I/O.

    The protocol header is queued on construction. ``mechanism`` is the login
    (one of ``MECHANISMS``); ``heartbeat`` is what TuneOk asks for, in whole
    seconds (0 disables); ``frame_max`` and ``channel_max`` (0: no wish) only
    ever lower what the broker offers, and ``frame_max`` never goes over
    ``FRAME_MAX_LIMIT``. A body announced over ``max_body_size`` bytes is not
    buffered: its message arrives empty, marked ``undecodable``.
    """

    def __init__(
        self,
        *,
        username: str = "guest",
        password: str = "guest",
        virtual_host: str = "/",
        heartbeat: int = 60,
        client_properties: Mapping[str, Any] | None = None,
        frame_max: int = 0,
        channel_max: int = 0,
        locale: str = "en_US",
        mechanism: str = "PLAIN",
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        if mechanism not in MECHANISMS:
            raise ValueError(f"unknown login mechanism {mechanism!r}; use one of {MECHANISMS}")
        self.max_body_size = max_body_size
        self._mechanism = mechanism
        self._username = username
        self._password = password
        self._virtual_host = virtual_host
        self._requested_heartbeat = heartbeat
        self._client_properties = dict(client_properties or {})
        self._requested_frame_max = frame_max
        self._requested_channel_max = channel_max
        self._locale = locale

        self.state = ConnectionState.AWAIT_START
        self.server_properties: Mapping[str, Any] = {}
        self.frame_max = 0  # 0 until tuned; then the negotiated limit (0: none)
        self.channel_max = 0
        self.heartbeat = 0
        self.blocked = False
        self.frames_received = 0  # whole frames: what proves the broker alive

        self._channels: dict[int, _ChannelState] = {}
        self._content: dict[int, _Content] = {}
        self._closing: tuple[int, str] = (0, "")
        self._inbuf = bytearray()
        self._outbuf: list[bytes] = [PROTOCOL_HEADER]
        self._outsize = len(PROTOCOL_HEADER)

    # -- outgoing -----------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued since the last call, as one buffer (``b""`` if none)."""
        data = b"".join(self._outbuf)
        self._outbuf.clear()
        self._outsize = 0
        return data

    @property
    def bytes_to_send(self) -> int:
        """How many bytes are queued for ``data_to_send``."""
        return self._outsize

    def _queue(self, data: bytes) -> None:
        self._outbuf.append(data)
        self._outsize += len(data)

    def _send(self, channel: int, value: pamqp_frame.FrameTypes) -> None:
        self._queue(pamqp_frame.marshal(value, channel))

    def send_heartbeat(self) -> None:
        """Queue a heartbeat frame."""
        self._queue(Heartbeat.marshal())

    def open_channel(self, channel: int | None = None) -> int:
        """Queue ``channel.open`` on ``channel`` (lowest free number if None); return it."""
        self._require_open()
        if channel is None:
            channel = 1
            while channel in self._channels:
                channel += 1
        limit = self.channel_max or 65535
        if not 1 <= channel <= limit:
            raise ProtocolError(f"channel {channel} is outside 1..{limit}")
        if channel in self._channels:
            raise ProtocolError(f"channel {channel} is already in use")
        self._channels[channel] = _ChannelState.OPENING
        self._send(channel, commands.Channel.Open())
        return channel

    def close_channel(
        self,
        channel: int,
        reply_code: int = REPLY_SUCCESS,
        reply_text: str = NORMAL_CLOSE_TEXT,
        class_id: int = 0,
        method_id: int = 0,
    ) -> None:
        """Queue ``channel.close``; ``ChannelClosed(by="client")`` follows the CloseOk."""
        self._require_open()
        state = self._channels.get(channel)
        if state is None:
            raise ProtocolError(f"channel {channel} is not open")
        if state in _WINDING_DOWN:
            return
        self._channels[channel] = _ChannelState.CLOSING
        self._content.pop(channel, None)
        self._send(channel, commands.Channel.Close(reply_code, reply_text, class_id, method_id))

    def send_method(self, channel: int, method: Frame) -> None:
        """Queue any method (declare, bind, consume, qos, ack, ...) on an open channel."""
        self._require_channel(channel)
        self._send(channel, method)

    def publish(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties = EMPTY_PROPERTIES,
        mandatory: bool = False,
    ) -> None:
        """Queue ``basic.publish``, its content header and its body in frame_max pieces.

        All or nothing: a value AMQP cannot carry raises ``ValueError`` before
        anything is queued.
        """
        self._require_channel(channel)
        frames = encode_publish(
            channel, exchange, routing_key, mandatory, body, properties, self.frame_max
        )
        self._outbuf += frames
        self._outsize += sum(map(len, frames))

    def publish_many(
        self, channel: int, messages: Sequence[Message], mandatory: bool = False
    ) -> None:
        """Queue every message of ``messages``, as ``publish`` would one by one.

        All or nothing: every message is encoded first, and one AMQP cannot
        carry raises ``UnencodableMessage`` (with its index) before anything
        is queued.
        """
        self._require_channel(channel)
        frames: list[bytes] = []
        frame_max = self.frame_max
        for index, message in enumerate(messages):
            try:
                frames += encode_publish(
                    channel,
                    message.exchange,
                    message.routing_key,
                    mandatory,
                    bytes(message.body),
                    message.properties,
                    frame_max,
                )
            except (TypeError, ValueError, AttributeError) as exc:
                raise UnencodableMessage(index, str(exc)) from None
        self._outbuf += frames
        self._outsize += sum(map(len, frames))

    def close(
        self,
        reply_code: int = REPLY_SUCCESS,
        reply_text: str = NORMAL_CLOSE_TEXT,
        class_id: int = 0,
        method_id: int = 0,
    ) -> None:
        """Queue ``connection.close``; ``ConnectionClosed(by="client")`` follows the CloseOk.

        Idempotent once closing or closed.
        """
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return
        self.state = ConnectionState.CLOSING
        self._closing = (reply_code, reply_text)
        self._content.clear()
        self._send(0, commands.Connection.Close(reply_code, reply_text, class_id, method_id))

    def _require_open(self) -> None:
        if self.state is not ConnectionState.OPEN:
            raise ProtocolError(f"the connection is {self.state.value}, not open")

    def _require_channel(self, channel: int) -> None:
        self._require_open()
        if self._channels.get(channel) is not _ChannelState.OPEN:
            raise ProtocolError(f"channel {channel} is not open")

    @property
    def closed(self) -> bool:
        """True once the close handshake finished, in either direction."""
        return self.state is ConnectionState.CLOSED

    def channel_is_open(self, channel: int) -> bool:
        """True once ``channel.open-ok`` arrived and until the channel closes."""
        return self._channels.get(channel) is _ChannelState.OPEN

    # -- incoming -----------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse every whole frame buffered so far; return the events they make."""
        if self.closed:
            return []
        buf = self._inbuf
        buf += data
        events: list[Event] = []
        offset = 0
        try:
            while not self.closed:
                size = self._next_frame_size(buf, offset)
                if size is None:
                    break
                raw = bytes(buf[offset : offset + size])
                offset += size
                self.frames_received += 1
                kind = raw[0]
                if kind in (_BODY, _HEADER) or (
                    kind == constants.FRAME_METHOD and raw[7:11] in _BY_HAND
                ):
                    self._fast_frame(kind, raw, events)
                    continue
                if kind == constants.FRAME_METHOD:
                    if size < 12:
                        raise ProtocolError("malformed frame: a method frame without a method id")
                    (method_id,) = _METHOD_ID.unpack_from(raw, 7)
                    if method_id not in _FROM_BROKER:
                        raise ProtocolError(
                            f"unexpected method {method_id >> 16}.{method_id & 0xFFFF} "
                            "from the broker"
                        )
                try:
                    _, channel, value = pamqp_frame.unmarshal(raw)
                except (UnmarshalingException, ValueError, struct.error, IndexError) as exc:
                    raise ProtocolError(f"malformed frame: {exc}") from None
                self._handle(channel, value, events)
        finally:
            del buf[:offset]
        if self.closed:
            buf.clear()  # nothing after close-ok / close matters
        return events

    def _next_frame_size(self, buf: bytearray, offset: int) -> int | None:
        """The size of the whole frame at ``offset``, or None if it is not all here."""
        available = len(buf) - offset
        if available >= 4 and buf[offset : offset + 4] == constants.AMQP:
            return 8 if available >= 8 else None
        if available < constants.FRAME_HEADER_SIZE:
            return None
        frame_type, _, payload = _FRAME_HEADER.unpack_from(buf, offset)
        if frame_type not in (
            constants.FRAME_METHOD,
            constants.FRAME_HEADER,
            constants.FRAME_BODY,
            constants.FRAME_HEARTBEAT,
        ):
            raise ProtocolError(f"unknown frame type {frame_type}")
        size = payload + _FRAME_OVERHEAD
        limit = self.frame_max or HANDSHAKE_FRAME_MAX
        if size > limit:
            what = "frame_max" if self.frame_max else "the handshake's frame limit"
            raise ProtocolError(f"frame of {size} bytes exceeds {what} {limit}")
        return size if available >= size else None

    def _fast_frame(self, kind: int, raw: bytes, events: list[Event]) -> None:
        """A body, content header, basic.deliver or close frame, decoded by ``_amqp_codec``."""
        if raw[-1] != constants.FRAME_END:
            raise ProtocolError("malformed frame: no frame-end octet")
        channel = (raw[1] << 8) | raw[2]
        payload = raw[7:-1]
        if kind == _BODY:
            self._handle_content(channel, payload, events)
            return
        try:
            if kind == _HEADER:
                try:
                    header: tuple[int, Properties, str | None] = (*decode_header(payload), None)
                except UndecodableProperties as exc:
                    header = (exc.body_size, EMPTY_PROPERTIES, exc.reason)
                self._handle_content(channel, header, events)
            elif payload[:4] == _DELIVER:
                self._handle_channel_method(channel, decode_deliver(payload), events)
            elif payload[:4] == _START:
                self._handle(channel, decode_start(payload), events)
            else:
                self._handle(channel, decode_close(payload), events)
        except (ValueError, IndexError, struct.error) as exc:
            raise ProtocolError(f"malformed frame: {exc}") from None

    def _handle(self, channel: int, value: pamqp_frame.FrameTypes, events: list[Event]) -> None:
        if isinstance(value, Heartbeat):
            events.append(HeartbeatReceived())
        elif isinstance(value, pamqp_header.ProtocolHeader):
            raise ProtocolError(
                "the broker refused AMQP 0-9-1 and offers "
                f"{value.major_version}-{value.minor_version}-{value.revision}"
            )
        elif channel == 0:
            if not isinstance(value, Frame):
                raise ProtocolError(f"{value.name} frame on channel 0")
            self._handle_connection_method(value, events)
        elif isinstance(value, Frame):
            self._handle_channel_method(channel, value, events)
        else:  # content arrives through _fast_frame
            raise ProtocolError(f"unexpected {value.name} frame on channel {channel}")

    def _handle_connection_method(self, method: Frame, events: list[Event]) -> None:
        state = self.state
        if isinstance(method, commands.Connection.Close):
            self._send(0, commands.Connection.CloseOk())
            self._connection_closed(
                ConnectionClosed(
                    method.reply_code or 0,
                    method.reply_text,
                    "broker",
                    method.class_id or 0,
                    method.method_id or 0,
                ),
                events,
            )
        elif isinstance(method, commands.Connection.CloseOk):
            if state is not ConnectionState.CLOSING:
                raise ProtocolError("connection.close-ok without a connection.close")
            code, text = self._closing
            self._connection_closed(ConnectionClosed(code, text, "client"), events)
        elif state is ConnectionState.CLOSING:
            pass  # AMQP: discard everything but close/close-ok while closing
        elif isinstance(method, commands.Connection.Start) and state is ConnectionState.AWAIT_START:
            self._on_start(method, events)
        elif isinstance(method, commands.Connection.Tune) and state is ConnectionState.AWAIT_TUNE:
            self._on_tune(method, events)
        elif (
            isinstance(method, commands.Connection.OpenOk)
            and state is ConnectionState.AWAIT_OPEN_OK
        ):
            self.state = ConnectionState.OPEN
            events.append(ConnectionOpened())
        elif isinstance(method, commands.Connection.Blocked):
            self.blocked = True
            events.append(ConnectionBlocked(method.reason))
        elif isinstance(method, commands.Connection.Unblocked):
            self.blocked = False
            events.append(ConnectionUnblocked())
        else:
            raise ProtocolError(f"unexpected {method.name} while {state.value}")

    def _on_start(self, method: commands.Connection.Start, events: list[Event]) -> None:
        mechanisms = method.mechanisms
        if self._mechanism not in mechanisms.split():
            raise ProtocolError(
                f"the broker offers no {self._mechanism} login (only {mechanisms!r})"
            )
        self.server_properties = dict(method.server_properties or {})
        if self._mechanism == "AMQPLAIN":
            # The response is a field table without its length; pamqp's
            # long strings are text, so this one frame is marshalled here.
            table = encode.field_table({"LOGIN": self._username, "PASSWORD": self._password})
            payload = b"".join(
                (
                    struct.pack(">HH", 10, 11),
                    encode.field_table(self._client_properties),
                    encode.short_string("AMQPLAIN"),
                    struct.pack(">I", len(table) - 4),
                    table[4:],
                    encode.short_string(self._locale),
                )
            )
            frame = _FRAME_HEADER.pack(constants.FRAME_METHOD, 0, len(payload))
            self._queue(frame + payload + constants.FRAME_END_CHAR)
        else:
            response = f"\0{self._username}\0{self._password}" if self._mechanism == "PLAIN" else ""
            self._send(
                0,
                commands.Connection.StartOk(
                    client_properties=self._client_properties,
                    mechanism=self._mechanism,
                    response=response,
                    locale=self._locale,
                ),
            )
        self.state = ConnectionState.AWAIT_TUNE
        events.append(ConnectionStarted(self.server_properties, mechanisms, method.locales))

    def _on_tune(self, method: commands.Connection.Tune, events: list[Event]) -> None:
        offered = method.frame_max or 0
        if offered and offered < FRAME_MIN_SIZE:
            raise ProtocolError(
                f"the broker offers frame_max {offered}, under AMQP's minimum of {FRAME_MIN_SIZE}"
            )
        self.channel_max = _lower(method.channel_max, self._requested_channel_max)
        wanted = _lower(self._requested_frame_max, FRAME_MAX_LIMIT)
        self.frame_max = _lower(offered, wanted)
        self.heartbeat = self._requested_heartbeat
        self._send(0, commands.Connection.TuneOk(self.channel_max, self.frame_max, self.heartbeat))
        self._send(0, commands.Connection.Open(virtual_host=self._virtual_host))
        self.state = ConnectionState.AWAIT_OPEN_OK
        events.append(ConnectionTuned(self.channel_max, self.frame_max, self.heartbeat))

    def _connection_closed(self, event: ConnectionClosed, events: list[Event]) -> None:
        self.state = ConnectionState.CLOSED
        self._channels.clear()
        self._content.clear()
        events.append(event)

    def _handle_channel_method(self, channel: int, method: Frame, events: list[Event]) -> None:
        if self.state is ConnectionState.CLOSING:
            return
        if self.state is not ConnectionState.OPEN:
            raise ProtocolError(f"{method.name} on channel {channel} before the connection opened")
        state = self._channels.get(channel)
        if state is None:
            raise ProtocolError(f"{method.name} on channel {channel}, which is not open")
        if isinstance(method, commands.Channel.Close):
            if state is _ChannelState.CLOSED:
                return  # closed already; only the close-ok to ours is still due
            self._send(channel, commands.Channel.CloseOk())
            if state is _ChannelState.CLOSING:
                # Our close crossed the broker's: the number stays taken until
                # the broker's close-ok to ours arrives.
                self._channels[channel] = _ChannelState.CLOSED
            else:
                del self._channels[channel]
            self._content.pop(channel, None)
            events.append(
                ChannelClosed(
                    channel,
                    method.reply_code or 0,
                    method.reply_text,
                    "broker",
                    method.class_id or 0,
                    method.method_id or 0,
                )
            )
        elif isinstance(method, commands.Channel.CloseOk):
            if state is _ChannelState.CLOSED:
                del self._channels[channel]  # reported closed when the broker's close came
                return
            if state is not _ChannelState.CLOSING:
                raise ProtocolError(f"channel.close-ok on channel {channel} without a close")
            del self._channels[channel]
            events.append(ChannelClosed(channel, REPLY_SUCCESS, "", "client"))
        elif state in _WINDING_DOWN:
            pass  # AMQP: discard everything but close/close-ok while closing
        elif isinstance(method, commands.Channel.OpenOk):
            if state is not _ChannelState.OPENING:
                raise ProtocolError(f"channel.open-ok on channel {channel}, which is open")
            self._channels[channel] = _ChannelState.OPEN
            events.append(ChannelOpened(channel))
        elif state is not _ChannelState.OPEN:
            raise ProtocolError(f"{method.name} on channel {channel} before channel.open-ok")
        elif isinstance(
            method, commands.Basic.Deliver | commands.Basic.Return | commands.Basic.GetOk
        ):
            if channel in self._content:
                raise ProtocolError(f"{method.name} on channel {channel} inside another message")
            self._content[channel] = _Content(method)
        else:
            events.append(MethodReceived(channel, method))

    def _handle_content(
        self,
        channel: int,
        value: bytes | tuple[int, Properties, str | None],
        events: list[Event],
    ) -> None:
        """A body chunk, or a content header's (body size, properties, why undecodable)."""
        state = self._channels.get(channel)
        if self.state is ConnectionState.CLOSING or state in _WINDING_DOWN:
            return
        pending = self._content.get(channel)
        if pending is None:
            what = "body" if isinstance(value, bytes) else "content header"
            raise ProtocolError(f"{what} on channel {channel} without a content method")
        if isinstance(value, tuple):
            if pending.properties is not None:
                raise ProtocolError(f"a second content header on channel {channel}")
            pending.body_size, pending.properties, pending.undecodable = value
            if pending.body_size > self.max_body_size:
                pending.keep = False
                pending.properties = EMPTY_PROPERTIES
                pending.undecodable = (
                    f"a body of {pending.body_size} bytes is over max_body_size "
                    f"({self.max_body_size} bytes)"
                )
        else:
            if pending.properties is None:
                raise ProtocolError(f"content body before its header on channel {channel}")
            if pending.keep:
                pending.chunks.append(value)
            pending.received += len(value)
        if pending.received > pending.body_size:
            raise ProtocolError(
                f"{pending.received} body bytes on channel {channel}, "
                f"the header announced {pending.body_size}"
            )
        if pending.received == pending.body_size:
            del self._content[channel]
            chunks = pending.chunks
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            events.append(
                ContentReceived(
                    channel,
                    pending.method,
                    pending.properties,
                    body,
                    pending.undecodable,
                    0 if pending.keep else pending.received,
                )
            )


def _lower(offered: int, wanted: int) -> int:
    """The negotiated limit: the broker's offer, lowered to ours; 0 means no limit."""
    if not wanted:
        return offered
    if not offered:
        return wanted
    return min(offered, wanted)
