"""A hare_py ``TransportConnection`` over an aiormq connection.

Rules this module keeps:

- The URL with its password goes to aiormq and nowhere else; everything we
  log or raise names the redacted ``str(url)``.
- A failed connect raises ``ConnectFailed`` built outside the ``except`` block
  and scrubbed (``_amqp_common.scrub``), so neither its text nor its cause chain can
  carry the password.
- The close reason is settled once: ours (``close``), the broker's
  ``connection.close``, or the network (socket error, missed heartbeats, a
  frame the ``FrameGuard`` refused).
- aiormq reads the socket through a ``FrameGuard`` (``_frames``), and agrees
  to a ``frame_max`` of at most ``FRAME_MAX_LIMIT``, a broker's 0 included.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiormq
import anyio
from aiormq import exceptions as ax
from pamqp import commands as spec
from pamqp.base import Frame

from ..._log import get_logger
from ...errors import BrokerError, ConfigError, ConnectionLost, HareError
from .._amqp_codec import FRAME_MAX_LIMIT, FRAME_MIN_SIZE
from .._amqp_common import (
    CLOSE_TIMEOUT,
    heartbeat_seconds,
    login_mechanism,
    max_body_size,
    scrub,
    tls_context,
)
from ..base import (
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
from ._channel import AiormqChannel, _RawChannel
from ._errors import connect_error, operation_error, reply_of
from ._frames import FRAME_ERROR, FrameGuard, FrameRefused, GuardedTransport, HeaderStore

__all__ = ["AiormqConnection", "connect"]

log = get_logger("hare_py.transport.aiormq")

# aiormq reads these query parameters; we pass none of the user's others on.
_PASSED_PARAMS = ("auth",)


class _RawConnection(aiormq.Connection):
    """aiormq's connection, reading through a ``FrameGuard``, detecting a silent peer
    sooner and leaving no task behind."""

    def __init__(self, url: str, *, heartbeat: int, max_body_size: int, **kwargs: Any) -> None:
        if heartbeat:
            # AMQP 0-9-1 (4.2.7): a peer silent for two heartbeat intervals is
            # dead. aiormq waits (interval + 1) * HEARTBEAT_GRACE_MULTIPLIER,
            # declared int but only ever multiplied: a float gives exactly 2x.
            self.HEARTBEAT_GRACE_MULTIPLIER = 2 * heartbeat / (heartbeat + 1)  # type: ignore[assignment]
        self.hare_headers = HeaderStore()
        self.hare_guard: FrameGuard | None = None
        self._hare_max_body_size = max_body_size
        scheme = url.partition(":")[0]
        super().__init__(url, transport_factory=GuardedTransport(scheme, self._guard), **kwargs)
        self.hare_closers: set[asyncio.Task[Any]] = set()

    def _guard(self, reader: asyncio.StreamReader) -> FrameGuard:
        self.hare_guard = FrameGuard(
            reader,
            max_body_size=self._hare_max_body_size,
            is_open=lambda number: number in self.channels,
            headers=self.hare_headers,
        )
        return self.hare_guard

    async def _rpc(  # type: ignore[override]
        self,
        request: Frame,
        writer: asyncio.StreamWriter,
        frame_receiver: aiormq.connection.FrameReceiver,
        wait_response: bool = True,
    ) -> Any:
        # aiormq answers connection.tune with the broker's own frame_max,
        # whatever it is; lower it here, before tune-ok echoes it.
        frame = await aiormq.Connection._rpc(request, writer, frame_receiver, wait_response)
        if isinstance(frame, spec.Connection.Tune):
            offered = frame.frame_max or 0
            if offered and offered < FRAME_MIN_SIZE:
                raise FrameRefused(
                    FRAME_ERROR,
                    f"the broker offers frame_max {offered}, under AMQP's minimum of "
                    f"{FRAME_MIN_SIZE}",
                )
            frame.frame_max = min(offered or FRAME_MAX_LIMIT, FRAME_MAX_LIMIT)
            if self.hare_guard is not None:
                self.hare_guard.frame_max = frame.frame_max
        return frame

    def _on_reader_done(self, task: asyncio.Task[Any]) -> None:
        # aiormq finishes closing in a task it keeps no reference to; keep one,
        # so that close() waits for it and nothing outlives the connection.
        before = asyncio.all_tasks(self.loop)
        super()._on_reader_done(task)
        self.hare_closers |= asyncio.all_tasks(self.loop) - before
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, FrameRefused):
            # Tell the broker why (aiormq sends 500 "reader unexpected closed").
            self.set_close_reason(exc.code, exc.text[:255])

    async def hare_closed(self) -> None:
        """Wait for aiormq's own closing tasks to end."""
        if self.hare_closers:
            await asyncio.wait(self.hare_closers)


