"""The anyio driver of ``AMQPClientProtocol``: one connection, three tasks.

Rules this module keeps:

- The protocol object is the only state about the wire. Operations queue
  frames on it and wake the writer; the writer sends everything queued since
  its last turn in one ``send()``, so frames queued within one scheduling tick
  (a burst of publishes, acks, replies) leave together.
- The reader parses every whole frame of each read at once and hands the
  events on synchronously, in broker order: deliveries and returns reach the
  user's callbacks from the reader, with no task or lock per message.
- The heartbeat task sends a heartbeat when we have sent nothing for half the
  interval and declares the broker dead after two silent intervals (AMQP
  0-9-1, 4.2.7). Only whole frames break a silence: a peer that trickles a
  frame byte by byte is as dead as a silent one.
- The close reason is settled once: ours, the broker's ``connection.close``,
  or the network (socket error, end of stream, silent peer, a broken frame).
- The URL's password reaches the protocol object and nothing else; errors and
  logs name the redacted URL, and connect errors are scrubbed.
"""

from __future__ import annotations

import os
import platform
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio
import anyio.abc

from ..._clock import now
from ..._log import get_logger
from ...errors import BrokerError, ConnectFailed, ConnectionLost, HareError
from .._amqp_common import (
    CLOSE_TIMEOUT,
    heartbeat_seconds,
    login_mechanism,
    max_body_size,
    scrub,
    tls_context,
)
from ..base import (
    ACCESS_REFUSED,
    NORMAL_CLOSE_TEXT,
    NOT_ALLOWED,
    REPLY_SUCCESS,
    Channel,
    CloseReason,
    ConnectOptions,
    OnReturn,
    TransportConnection,
)
from ..url import BrokerURL
from . import _protocol as p
from ._channel import AmqpChannel

__all__ = ["AmqpConnection", "connect"]

log = get_logger("hare_py.transport.amqp")

READ_SIZE = 256 * 1024
# Publishers wait while more than this is queued for the socket (a slow or
# blocked broker); the rest of the time a publish only queues its frames.
HIGH_WATER = 4 * 1024 * 1024
UNEXPECTED_FRAME = 505

