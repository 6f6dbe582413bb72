"""Every byte aiormq reads passes through here first, one whole frame at a time.

aiormq decodes each frame with pamqp as soon as it is read, on the
connection's reader task, where any failure ends the connection; and it
buffers whatever frame size the broker announces. The stream reader aiormq
is given (through its ``transport_factory``) is therefore a ``FrameGuard``,
which reads the broker's frames itself before aiormq sees them.

Rules this module keeps:

- No frame is buffered before its size is checked against the limit:
  ``HANDSHAKE_FRAME_MAX`` until ``connection.tune``, then the negotiated
  ``frame_max`` (never over ``FRAME_MAX_LIMIT``, a broker's 0 included; see
  ``_RawConnection._rpc``). A frame over it ends the connection (501).
- pamqp never decodes message properties. A content header reaches aiormq
  with none, and a tag in its unused ``weight`` field; the properties, decoded
  by hare_py's bounded codec, or why they did not decode, wait in the
  ``HeaderStore`` under that tag for the channel to ``take`` them.
- A body announced over ``max_body_size`` is not buffered: aiormq is told the
  body is empty, the body frames are counted and dropped as they arrive (each
  passed on as a heartbeat, so that they still count as signs of life), and
  the message is marked undecodable. A body frame with no message to belong
  to, or beyond its message's size, ends the connection (505).
- Only methods a broker may send reach pamqp (a client-bound method holds no
  table pamqp could choke on); the tables of ``connection.start`` are checked
  by the bounded codec first, and names and reply texts that are not UTF-8
  (a routing key from a raw publisher; a reply text the broker cut
  mid-character) get replacement characters instead of ending the connection.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
from aiormq.exceptions import ProtocolSyntaxError
from pamqp import commands
from yarl import URL

from ..._frozen import quick_init
from .._amqp_codec import (
    HANDSHAKE_FRAME_MAX,
    UndecodableProperties,
    decode_header,
    decode_start,
)
from ..base import EMPTY_PROPERTIES, Properties

__all__ = ["FrameGuard", "FrameRefused", "GuardedTransport", "HeaderStore", "Incoming"]

FRAME_ERROR = 501
UNEXPECTED_FRAME = 505

_FRAME = struct.Struct(">BHI")
_HEADER = struct.Struct(">HHQH")  # class, weight, body size, property flags
_METHOD_ID = struct.Struct(">I")
_END = 0xCE
_REWRITTEN = struct.Struct(">BHIHHQHB")  # a content header frame without properties
_CHUNK = 1 << 16
_HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"
_METHOD, _CONTENT_HEADER, _BODY = 1, 2, 3
_START = commands.Connection.Start.index
# Methods with texts a peer controls (names, reply texts a broker cuts at a byte
# count): their short strings, when not UTF-8, are repaired, since pamqp fails on them.
_TEXTS: dict[int, tuple[int, ...]] = {
    commands.Basic.Deliver.index: (0, 9, 0, 0),
    commands.Basic.Return.index: (2, 0, 0, 0),
    commands.Basic.GetOk.index: (9, 0, 0, 4),
    commands.Channel.Close.index: (2, 0, 4),
    commands.Connection.Close.index: (2, 0, 4),
}
# Headers waiting on one channel: at most those of the frames checked but not
# yet read by aiormq (one chunk: 22 bytes is the smallest content header frame)
# and those in the channel's frame queue (aiormq's FRAME_BUFFER_SIZE).
_WAITING = 4096

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


class FrameRefused(ProtocolSyntaxError):
    """The broker sent a frame this client will not take; it ends the connection.

    Not an ``OSError``: aiormq's frame reader would re-wrap one and lose the code.
    """

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@quick_init
@dataclass(frozen=True, slots=True)
class Incoming:
    """What a content header said, as the channel takes it from the ``HeaderStore``."""

    tag: int
    properties: Properties
    undecodable: str | None = None
    dropped: int = 0  # body bytes dropped unread (a body over max_body_size)


class HeaderStore:
    """Decoded content headers, per channel, until the channel's reader takes them."""

    def __init__(self) -> None:
        self._waiting: dict[int, deque[Incoming]] = {}
        self._tag = 0

    def reset(self, channel: int) -> deque[Incoming]:
        """A fresh queue for a new channel; whatever a previous one left is forgotten."""
        waiting = self._waiting[channel] = deque(maxlen=_WAITING)
        return waiting

    def release(self, channel: int, waiting: deque[Incoming]) -> None:
        """Drop a closed channel's queue, unless a new channel has the number already."""
        if self._waiting.get(channel) is waiting:
            del self._waiting[channel]

    def put(
        self, channel: int, properties: Properties, undecodable: str | None, dropped: int
    ) -> int:
        self._tag = tag = (self._tag + 1) & 0xFFFF
        waiting = self._waiting.get(channel)
        if waiting is not None:
            waiting.append(Incoming(tag, properties, undecodable, dropped))
        return tag

    def take(self, channel: int, tag: int) -> Incoming:
        """The header tagged ``tag``; any before it were taken by no one (a basic.get)."""
        waiting = self._waiting.get(channel)
        while waiting:
            entry = waiting.popleft()
            if entry.tag == tag:
                return entry
        # A bug if ever: fail the channel (its unacked messages go back to the
        # queue) rather than hand on a message without its properties.
        raise LookupError(f"no properties for content header {tag} on channel {channel}")