class AiormqConnection(TransportConnection):
    """A ``TransportConnection`` backed by one aiormq connection."""

    def __init__(self, raw: _RawConnection, where: str) -> None:
        self._raw = raw
        self._where = where
        self._close_reason: CloseReason | None = None
        self._closed = anyio.Event()
        raw.closing.add_done_callback(lambda _: self.settle_if_closed())

    def __repr__(self) -> str:
        state = "open" if self._close_reason is None else f"closed: {self._close_reason}"
        return f"<AiormqConnection {self._where} {state}>"

    @property
    def close_reason(self) -> CloseReason | None:
        return self._close_reason

    @property
    def heartbeat(self) -> int:
        """The heartbeat interval in seconds agreed with the broker (0: off)."""
        return int(self._raw.connection_tune.heartbeat or 0)

    @property
    def server_properties(self) -> dict[str, Any]:
        """What the broker said about itself in connection.start (product, version, ...)."""
        return dict(self._raw.server_properties)

    # -- close events ------------------------------------------------------

    def _settle(self, reason: CloseReason) -> None:
        if self._close_reason is None:
            self._close_reason = reason
            self._closed.set()
            level = log.info if reason.is_normal else log.warning
            level("connection closed", url=self._where, reason=str(reason))

    def settle_if_closed(self) -> CloseReason | None:
        """The close reason if the aiormq connection has closed (settling it now)."""
        if self._close_reason is None and self._raw.is_closed:
            self._settle(self._reason_from_raw())
        return self._close_reason

    def _reason_from_raw(self) -> CloseReason:
        closing = self._raw.closing
        exc = None if closing.cancelled() else closing.exception()
        if isinstance(exc, FrameRefused):
            return CloseReason(exc.code, exc.text, "network")
        if exc is not None:
            reply = reply_of(exc)
            if reply is not None:
                return CloseReason(reply[0], reply[1], "broker")
        if self._raw.is_connection_was_stuck:
            return CloseReason(0, "missed heartbeats: the broker went silent", "network")
        if isinstance(exc, (ax.AMQPConnectionError, OSError)) and exc.args:
            return CloseReason(0, str(exc.args[-1]), "network")
        return CloseReason(0, "connection lost", "network")

    async def wait_closed(self) -> CloseReason:
        await self._closed.wait()
        assert self._close_reason is not None
        return self._close_reason

    async def close(self) -> None:
        self._settle(CloseReason(REPLY_SUCCESS, NORMAL_CLOSE_TEXT, "client"))
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
            if not self._raw.is_closed:
                try:
                    await self._raw.close(ax.ConnectionClosed(REPLY_SUCCESS, NORMAL_CLOSE_TEXT))
                except Exception as exc:  # never raises: the connection is gone for us
                    log.debug("amqp.close_failed", url=self._where, error=repr(exc))
            await self._raw.hare_closed()

    # -- channels ----------------------------------------------------------

    async def open_channel(
        self, *, on_return: OnReturn | None = None, publisher_confirms: bool = False
    ) -> Channel:
        reason = self.settle_if_closed()
        if reason is not None:
            raise ConnectionLost(f"the connection is closed: {reason}", code=reason.code)
        try:
            raw = await self._new_raw_channel(publisher_confirms)
        except HareError:
            raise
        except BaseException as exc:
            error = operation_error(exc, self.settle_if_closed())
            if error is None:
                raise
            raise error from exc
        return AiormqChannel(raw, self, on_return)

    async def _new_raw_channel(self, publisher_confirms: bool) -> _RawChannel:
        """``aiormq.Connection.channel`` with our channel class; numbers up to channel_max."""
        conn = self._raw
        limit = conn.connection_tune.channel_max or 65535
        async with conn.last_channel_lock:
            start = conn.last_channel
            number = next(
                (
                    n
                    for n in (*range(start + 1, limit + 1), *range(1, start + 1))
                    if n not in conn.channels
                ),
                None,
            )
            if number is None:
                raise BrokerError(NOT_ALLOWED, f"NOT_ALLOWED - all {limit} channels are in use")
            conn.last_channel = number
            headers = conn.hare_headers
            waiting = headers.reset(number)
            channel = _RawChannel(
                conn,
                number,
                headers=conn.hare_headers,
                publisher_confirms=publisher_confirms,
                frame_buffer=conn.FRAME_BUFFER_SIZE,
                on_return_raises=False,
            )
            conn.channels[number] = channel
            channel.closing.add_done_callback(lambda _: headers.release(number, waiting))
        await channel.open()
        return channel


