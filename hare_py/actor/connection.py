"""A supervised broker connection: it reconnects with backoff, forever, and actors wait for it.

Rules this module keeps:

- One background task owns the transport connection; nobody else opens or
  closes it. On loss it reconnects, trying the given URLs in turn with
  exponential backoff and jitter; it never gives up while the block runs,
  except on a ``ConfigError``, which no retry can fix. A server that says it
  is going away (NATS lame duck mode) is left for the next URL at once,
  without backoff, while its connection stays up in its holder task for the
  sessions that drain.
- Actors never hold the connection across a loss: they ask
  ``wait_connected()`` for the current one and open their own channels on it.
- Bad configuration (unknown scheme or URL parameter, a value the backend
  would refuse, a backend that cannot run on this event loop) fails at
  ``__aenter__``, for every URL of the list, not later in the background.
- Only the task that entered the connection (its owner) leaves the task
  group, in ``__aexit__``. ``aclose()`` from any other task cancels the
  owner's block and waits for it to end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
from anyio.abc import TaskGroup

from .._log import get_logger
from ..errors import ConfigError, ConnectionLost, HareError
from ..transport import check_url, parse_url, wire_protocol_of
from ..transport.base import Backend, ConnectOptions, TLSOptions, TransportConnection
from ..transport.url import BrokerURL
from .backoff import Backoff

__all__ = ["Connection"]

log = get_logger("hare_py.connection")

# How long aclose() from another task waits for the owner's block to end.
CLOSE_TIMEOUT = 30.0


class Connection:
    """A connection to a broker (or a list of them, for failover) that heals itself.

    ``async with Connection("amqp://guest:guest@localhost/") as conn:`` starts
    connecting in the background and returns at once: a daemon may start
    before its broker does. Clients wait for the connection within their own
    deadlines.

    A ``ConfigError`` while connecting (a setting only the connect can
    check) is not retried: the connection stops, ``wait_connected()`` raises
    it, and the block is cancelled and raises it, as a supervisor that gives
    up raises ``RestartIntensityExceeded`` out of its block.
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
        self._tg: TaskGroup | None = None
        self._owner: int | None = None  # id of the task that entered
        # Made in __aenter__, which runs in an event loop.
        self._run_scope: anyio.CancelScope
        self._run_done: anyio.Event
        self._exited: anyio.Event
        self._fatal: ConfigError | None = None
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

        Raises ``ConnectionLost`` once this ``Connection`` is closed, or the
        ``ConfigError`` that stopped it. Bound the wait with a cancel scope
        (requests use their deadline).
        """
        while True:
            current = self._current
            if current is not None and current.is_open:
                return current
            if self._closed:
                if self._fatal is not None:
                    raise ConfigError(str(self._fatal)) from self._fatal
                raise ConnectionLost("the hare_py Connection is closed")
            await self._changed.wait()

    def _set_current(self, conn: TransportConnection | None, url: BrokerURL | None) -> None:
        self._current = conn
        self._current_url = url
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def __aenter__(self) -> Connection:
        if self._owner is not None:
            raise ConfigError("a Connection can be entered only once")
        # ConfigError now, for every URL, instead of retries in the background.
        backends = [check_url(u, self.options) for u in self.urls]
        # Shielded: aclose() from another task cancels the owner's block first,
        # so that its clients stop while the transport is still up.
        self._run_scope = anyio.CancelScope(shield=True)
        self._run_done, self._exited = anyio.Event(), anyio.Event()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg, self._owner = tg, _task_id()
        tg.start_soon(self._main, backends)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        tg, self._tg = self._tg, None
        if tg is None or _task_id() != self._owner:
            raise ConfigError("a Connection's block must be left by the task that entered it")
        self._closed = True
        self._run_scope.cancel()
        try:
            if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
                # A user's exception from the block: let it through unwrapped.
                await tg.__aexit__(None, None, None)
                suppressed: bool | None = False
            else:
                # Passed on, so that a cancellation aclose() caused ends here.
                suppressed = await tg.__aexit__(exc_type, exc, tb)
        finally:
            self._set_current(None, None)
            self._exited.set()
        if self._fatal is not None:
            if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
                self._fatal.__context__ = exc
            raise self._fatal
        return suppressed

    async def aclose(self, *, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the connection and stop reconnecting; safe from any task, and again.

        In the block that entered the connection, this closes the transport
        there and then and the block goes on; ``wait_connected()`` raises
        ``ConnectionLost`` from then on.

        From any other task (a signal handler, say) it cancels that block, as
        leaving it would: clients in it stop while the transport is still up,
        then the transport closes. It returns once the block has ended. A
        block that does not end within ``timeout`` seconds (it shields
        itself) has its transport closed under it, an error is logged, and
        ``aclose`` returns; the block ends when it can.
        """
        if not timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout!r}")
        if self._owner is None or self._exited.is_set():
            return
        self._closed = True
        if _task_id() != self._owner:
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            with anyio.move_on_after(timeout):
                await self._exited.wait()
            if self._exited.is_set():
                return
            self._log.error("connection.close_timeout", seconds=timeout)
        self._run_scope.cancel()
        await self._run_done.wait()  # the backend bounds its close

    async def _main(self, backends: Sequence[Backend]) -> None:
        try:
            with self._run_scope:
                await self._run(backends)
        except ConfigError as exc:
            # Retrying cannot fix it: stop, and end the block with the error.
            self._fatal = exc
            self.last_error = exc
            self._log.error("connection.stopped", error=str(exc))
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
        finally:
            self._closed = True
            self._set_current(None, None)
            self._run_done.set()

    async def _run(self, backends: Sequence[Backend]) -> None:
        failed_rounds = 0  # rounds over every URL that ended without a lasting connection
        index = 0
        found = list(backends)
        fatal: ConfigError | None = None
        # A connection lives in its own task, so that one that drains (NATS lame
        # duck mode) stays open for its sessions while the next one is made.
        async with anyio.create_task_group() as holders:
            while True:
                url, backend = self.urls[index], found[index]
                started = anyio.current_time()
                try:
                    conn: TransportConnection = await holders.start(self._hold, url, backend)
                except ConfigError as exc:
                    fatal = exc  # raised below, not wrapped in the task group's ExceptionGroup
                    holders.cancel_scope.cancel()
                    break
                except HareError as exc:
                    self._set_current(None, None)
                    self.last_error = exc
                    self._log.warning("connection.failed", url=str(url), error=str(exc))
                    index = (index + 1) % len(self.urls)
                    if index != 0:
                        continue  # try the next broker at once
                else:
                    reason = await conn.wait_closed()
                    if self._current is conn:
                        self._set_current(None, None)
                    self._log.warning("connection.down", url=str(url), reason=str(reason))
                    self._learn(conn.discovered_urls, found)
                    if len(self.urls) > 1:
                        # Its node is likely gone (restarted, lost, or going away in lame
                        # duck mode): try the next one first, so that an unreachable host
                        # does not cost a whole connect_timeout before the others are tried.
                        index = (index + 1) % len(self.urls)
                        if conn.draining:
                            failed_rounds = 0
                            continue
                if anyio.current_time() - started > _STABLE_AFTER:
                    failed_rounds = 0
                    continue  # it was up for a while: reconnect at once
                await anyio.sleep(self.backoff.delay(failed_rounds))
                failed_rounds += 1
        if fatal is not None:
            raise fatal

    async def _hold(
        self, url: BrokerURL, backend: Backend, *, task_status: anyio.abc.TaskStatus[Any]
    ) -> None:
        """Connect, report the connection, and keep it until it closes and drains."""
        async with backend.connect(url, self.options) as conn:
            self.connects += 1
            self.last_error = None
            self._set_current(conn, url)
            self._log.info("connection.up", url=str(url), connects=self.connects)
            task_status.started(conn)
            await conn.wait_closed()

    def _learn(self, urls: Sequence[BrokerURL], backends: list[Backend]) -> None:
        """Add the servers a connection discovered (its cluster) to the failover list."""
        known = {(u.scheme, u.host, u.port) for u in self.urls}
        for url in urls:
            key = (url.scheme, url.host, url.port)
            if key in known or len(self.urls) >= _MAX_URLS:
                continue
            try:
                backend = check_url(url, self.options)
            except ConfigError:
                continue
            known.add(key)
            self.urls += (url,)
            backends.append(backend)
            self._log.info("connection.url_discovered", url=str(url))


def _task_id() -> int:
    return anyio.get_current_task().id


# A connection that lived this long resets the backoff: it was not flapping.
_STABLE_AFTER = 1.0
# Discovered servers stop being added past this many URLs.
_MAX_URLS = 64
