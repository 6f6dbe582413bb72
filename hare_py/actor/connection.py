"""A supervised broker connection: it reconnects with backoff, forever, and actors wait for it.

Rules this module keeps:

- One background task owns the transport connection; nobody else opens or
  closes it. On loss it reconnects, trying the given URLs in turn with
  exponential backoff and jitter; it never gives up while the block runs.
- Actors never hold the connection across a loss: they ask
  ``wait_connected()`` for the current one and open their own channels on it.
- Bad configuration (unknown scheme, a backend that cannot run on this event
  loop) fails at ``__aenter__``, not later in the background.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from .._log import get_logger
from ..errors import ConfigError, ConnectionLost, HareError
from ..transport import backend_for, parse_url, wire_protocol_of
from ..transport.base import Backend, ConnectOptions, TLSOptions, TransportConnection
from ..transport.url import BrokerURL
from .backoff import Backoff

__all__ = ["Connection"]

log = get_logger("hare_py.connection")


class Connection:
    """A connection to a broker (or a list of them, for failover) that heals itself.

    ``async with Connection("amqp://guest:guest@localhost/") as conn:`` starts
    connecting in the background and returns at once: a daemon may start
    before its broker does. Clients wait for the connection within their own
    deadlines.
    """

    def __init__(
        self,
        url: str | BrokerURL | Sequence[str | BrokerURL],
        *,
        heartbeat: float = 30.0,
        name: str | None = None,
        connect_timeout: float = 10.0,
        tls: TLSOptions | None = None,
        backoff: Backoff | None = None,
        client_properties: Mapping[str, Any] | None = None,
    ) -> None:
        raw = [url] if isinstance(url, str | BrokerURL) else list(url)
        if not raw:
            raise ConfigError("Connection needs at least one broker URL")
        self.urls: tuple[BrokerURL, ...] = tuple(parse_url(u) for u in raw)
        protocols = {wire_protocol_of(u) for u in self.urls}
        if len(protocols) > 1:
            raise ConfigError(
                f"the URLs of one Connection must speak one protocol, got {sorted(protocols)}"
            )
        #: The wire protocol of this connection's URLs ("amqp-0-9-1", "nats", ...).
        self.wire_protocol: str = protocols.pop()
        if not (isinstance(heartbeat, int | float) and heartbeat >= 0):
            raise ConfigError(f"heartbeat must be >= 0 seconds, got {heartbeat!r}")
        if not (isinstance(connect_timeout, int | float) and connect_timeout > 0):
            raise ConfigError(f"connect_timeout must be > 0 seconds, got {connect_timeout!r}")
        self.options = ConnectOptions(
            heartbeat=float(heartbeat),
            name=name,
            connect_timeout=float(connect_timeout),
            tls=tls,
            client_properties=dict(client_properties or {}),
        )
        self.backoff = backoff or Backoff(initial=0.1, maximum=5.0)
        self._current: TransportConnection | None = None
        self._current_url: BrokerURL | None = None
        self._changed = anyio.Event()
        self._closed = False
        self._tg: Any = None
        self.last_error: BaseException | None = None
        self.connects = 0  # successful connects so far
        self._log = log.bind(connection=name or str(self.urls[0]))

    def __repr__(self) -> str:
        state = "connected" if self.is_connected else "closed" if self._closed else "connecting"
        return f"<Connection {', '.join(map(str, self.urls))} {state}>"

    @property
    def is_connected(self) -> bool:
        return self._current is not None and self._current.is_open

    @property
    def url(self) -> BrokerURL | None:
        """The URL of the broker currently connected to (``str()`` hides the password)."""
        return self._current_url if self.is_connected else None

    async def wait_connected(self) -> TransportConnection:
        """The live transport connection, waiting for (re)connection if needed.

        Raises ``ConnectionLost`` once this ``Connection`` is closed. Bound the
        wait with a cancel scope (requests use their deadline).
        """
        while True:
            current = self._current
            if current is not None and current.is_open:
                return current
            if self._closed:
                raise ConnectionLost("the hare_py Connection is closed")
            await self._changed.wait()

    def _set_current(self, conn: TransportConnection | None, url: BrokerURL | None) -> None:
        self._current = conn
        self._current_url = url
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def __aenter__(self) -> Connection:
        backends = [backend_for(u) for u in self.urls]  # ConfigError now, not in the background
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._run, backends)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        await self.aclose()
        return None

    async def aclose(self) -> None:
        """Close the connection and stop reconnecting."""
        if self._tg is None:
            return
        tg, self._tg = self._tg, None
        self._closed = True
        tg.cancel_scope.cancel()
        await tg.__aexit__(None, None, None)
        self._set_current(None, None)

    async def _run(self, backends: Sequence[Backend]) -> None:
        failed_rounds = 0  # rounds over every URL that ended without a lasting connection
        index = 0
        while True:
            url, backend = self.urls[index], backends[index]
            started = anyio.current_time()
            try:
                async with backend.connect(url, self.options) as conn:
                    self.connects += 1
                    self.last_error = None
                    self._set_current(conn, url)
                    self._log.info("connection.up", url=str(url), connects=self.connects)
                    reason = await conn.wait_closed()
                    self._set_current(None, None)
                    self._log.warning("connection.down", url=str(url), reason=str(reason))
            except HareError as exc:
                self._set_current(None, None)
                self.last_error = exc
                self._log.warning("connection.failed", url=str(url), error=str(exc))
                index = (index + 1) % len(self.urls)
                if index != 0:
                    continue  # try the next broker at once
            if anyio.current_time() - started > _STABLE_AFTER:
                failed_rounds = 0
                continue  # it was up for a while: reconnect at once
            await anyio.sleep(self.backoff.delay(failed_rounds))
            failed_rounds += 1


# A connection that lived this long resets the backoff: it was not flapping.
_STABLE_AFTER = 1.0