_CAPABILITIES = {
    "authentication_failure_close": True,  # a 403 connection.close rather than a dropped socket
    "basic.nack": True,
    "connection.blocked": True,
    "consumer_cancel_notify": True,
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "per_consumer_qos": True,
}
_NETWORK_ERRORS = (
    OSError,
    ssl.SSLError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


def _version() -> str:
    try:
        return version("hare_py")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


def describe(exc: BaseException) -> str:
    """A short text for a network error (never holds a URL: we build none into them)."""
    if isinstance(exc, anyio.EndOfStream):
        return "the broker closed the socket"
    if isinstance(exc, OSError) and exc.errno is None and exc.__cause__ is not None:
        # anyio.connect_tcp: OSError("All connection attempts failed") from the
        # real error, or from an ExceptionGroup of them (one per address).
        cause = exc.__cause__
        causes = cause.exceptions if isinstance(cause, BaseExceptionGroup) else (cause,)
        texts = sorted(
            {
                os.strerror(c.errno) if c.errno else describe(c)
                for c in causes
                if isinstance(c, OSError)
            }
        )
        if texts:
            return "; ".join(texts)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return text if text else type(exc).__name__


class AmqpConnection(TransportConnection):
    """A ``TransportConnection`` over an anyio byte stream; see the module docstring."""

    def __init__(
        self, stream: anyio.abc.ByteStream, protocol: p.AMQPClientProtocol, where: str
    ) -> None:
        self._stream = stream
        self._protocol = protocol
        self._where = where
        self.channels: dict[int, AmqpChannel] = {}
        self._close_reason: CloseReason | None = None
        self._closed = anyio.Event()
        self._wire_closed = anyio.Event()  # no more frames either way
        self._wake = anyio.Event()
        self._writable = anyio.Event()
        self._writable.set()
        self._scope = anyio.CancelScope()
        self._last_words = False  # stop once the queued frames are written
        started = now()
        self._last_received = started
        self._last_sent = started
        self.blocked = protocol.blocked  # connection.blocked may come with open-ok

    def __repr__(self) -> str:
        state = "open" if self._close_reason is None else f"closed: {self._close_reason}"
        return f"<AmqpConnection {self._where} {state}>"

    @property
    def close_reason(self) -> CloseReason | None:
        return self._close_reason

    @property
    def heartbeat(self) -> int:
        """The heartbeat interval in seconds agreed with the broker (0: off)."""
        return self._protocol.heartbeat

    @property
    def server_properties(self) -> dict[str, Any]:
        """What the broker said about itself in connection.start (product, version, ...)."""
        return dict(self._protocol.server_properties)

    @property
    def protocol(self) -> p.AMQPClientProtocol:
        return self._protocol

    # -- background tasks ------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Read, write and keep heartbeats until the connection closes."""
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._reader)
                    tg.start_soon(self._writer)
                    if self._protocol.heartbeat:
                        tg.start_soon(self._heartbeats, self._protocol.heartbeat)
                    task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
            self._lost(CloseReason(0, "connection lost", "network"))

    async def _reader(self) -> None:
        protocol = self._protocol
        receive = self._stream.receive
        try:
            while True:
                data = await receive(READ_SIZE)
                frames = protocol.frames_received
                events = _receive(protocol, data)
                if protocol.frames_received != frames:
                    self._last_received = now()
                if events:
                    self.dispatch(events)
                if protocol.bytes_to_send:
                    self.wake_writer()
                if protocol.closed:
                    return
        except _NETWORK_ERRORS as exc:
            self._lost(CloseReason(0, describe(exc), "network"))
        except p.ProtocolError as exc:
            log.error("amqp.protocol_error", url=self._where, error=str(exc))
            self._broken(f"protocol error: {exc}")

    async def _writer(self) -> None:
        protocol = self._protocol
        send = self._stream.send
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                data = protocol.data_to_send()
                if data:
                    await send(data)
                    del data  # not kept while idle: a burst can be large
                    self._last_sent = now()
                if not self._writable.is_set() and protocol.bytes_to_send < HIGH_WATER:
                    self._writable.set()
                if self._last_words and not protocol.bytes_to_send:
                    # The connection is over, and our last word (close-ok, 505) is out.
                    self._wire_closed.set()
                    self._scope.cancel()
                    return
        except _NETWORK_ERRORS as exc:
            self._lost(CloseReason(0, describe(exc), "network"))

    async def _heartbeats(self, interval: int) -> None:
        while True:
            await anyio.sleep(interval / 2)
            current = now()
            if current - self._last_received > 2 * interval:
                self._lost(CloseReason(0, "missed heartbeats: the broker went silent", "network"))
                return
            if current - self._last_sent >= interval / 2 and not self._protocol.closed:
                self._protocol.send_heartbeat()
                self.wake_writer()

    # -- frames out ------------------------------------------------------------

    def wake_writer(self) -> None:
        self._wake.set()

    async def wait_writable(self) -> None:
        """Wait while too much is queued for the socket (a slow or blocked broker)."""
        while self._protocol.bytes_to_send > HIGH_WATER and self._close_reason is None:
            if self._writable.is_set():  # the first to wait arms it; the writer sets it
                self._writable = anyio.Event()
            self.wake_writer()
            await self._writable.wait()

    # -- events in -------------------------------------------------------------

    def dispatch(self, events: list[p.Event]) -> None:
        channels = self.channels
        for event in events:
            if isinstance(event, p.ContentReceived):
                channel = channels.get(event.channel)
                if channel is not None:
                    channel.on_content(event)
            elif isinstance(event, p.MethodReceived):
                channel = channels.get(event.channel)
                if channel is not None:
                    channel.on_method(event.method)
            elif isinstance(event, p.ChannelOpened):
                channel = channels.get(event.channel)
                if channel is not None:
                    channel.on_opened()
            elif isinstance(event, p.ChannelClosed):
                channel = channels.pop(event.channel, None)
                if channel is not None:
                    channel.on_closed(CloseReason(event.reply_code, event.reply_text, event.by))
            elif isinstance(event, p.ConnectionClosed):
                self._lost(
                    CloseReason(event.reply_code, event.reply_text, event.by), last_words=True
                )
            elif isinstance(event, p.ConnectionBlocked):
                self.blocked = True
                log.warning("amqp.blocked", url=self._where, reason=event.reason)
            elif isinstance(event, p.ConnectionUnblocked):
                self.blocked = False
                log.info("amqp.unblocked", url=self._where)

    # -- closing ---------------------------------------------------------------

    def _settle(self, reason: CloseReason) -> None:
        if self._close_reason is None:
            self._close_reason = reason
            self._closed.set()
            level = log.info if reason.is_normal else log.warning
            level("connection closed", url=self._where, reason=str(reason))

    def _lost(self, reason: CloseReason, *, last_words: bool = False) -> None:
        """The connection is gone: settle it and every channel, stop the tasks.

        With ``last_words``, frames still queued (our close-ok, a 505 close) go
        out first: the writer stops the tasks once they are written.
        """
        self._settle(reason)
        settled = self._close_reason
        assert settled is not None
        channels = list(self.channels.values())
        self.channels.clear()
        for channel in channels:
            channel.on_closed(CloseReason(settled.code, settled.text, "connection"))
        self._writable.set()
        if last_words and self._protocol.bytes_to_send:
            self._last_words = True
            self.wake_writer()
            return
        self._wire_closed.set()
        self._scope.cancel()

    def _broken(self, text: str) -> None:
        """The broker broke the protocol: tell it (505) and drop the connection."""
        with suppress(p.ProtocolError):
            self._protocol.close(UNEXPECTED_FRAME, f"UNEXPECTED_FRAME - {text}"[:255])
        self._lost(CloseReason(UNEXPECTED_FRAME, text, "network"), last_words=True)

    async def wait_closed(self) -> CloseReason:
        await self._closed.wait()
        assert self._close_reason is not None
        return self._close_reason

    async def close(self) -> None:
        self._settle(CloseReason(REPLY_SUCCESS, NORMAL_CLOSE_TEXT, "client"))
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
            if not self._wire_closed.is_set():
                self._protocol.close()
                self.wake_writer()
                await self._wire_closed.wait()
        self._lost(CloseReason(REPLY_SUCCESS, NORMAL_CLOSE_TEXT, "client"))
        self._scope.cancel()

    # -- channels ----------------------------------------------------------------

    def check_open(self) -> None:
        reason = self._close_reason
        if reason is not None:
            raise ConnectionLost(f"the connection is closed: {reason}", code=reason.code)

    async def open_channel(
        self, *, on_return: OnReturn | None = None, publisher_confirms: bool = False
    ) -> Channel:
        self.check_open()
        protocol = self._protocol
        limit = protocol.channel_max or 65535
        if len(self.channels) >= limit:
            raise BrokerError(NOT_ALLOWED, f"NOT_ALLOWED - all {limit} channels are in use")
        try:
            number = protocol.open_channel()
        except p.ProtocolError:
            # Open for us, yet no number: the rest are held by closes not yet confirmed.
            self.check_open()
            raise BrokerError(
                NOT_ALLOWED, f"NOT_ALLOWED - no free channel number of {limit}"
            ) from None
        channel = AmqpChannel(self, number, on_return)
        self.channels[number] = channel
        self.wake_writer()
        try:
            await channel.wait_opened()
            if publisher_confirms:
                await channel.select_confirms()
        except BaseException:
            await channel.close()
            raise
        return channel