class FrameGuard:
    """The ``asyncio.StreamReader`` side aiormq's frame reader uses, guarding the real one.

    aiormq calls ``at_eof``, ``readexactly`` and ``read`` only (pinned by a test).
    Bytes are read in chunks and every whole frame of a chunk is checked at
    once; ``_in`` holds at most one unfinished frame (within ``frame_max``)
    and one chunk.
    """

    def __init__(
        self,
        inner: asyncio.StreamReader,
        *,
        max_body_size: int,
        is_open: Callable[[int], bool],
        headers: HeaderStore,
    ) -> None:
        self._inner = inner
        self._in = bytearray()  # from the socket, not yet checked
        self._out = bytearray()  # checked whole frames, for aiormq
        self._refused: FrameRefused | None = None
        self.frame_max = HANDSHAKE_FRAME_MAX
        self.max_body_size = max_body_size
        self._is_open = is_open
        self.headers = headers
        # body bytes still to come, per channel, and whether they are kept
        self._body: dict[int, tuple[int, bool]] = {}

    def at_eof(self) -> bool:
        return not self._out and not self._in and self._inner.at_eof()

    async def read(self, n: int = -1) -> bytes:
        if not self._out:
            await self._fill()
        size = len(self._out) if n < 0 else min(n, len(self._out))
        data = bytes(self._out[:size])
        del self._out[:size]
        return data

    async def readexactly(self, n: int) -> bytes:
        out = self._out
        while len(out) < n:
            await self._fill()
        if len(out) == n:
            data = bytes(out)
            out.clear()
            return data
        data = bytes(out[:n])
        del out[:n]
        return data

    async def _fill(self) -> None:
        """Move at least one more checked byte to ``_out``, or raise."""
        before = len(self._out)
        while len(self._out) == before:
            if self._refused is not None:
                raise self._refused  # once every frame before it has been taken
            data = await self._inner.read(_CHUNK)
            if not data:
                raise asyncio.IncompleteReadError(bytes(self._in), None)
            self._in += data
            try:
                self._check()
            except FrameRefused as exc:
                self._refused = exc

    def _check(self) -> None:
        """Move every whole frame at the start of ``_in`` to ``_out``, checked."""
        buf, out = self._in, self._out
        pos, size_in = 0, len(buf)
        try:
            while size_in - pos >= _FRAME.size:
                if buf.startswith(b"AMQP", pos):
                    # The broker's protocol header: it refuses ours. aiormq says so.
                    if size_in - pos < 8:
                        break
                    out += buf[pos : pos + 8]
                    pos += 8
                    continue
                kind, channel, size = _FRAME.unpack_from(buf, pos)
                if size + _FRAME.size + 1 > self.frame_max:
                    raise FrameRefused(
                        FRAME_ERROR,
                        f"the broker announced a frame of {size} bytes, over the frame_max of "
                        f"{self.frame_max} bytes",
                    )
                end = pos + _FRAME.size + size + 1
                if end > size_in:
                    break
                if buf[end - 1] != _END:
                    raise FrameRefused(
                        FRAME_ERROR, f"a frame of type {kind} does not end with 0xCE"
                    )
                if kind == _BODY:
                    # A dropped frame still proves the broker alive: aiormq gets a heartbeat.
                    out += buf[pos:end] if self._body_frame(channel, size) else _HEARTBEAT
                elif channel in self._body:
                    raise FrameRefused(
                        UNEXPECTED_FRAME,
                        f"a frame of type {kind} inside a message body on channel {channel}",
                    )
                elif kind == _CONTENT_HEADER:
                    out += self._content_header(channel, bytes(buf[pos + _FRAME.size : end - 1]))
                elif kind == _METHOD:
                    out += self._method(channel, buf, pos, end)
                else:
                    out += buf[pos:end]
                pos = end
        finally:
            del buf[:pos]

    def _body_frame(self, channel: int, size: int) -> bool:
        """Count a body frame; whether it is passed on (False: dropped)."""
        pending = self._body.get(channel)
        if pending is None:
            raise FrameRefused(
                UNEXPECTED_FRAME, f"a body frame with no message on channel {channel}"
            )
        left, keep = pending
        if size > left:
            raise FrameRefused(
                FRAME_ERROR,
                f"a body frame of {size} bytes overruns its message on channel {channel}",
            )
        left -= size
        if left:
            self._body[channel] = (left, keep)
        else:
            del self._body[channel]
        return keep

    def _content_header(self, channel: int, payload: bytes) -> bytes:
        """The header aiormq gets instead: no properties, the store's tag as its weight."""
        if len(payload) < _HEADER.size:
            raise FrameRefused(FRAME_ERROR, f"a content header of {len(payload)} bytes")
        class_id, _, body_size, _ = _HEADER.unpack_from(payload)
        undecodable: str | None = None
        properties = EMPTY_PROPERTIES
        dropped = 0
        if body_size > self.max_body_size:
            undecodable = (
                f"a body of {body_size} bytes is over max_body_size ({self.max_body_size} bytes)"
            )
            dropped = body_size
        elif self._is_open(channel):
            try:
                _, properties = decode_header(payload)
            except UndecodableProperties as exc:
                undecodable = exc.reason
            except (ValueError, IndexError, struct.error) as exc:
                raise FrameRefused(
                    FRAME_ERROR, f"a content header that does not parse: {exc}"
                ) from None
        if body_size:
            self._body[channel] = (body_size, not dropped)
        tag = self.headers.put(channel, properties, undecodable, dropped)
        kept = 0 if dropped else body_size
        return _REWRITTEN.pack(_CONTENT_HEADER, channel, _HEADER.size, class_id, tag, kept, 0, _END)

    def _method(self, channel: int, buf: bytearray, pos: int, end: int) -> bytes | bytearray:
        start = pos + _FRAME.size
        if end - start < 5:
            raise FrameRefused(FRAME_ERROR, "a method frame without a method id")
        (method_id,) = _METHOD_ID.unpack_from(buf, start)
        if method_id not in _FROM_BROKER:
            raise FrameRefused(
                UNEXPECTED_FRAME, f"unexpected method {method_id >> 16}.{method_id & 0xFFFF}"
            )
        layout = _TEXTS.get(method_id)
        if method_id != _START and layout is None:
            return buf[pos:end]
        payload = bytes(buf[start : end - 1])
        try:
            if layout is None:
                decode_start(payload)
                return buf[pos:end]
            repaired = _repair_texts(payload, layout)
        except (ValueError, IndexError, struct.error) as exc:
            raise FrameRefused(FRAME_ERROR, f"a method that does not parse: {exc}") from None
        if repaired is None:
            return buf[pos:end]
        return _FRAME.pack(_METHOD, channel, len(repaired)) + repaired + bytes((_END,))


