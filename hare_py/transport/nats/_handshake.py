"""Opening a NATS connection: TCP, INFO, TLS if wanted or required, CONNECT, PONG.

Rules this module keeps:

- Everything happens before any task runs, bounded by ``connect_timeout``.
- TLS starts after INFO and before CONNECT, as NATS does it: on a
  ``tls://`` URL, and on any URL whose server's INFO says ``tls_required``.
- Every failure is a ``ConnectFailed`` built from the redacted URL (a
  refused login says so), and its cause chain is dropped if a secret shows
  anywhere in it. Nothing else escapes.
"""

from __future__ import annotations

import ssl
from importlib.metadata import PackageNotFoundError, version
from typing import NamedTuple

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from ..._log import get_logger
from ...errors import ConnectFailed, HareError
from ..base import ConnectOptions
from ..subjects import first_sid
from ..url import BrokerURL
from . import _protocol as p
from ._config import NatsConfig, config_for, scrub

__all__ = ["NETWORK_ERRORS", "READ_SIZE", "Wire", "describe", "open_wire", "parse_events"]

log = get_logger("hare_py.transport.nats")

READ_SIZE = 256 * 1024

NETWORK_ERRORS = (
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
        return "the server closed the socket"
    if isinstance(exc, OSError) and exc.errno is None and exc.__cause__ is not None:
        # anyio.connect_tcp: OSError("All connection attempts failed") from the real ones.
        cause = exc.__cause__
        causes = cause.exceptions if isinstance(cause, BaseExceptionGroup) else (cause,)
        texts = sorted({describe(c) for c in causes if isinstance(c, OSError)})
        if texts:
            return "; ".join(texts)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return text if text else type(exc).__name__


def parse_events(protocol: p.NatsClientProtocol, data: bytes) -> list[p.Event]:
    """``protocol.receive_data``; any failure of it is a NatsProtocolError."""
    try:
        return protocol.receive_data(data)
    except p.NatsProtocolError:
        raise
    except Exception as exc:
        # A parser bug must end this connection, not escape into the user's code.
        log.exception("nats.decode_failed")
        raise p.NatsProtocolError(
            f"cannot parse the server's bytes ({type(exc).__name__})"
        ) from None


class Wire(NamedTuple):
    """A socket past the handshake, its protocol object, and what came after the PONG."""

    stream: anyio.abc.ByteStream
    protocol: p.NatsClientProtocol
    config: NatsConfig
    leftover: list[p.Event]


async def open_wire(url: BrokerURL, options: ConnectOptions) -> Wire:
    """Connect and handshake; ``ConnectFailed`` (or ``ConfigError``) otherwise."""
    config = config_for(url, options)
    where = config.where
    protocol = p.NatsClientProtocol(
        name=config.name,
        user=config.user,
        password=config.password,
        token=config.token,
        version=_version(),
        tls_required=config.want_tls,
        first_sid=first_sid(),
    )
    stream: anyio.abc.ByteStream | None = None
    error: HareError | None = None
    cause: BaseException | None = None
    leftover: list[p.Event] = []
    try:
        with anyio.fail_after(config.connect_timeout):
            stream = await anyio.connect_tcp(config.host, config.port)
            stream, leftover = await _handshake(stream, protocol, config)
    except HareError as exc:
        error, cause = exc, exc.__cause__
    except TimeoutError as exc:
        error = ConnectFailed(f"{where} did not answer within {config.connect_timeout:g} s")
        cause = exc
    except ssl.SSLError as exc:
        error, cause = ConnectFailed(f"TLS with {where} failed: {describe(exc)}"), exc
    except NETWORK_ERRORS as exc:
        error, cause = ConnectFailed(f"cannot connect to {where}: {describe(exc)}"), exc
    except UnicodeError as exc:  # a host name IDNA cannot encode
        error, cause = ConnectFailed(f"cannot resolve the host of {where}: {exc}"), exc
    except BaseException:
        await _discard(stream)
        raise
    if error is not None:
        await _discard(stream)
        # Raised outside the except blocks: no __context__ links back to an
        # exception that could hold a secret.
        raise scrub(error, cause, config.secrets)
    assert stream is not None
    return Wire(stream, protocol, config, leftover)


async def _discard(stream: anyio.abc.ByteStream | None) -> None:
    if stream is not None:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def _handshake(
    stream: anyio.abc.ByteStream, protocol: p.NatsClientProtocol, config: NatsConfig
) -> tuple[anyio.abc.ByteStream, list[p.Event]]:
    """INFO, TLS if wanted or required, CONNECT and PING, to the PONG; before any task runs.

    Returns the stream (TLS-wrapped or not) and the events that came after the PONG.
    """
    where = config.where
    events: list[p.Event] = []
    while not events:
        events = _handshake_events(protocol, await _read(stream, where))
    first = events[0]
    if not isinstance(first, p.InfoReceived):  # the core refuses anything else first
        raise ConnectFailed(f"{where} did not start with INFO")
    info = first.info
    if info.lame_duck_mode:
        raise ConnectFailed(f"{where} is in lame duck mode")
    if config.want_tls or info.tls_required:
        if not (info.tls_required or info.tls_available):
            raise ConnectFailed(f"{where} does not offer TLS")
        stream = await TLSStream.wrap(
            stream,
            server_side=False,
            hostname=config.tls_hostname,
            ssl_context=config.ssl_context(),
            standard_compatible=False,
        )
    await stream.send(protocol.data_to_send())  # CONNECT and PING
    events = events[1:]
    while True:
        for index, event in enumerate(events):
            if isinstance(event, p.ErrReceived):
                raise _refused(event, where)
            if isinstance(event, p.Connected):
                return stream, events[index + 1 :]
        pending = protocol.data_to_send()  # PONGs to the server's PINGs
        if pending:
            await stream.send(pending)
        events = _handshake_events(protocol, await _read(stream, where))


async def _read(stream: anyio.abc.ByteStream, where: str) -> bytes:
    try:
        return await stream.receive(READ_SIZE)
    except anyio.EndOfStream:
        raise ConnectFailed(f"{where} closed the connection during the handshake") from None


def _handshake_events(protocol: p.NatsClientProtocol, data: bytes) -> list[p.Event]:
    try:
        return parse_events(protocol, data)
    except p.NatsProtocolError as exc:
        raise ConnectFailed(f"the server broke the NATS protocol: {exc}") from None


def _refused(event: p.ErrReceived, where: str) -> ConnectFailed:
    if event.auth:
        return ConnectFailed(f"{where} refused the login: {event.text}")
    return ConnectFailed(f"{where} refused the connection: {event.text}")