@asynccontextmanager
async def connect(url: BrokerURL, options: ConnectOptions) -> AsyncIterator[AiormqConnection]:
    """Connect to ``url``; the connection closes when the block exits."""
    connection = await _open(url, options)
    try:
        yield connection
    finally:
        await connection.close()


async def _open(url: BrokerURL, options: ConnectOptions) -> AiormqConnection:
    where = str(url)
    heartbeat = heartbeat_seconds(url, options)
    body_limit = max_body_size(url, options)
    context, server_hostname = tls_context(url, options)
    properties: dict[str, Any] = dict(options.client_properties)
    name = options.name or url.param("name")
    if name:
        properties["connection_name"] = name
    if login_mechanism(url) == "AMQPLAIN":
        raise ConfigError(
            f"auth=amqplain in {url}: aiormq logs in with PLAIN or EXTERNAL only; "
            "leave backend=aiormq out to use AMQPLAIN"
        )
    query = [("heartbeat", str(heartbeat))]
    query += [(k, v) for k, v in url.query if k in _PASSED_PARAMS]
    extra: dict[str, Any] = {"server_hostname": server_hostname} if server_hostname else {}
    raw = _RawConnection(
        dataclasses.replace(url, query=tuple(query)).with_secret(),
        heartbeat=heartbeat,
        max_body_size=body_limit,
        context=context,
        client_properties=properties,
        **extra,
    )
    error: HareError | None = None
    try:
        with anyio.fail_after(options.connect_timeout):
            await raw.connect()
    except Exception as exc:
        error = connect_error(exc, where)
        if isinstance(exc, TimeoutError):
            error = connect_error(exc, f"{where} (within {options.connect_timeout:g} s)")
        cause: BaseException | None = exc
    except BaseException:
        await _discard(raw)
        raise
    if error is not None:
        # Raised here, outside the except block, so that no __context__
        # links back to aiormq's exception and its URL.
        await _discard(raw)
        raise scrub(error, cause, url.password)
    connection = AiormqConnection(raw, where)
    log.info(
        "amqp.connected", url=where, name=name, heartbeat=connection.heartbeat, backend="aiormq"
    )
    return connection


async def _discard(raw: _RawConnection) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
        try:
            await raw.close(ax.ConnectionClosed(0, "connect failed"))
        except (Exception, asyncio.CancelledError) as exc:
            log.debug("amqp.discard_failed", error=type(exc).__name__)
