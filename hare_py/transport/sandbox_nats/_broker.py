"""``SandboxNatsBroker``: a named in-memory NATS server with a backdoor for tests.

Brokers register themselves in a process-wide registry, apart from the AMQP
sandbox's, so that a ``sandbox+nats://NAME`` URL reaches them. Backdoor
methods are synchronous; their effects reach connections asynchronously, as
a real server's would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from ...errors import ConfigError, ConnectFailed
from .._sandbox_common import Registry, SandboxBrokerBase
from ..base import CloseReason
from ._faults import Fault, FaultAction
from ._model import DEFAULT_MAX_PAYLOAD, NatsModel
from ._state import Event, Headers
from ._views import ConnectionInfo, Op, SandboxNatsMessage, SessionInfo, SubscriptionInfo

__all__ = ["SandboxNatsBroker", "lookup_broker"]

_registry: Registry[SandboxNatsBroker] = Registry(
    "sandbox NATS broker", "nats", "SandboxNatsBroker"
)

KILL_TEXT = "connection closed by the sandbox backdoor"
SOCKET_TEXT = "the server closed the socket"  # what the NATS driver says on EOF
Match = Callable[[SandboxNatsMessage], bool]


def lookup_broker(name: str) -> SandboxNatsBroker:
    """The registered broker called ``name``; ``ConnectFailed`` if there is none."""
    return _registry.lookup(name)


class SandboxNatsBroker(SandboxBrokerBase[Op, Fault, Event]):
    """An in-memory NATS server reachable at ``sandbox+nats://NAME``.

    It serves what nats-server 2.9 serves a core NATS client: subjects with
    ``*`` and ``>``, queue groups, no-responders statuses, ``max_payload``
    (1 MiB unless given). Use it as a context manager (or call ``close()``)
    to unregister it.
    """

    _registry = _registry
    _scheme = "sandbox+nats"
    _closed_text = "the sandbox NATS broker was closed"
    _model: NatsModel

    def __init__(self, name: str | None = None, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        name = _registry.claim(name)
        if max_payload < 1:
            raise ConfigError(f"max_payload must be at least 1 byte, got {max_payload}")
        self._lame_duck = False
        super().__init__(name, NatsModel(self._route_event, max_payload))

    @property
    def max_payload(self) -> int:
        """The largest message (headers and body) it takes, as its INFO would say."""
        return self._model.max_payload

    # -- used by the backend -----------------------------------------------------

    @property
    def model(self) -> NatsModel:
        return self._model

    def _refusal(self) -> Exception | None:
        if self._down:
            return ConnectFailed(f"sandbox NATS broker {self.name!r} is down: refused")
        if self._lame_duck:
            return ConnectFailed(f"{self.url} is in lame duck mode")
        return None

    def _failed_connect(self, name: str | None, failure: Exception) -> Op:
        return Op("connect", None, None, {"name": name}, failure)

    # -- introspection -------------------------------------------------------------

    @property
    def connections(self) -> dict[int, ConnectionInfo]:
        """Open connections by id."""
        return self._model.connection_infos()

    @property
    def sessions(self) -> dict[int, SessionInfo]:
        """Open sessions by id."""
        return self._model.session_infos()

    @property
    def subscriptions(self) -> list[SubscriptionInfo]:
        """Every subscription, by connection and then in SUB order."""
        return self._model.subscription_infos()

    def subscribers(self, subject: str) -> list[SubscriptionInfo]:
        """The subscriptions whose subject matches ``subject`` (queue members included)."""
        return self._model.subscription_infos(subject)

    # -- messages from outside ---------------------------------------------------------

    def publish(
        self,
        subject: str,
        body: bytes = b"",
        *,
        reply: str | None = None,
        headers: Mapping[str, str | Sequence[str]] | None = None,
    ) -> int:
        """Publish as a peer outside any connection would; returns how many subscriptions
        it reached. The server's rules apply, not the client's: a ``*`` or ``>`` in
        ``subject`` reaches only wildcard subscriptions, an empty token reaches nobody.
        """
        pairs: Headers | None = None
        if headers is not None:
            pairs = tuple(
                (key, item)
                for key, value in headers.items()
                for item in ((value,) if isinstance(value, str) else value)
            )
        delivered = self._model.publish(None, subject, bytes(body), reply=reply, headers=pairs)
        assert delivered is not None
        return delivered

    # -- outages, kills and stalls ----------------------------------------------------------

    @property
    def in_lame_duck_mode(self) -> bool:
        """True between ``lame_duck()`` and ``up()``."""
        return self._lame_duck

    def down(
        self, *, text: str = SOCKET_TEXT, by: Literal["broker", "network"] = "network"
    ) -> None:
        """Stop the server: close every connection, refuse connects until ``up()``.

        nats-server says nothing when it stops (the sockets just close), hence
        ``by="network"``.
        """
        self._down = True
        self._model.record(Op("down", args={"text": text, "by": by}))
        self.kill_all_connections(text=text, by=by)
        self._model.restart()

    def up(self) -> None:
        """Start the server again after ``down()`` or ``lame_duck()``."""
        self._down = False
        self._lame_duck = False
        self._model.record(Op("up"))

    def lame_duck(self) -> None:
        """Enter lame duck mode, as nats-server does on ``--signal ldm``.

        New connections are refused, and every client is told (an INFO with
        ``ldm``) to move to another server: its connection's close reason is
        settled at once ("lame duck mode", by ``"broker"``), while its sessions
        go on sending and receiving, draining. ``down()`` ends what is left, as
        the server does once its lame duck duration is over.
        """
        self._lame_duck = True
        self._model.lame_duck()

    def _connection(self, connection_id: int) -> None:
        info = self._model.connections.get(connection_id)
        if info is None or info.reason is not None:
            raise ConfigError(f"no open connection {connection_id} on {self!r}")

    def kill_connection(
        self,
        connection_id: int,
        text: str | None = None,
        *,
        by: Literal["broker", "network"] = "broker",
    ) -> None:
        """Close a connection from the server side: every session on it closes.

        ``by="broker"`` is a closing ``-ERR`` with ``text``; ``by="network"``, as if
        the socket died ("the server closed the socket" unless ``text`` says else).
        """
        self._connection(connection_id)
        if text is None:
            text = KILL_TEXT if by == "broker" else SOCKET_TEXT
        self._model.record(Op("kill_connection", connection_id, None, {"text": text, "by": by}))
        self._model.close_connection(connection_id, CloseReason(0, text, by))

    def kill_all_connections(
        self, text: str | None = None, *, by: Literal["broker", "network"] = "broker"
    ) -> None:
        """Close every open connection from the server side."""
        for connection_id in list(self._model.connection_infos()):
            self.kill_connection(connection_id, text, by=by)

    def stall(self, connection_id: int) -> None:
        """Stop all traffic to and from a connection, silently, until ``resume``.

        Publishes, subscriptions and PINGs wait; so do messages for it. Only the
        client's own PINGs can notice (a ``flush`` times out; with a heartbeat the
        connection is declared dead after two PINGs without a PONG).
        """
        self._connection(connection_id)
        self._model.stall(connection_id)

    def resume(self, connection_id: int) -> None:
        """Let a stalled connection's traffic flow again, in the order it was held."""
        self._connection(connection_id)
        self._model.resume(connection_id)

    def is_stalled(self, connection_id: int) -> bool:
        """Whether ``connection_id`` is stalled right now."""
        self._connection(connection_id)
        return self._model.connections[connection_id].stalled

    # -- delivery faults ---------------------------------------------------------------------

    def _fault(
        self,
        action: FaultAction,
        subject: str | None,
        match: Match | None,
        times: int | None,
        connection: int | None,
        delay: float = 0.0,
    ) -> Fault:
        return self._add_fault(Fault(action, subject, match, times, delay, connection))

    def drop(
        self,
        subject: str | None = None,
        *,
        match: Match | None = None,
        times: int | None = None,
        connection: int | None = None,
    ) -> Fault:
        """Lose matching deliveries (``times`` of them, or until ``fault.remove()``).

        ``subject`` may hold wildcards; ``connection`` limits it to deliveries to
        that connection. A request whose only delivery is dropped gets no 503: the
        server did route it.
        """
        return self._fault("drop", subject, match, times, connection)

    def delay(
        self,
        seconds: float,
        subject: str | None = None,
        *,
        match: Match | None = None,
        times: int | None = None,
        connection: int | None = None,
    ) -> Fault:
        """Deliver matching messages ``seconds`` late; other deliveries overtake them."""
        self._check_delay(seconds)
        return self._fault("delay", subject, match, times, connection, seconds)
