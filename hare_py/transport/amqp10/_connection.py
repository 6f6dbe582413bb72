"""Dialling an AMQP 1.0 peer: TCP (and TLS) through anyio, then proton's open.

Rules this module keeps:

- A connect either yields an open connection (the peer's open frame came)
  or raises ``ConnectFailed`` within ``connect_timeout``: refused, DNS, TLS,
  a refused login (SASL), or a peer that closed at once. No text holds the
  password: errors name the redacted URL.
- The connection lives exactly as long as its ``async with`` block; its
  engine's tasks run in a task group owned by the block, and the block's
  own error is raised unwrapped.
- Sessions are ``DialledSession``s; when the connection ends every one
  closes by ``"connection"``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import ClassVar

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from ..._log import get_logger
from ...errors import ConnectFailed, ConnectionLost, HareError
from ..base import AMQP_1_0, CloseReason, ConnectOptions, OnReturn, Session, TransportConnection
from ..url import BrokerURL
from ._config import Amqp10Config, config_for
from ._engine import _NETWORK_ERRORS, Engine, describe
from ._session import DialledSession

__all__ = ["Amqp10Connection", "connect"]

log = get_logger("hare_py.transport.amqp10")


class Amqp10Connection(TransportConnection):
    """A ``TransportConnection`` to one AMQP 1.0 peer we dialled."""

    wire_protocol: ClassVar[str] = AMQP_1_0

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __repr__(self) -> str:
        return f"<Amqp10Connection {self.engine.where} {self.engine.close_reason or 'open'}>"

    @property
    def close_reason(self) -> CloseReason | None:
        return self.engine.close_reason

    @property
    def peer_properties(self) -> dict[str, object]:
        return self.engine.remote_properties

    async def open_session(self, *, on_return: OnReturn | None = None) -> Session:
        reason = self.engine.close_reason
        if reason is not None:
            raise ConnectionLost(f"the AMQP 1.0 connection is closed: {reason}", code=reason.code)
        return DialledSession(self.engine, on_return)

    async def wait_closed(self) -> CloseReason:
        await self.engine.closed.wait()
        assert self.engine.close_reason is not None
        return self.engine.close_reason

    async def close(self) -> None:
        await self.engine.close()


@asynccontextmanager
async def connect(url: BrokerURL, options: ConnectOptions) -> AsyncIterator[TransportConnection]:
    """Dial ``url`` (or listen, with ``listen=1``); closed when the block exits."""
    config = config_for(url, options)
    if config.listen:
        from ._listener import listen

        async with listen(config) as listener:
            yield listener
        return
    stream = await _dial(config)
    engine = Engine(stream, config, server=False)
    connection = Amqp10Connection(engine)
    body_error: BaseException | None = None
    failed: HareError | None = None
    async with anyio.create_task_group() as tg:
        await tg.start(engine.run)
        try:
            with anyio.move_on_after(config.connect_timeout):
                await engine.opened.wait()
            reason = engine.close_reason
            if reason is not None or not engine.opened.is_set():
                failed = _refused(config, reason)
            else:
                log.info(
                    "amqp10.connected",
                    url=config.where,
                    container=config.container_id,
                    peer=engine.remote_properties.get("product"),
                    heartbeat=config.heartbeat,
                    tls=isinstance(stream, TLSStream),
                )
                try:
                    yield connection
                except BaseException as exc:
                    body_error = exc
        finally:
            # Always, cancelled or not: the engine's tasks are shielded until it ends.
            await engine.close()
    if failed is not None:
        raise failed
    if body_error is not None:
        raise body_error


def _refused(config: Amqp10Config, reason: CloseReason | None) -> ConnectFailed:
    where = config.where
    if reason is None:
        return ConnectFailed(f"{where} did not open AMQP 1.0 within {config.connect_timeout:g} s")
    text = reason.text
    if "unauthorized" in text or "SASL" in text or "sasl" in text or "auth" in text:
        return ConnectFailed(f"{where} refused the login: {text}")
    return ConnectFailed(f"{where} refused the connection: {text}")


async def _dial(config: Amqp10Config) -> anyio.abc.ByteStream:
    where = config.where
    stream: anyio.abc.ByteStream | None = None
    error: ConnectFailed | None = None
    try:
        context = config.ssl_context()
        with anyio.fail_after(config.connect_timeout):
            stream = await anyio.connect_tcp(config.host, config.port)
            if context is not None:
                stream = await TLSStream.wrap(
                    stream,
                    server_side=False,
                    hostname=config.tls_hostname,
                    ssl_context=context,
                    standard_compatible=False,
                )
    except TimeoutError:
        error = ConnectFailed(f"{where} did not answer within {config.connect_timeout:g} s")
    except ssl.SSLError as exc:
        error = ConnectFailed(f"TLS with {where} failed: {describe(exc)}")
    except _NETWORK_ERRORS as exc:
        error = ConnectFailed(f"cannot connect to {where}: {describe(exc)}")
    if error is not None:
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
        raise error
    assert stream is not None
    return stream