def _repair_texts(payload: bytes, layout: tuple[int, ...]) -> bytes | None:
    """``payload`` with its short strings made UTF-8, or ``None`` when they all are.

    ``layout`` lists the fields after the method id: a short string is 0,
    anything else its size in bytes.
    """
    offset = 4
    parts: list[bytes] = []
    start = 0
    for size in layout:
        if size:
            offset += size
            continue
        end = offset + 1 + payload[offset]
        if end > len(payload):
            raise ValueError("a short string runs past the frame")
        raw = payload[offset + 1 : end]
        if not raw.isascii():
            try:
                raw.decode()
            except UnicodeDecodeError:
                fixed = raw.decode("utf-8", "replace").encode()[:255]
                fixed = fixed.decode("utf-8", "ignore").encode()
                parts += (payload[start:offset], bytes((len(fixed),)), fixed)
                start = end
        offset = end
    if not parts:
        return None
    parts.append(payload[start:])
    return b"".join(parts)


class GuardedTransport(TransportFactory):
    """aiormq's TCP or TLS transport, its reader wrapped in a ``FrameGuard``."""

    def __init__(self, scheme: str, make_guard: Callable[[asyncio.StreamReader], FrameGuard]):
        self._inner = TLSTransportFactory() if scheme == "amqps" else TCPTransportFactory()
        self._make_guard = make_guard

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self._inner.create(url, **kwargs)
        guard: Any = self._make_guard(reader)  # duck-typed: aiormq reads through it
        return guard, writer