@asynccontextmanager
async def connect(url: BrokerURL, options: ConnectOptions) -> AsyncIterator[AmqpConnection]:
    """Connect to ``url``; the connection closes when the block exits."""
    connection = await _open(url, options)
    body_error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        await tg.start(connection.run)
        # The block's error is re-raised outside the task group, so that it is
        # not wrapped in an ExceptionGroup.
        try:
            yield connection
        except BaseException as exc:
            body_error = exc
        finally:
            await connection.close()
    if body_error is not None:
        raise body_error


async def _open(url: BrokerURL, options: ConnectOptions) -> AmqpConnection:
    where = str(url)
    heartbeat = heartbeat_seconds(url, options)
    body_limit = max_body_size(url, options)
    context, server_hostname = tls_context(url, options)
    mechanism = login_mechanism(url)
    name = options.name or url.param("name")
    properties: dict[str, Any] = {
        "product": "hare_py",
        "version": _version(),
        "platform": f"Python {platform.python_version()}",
        **options.client_properties,
    }
    properties["capabilities"] = {
        **_CAPABILITIES,
        **dict(options.client_properties.get("capabilities") or {}),
    }
    if name:
        properties["connection_name"] = name
    protocol = p.AMQPClientProtocol(
        username=url.username,
        password=url.password,
        virtual_host=url.vhost,
        heartbeat=heartbeat,
        client_properties=properties,
        mechanism=mechanism,
        max_body_size=body_limit,
    )
    stream: anyio.abc.ByteStream | None = None
    error: HareError | None = None
    cause: BaseException | None = None
    try:
        with anyio.fail_after(options.connect_timeout):
            stream = await _connect_stream(url, context, server_hostname)
            await _handshake(stream, protocol, where)
    except HareError as exc:
        error, cause = exc, exc.__cause__
    except TimeoutError as exc:
        error = ConnectFailed(f"{where} did not answer within {options.connect_timeout:g} s")
        cause = exc
    except ssl.SSLError as exc:
        error, cause = ConnectFailed(f"TLS with {where} failed: {describe(exc)}"), exc
    except (*_NETWORK_ERRORS, p.ProtocolError) as exc:
        error, cause = ConnectFailed(f"cannot connect to {where}: {describe(exc)}"), exc
    except BaseException:
        await _discard(stream)
        raise
    if error is not None:
        await _discard(stream)
        # Raised outside the except blocks: no __context__ links back to an
        # exception that could hold the password.
        raise scrub(error, cause, url.password)
    assert stream is not None
    connection = AmqpConnection(stream, protocol, where)
    log.info("amqp.connected", url=where, name=name, heartbeat=protocol.heartbeat, backend="anyio")
    return connection


async def _connect_stream(
    url: BrokerURL, context: ssl.SSLContext | None, server_hostname: str | None
) -> anyio.abc.ByteStream:
    if context is None:
        return await anyio.connect_tcp(url.host, url.port)
    return await anyio.connect_tcp(
        url.host,
        url.port,
        ssl_context=context,
        tls_hostname=server_hostname or url.host,
        tls_standard_compatible=False,
    )


async def _discard(stream: anyio.abc.ByteStream | None) -> None:
    if stream is not None:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def _handshake(
    stream: anyio.abc.ByteStream, protocol: p.AMQPClientProtocol, where: str
) -> None:
    """Protocol header to ``connection.open-ok``, before any task runs."""
    await stream.send(protocol.data_to_send())
    while True:
        try:
            data = await stream.receive(READ_SIZE)
        except anyio.EndOfStream:
            if protocol.state is p.ConnectionState.AWAIT_TUNE:
                # Brokers that do not know authentication_failure_close drop the socket.
                raise ConnectFailed(
                    f"{where} closed the connection after the login (wrong credentials?)",
                    code=ACCESS_REFUSED,
                ) from None
            raise
        for event in _receive(protocol, data):
            if isinstance(event, p.ConnectionClosed):
                await _send_pending(stream, protocol)
                raise _refused(event, where)
            if isinstance(event, p.ConnectionOpened):
                await _send_pending(stream, protocol)
                return
        await _send_pending(stream, protocol)


def _receive(protocol: p.AMQPClientProtocol, data: bytes) -> list[p.Event]:
    """``protocol.receive_data``; any failure of it ends the connection as a ProtocolError."""
    try:
        return protocol.receive_data(data)
    except p.ProtocolError:
        raise
    except Exception as exc:
        # A decoder bug must end this connection, not escape into the user's code.
        log.exception("amqp.decode_failed")
        raise p.ProtocolError(f"cannot decode the broker's frames ({type(exc).__name__})") from None


async def _send_pending(stream: anyio.abc.ByteStream, protocol: p.AMQPClientProtocol) -> None:
    data = protocol.data_to_send()
    if data:
        await stream.send(data)


def _refused(event: p.ConnectionClosed, where: str) -> ConnectFailed:
    code, text = event.reply_code, event.reply_text
    if code == ACCESS_REFUSED:
        return ConnectFailed(f"{where} refused the login: {text}", code=code)
    if code == NOT_ALLOWED:
        return ConnectFailed(
            f"{where} refused to open the virtual host (missing, or no access): {text}", code=code
        )
    return ConnectFailed(f"{where} refused the connection: {text}", code=code)
