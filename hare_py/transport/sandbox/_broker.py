"""``SandboxBroker``: a named in-memory broker with a backdoor for tests.

Brokers register themselves in a process-wide registry so that a
``sandbox://NAME`` URL reaches them. Backdoor methods are synchronous; their
effects reach connections asynchronously, as a real broker's would.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Literal

from ...errors import ConfigError, ConnectFailed
from .._amqp_codec import FRAME_MIN_SIZE
from .._sandbox_common import Registry, SandboxBrokerBase, Script
from ..base import CONNECTION_FORCED, EMPTY_PROPERTIES, CloseReason, Properties
from ._faults import Fault, FaultAction
from ._limits import CHANNEL_MAX, MAX_MESSAGE_SIZE
from ._model import CANCEL_TEXT, BrokerModel
from ._state import Event
from ._views import (
    BindingInfo,
    ChannelInfo,
    ConnectionInfo,
    ConsumerInfo,
    ExchangeInfo,
    Op,
    QueueDetails,
    SandboxMessage,
)
from ._wire import FRAME_MAX, Unsendable, encode_message

__all__ = ["SandboxBroker", "lookup_broker"]

_registry: Registry[SandboxBroker] = Registry("sandbox broker", "broker", "SandboxBroker")

FORCED_TEXT = "CONNECTION_FORCED - closed by the sandbox backdoor"
SHUTDOWN_TEXT = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"


def lookup_broker(name: str) -> SandboxBroker:
    """The registered broker called ``name``; ``ConnectFailed`` if there is none."""
    return _registry.lookup(name)


class SandboxBroker(SandboxBrokerBase[Op, Fault, Event]):
    """An in-memory AMQP 0-9-1 broker reachable at ``sandbox://NAME``.

    Use it as a context manager (or call ``close()``) to unregister it.

    It refuses what RabbitMQ 3.10 refuses, with its settings by default:
    ``frame_max`` (a message's content header must fit in one frame),
    ``max_message_size`` (a larger body is refused with 406) and
    ``channel_max`` (channels open at once on one connection). Lower them to
    test those limits without sending large messages.
    """

    _registry = _registry
    _scheme = "sandbox"
    _closed_text = "CONNECTION_FORCED - sandbox broker closed"
    _model: BrokerModel

    def __init__(
        self,
        name: str | None = None,
        *,
        frame_max: int = FRAME_MAX,
        max_message_size: int = MAX_MESSAGE_SIZE,
        channel_max: int = CHANNEL_MAX,
    ) -> None:
        name = _registry.claim(name)
        if frame_max < FRAME_MIN_SIZE:
            raise ConfigError(f"frame_max must be at least {FRAME_MIN_SIZE}, got {frame_max}")
        self.frame_max = frame_max
        self._channel_script: deque[Script] = deque()
        model = BrokerModel(
            self._route_event, max_message_size=max_message_size, channel_max=channel_max
        )
        super().__init__(name, model)

    # -- used by the backend -----------------------------------------------------

    @property
    def model(self) -> BrokerModel:
        return self._model

    def _refusal(self) -> Exception | None:
        if self._down:
            return ConnectFailed(f"sandbox broker {self.name!r} is down: connection refused")
        return None

    def _failed_connect(self, name: str | None, failure: Exception) -> Op:
        return Op("connect", None, None, {"name": name}, failure)

    def accept_channel(self, connection: int, confirms: bool) -> tuple[int, int]:
        """Open a channel for the backend, or raise the scripted error."""
        scripted = self._channel_script.popleft() if self._channel_script else None
        if scripted is not None:
            args = {"publisher_confirms": confirms}
            self._model.record(Op("open_channel", connection, None, args, scripted))
            raise scripted
        return self._model.open_channel(connection, confirms)

    # -- introspection -------------------------------------------------------------

    @property
    def connections(self) -> dict[int, ConnectionInfo]:
        """Open connections by id."""
        return self._model.connection_infos()

    @property
    def channels(self) -> dict[int, ChannelInfo]:
        """Open channels by id."""
        return self._model.channel_infos()

    @property
    def queues(self) -> dict[str, QueueDetails]:
        """Queues by name, with counts, consumers and exclusive owner."""
        return self._model.queue_details()

    @property
    def exchanges(self) -> dict[str, ExchangeInfo]:
        """Exchanges by name, the default exchange ``""`` included."""
        return self._model.exchange_infos()

    @property
    def bindings(self) -> list[BindingInfo]:
        """Every queue binding."""
        return self._model.binding_infos()

    def consumers(self, queue: str) -> list[ConsumerInfo]:
        """The consumers of ``queue``, in delivery order."""
        return self._model.consumer_infos(queue)

    def messages(self, queue: str) -> list[SandboxMessage]:
        """The ready (not delivered) messages of ``queue``."""
        return self._model.messages(queue)

    # -- scripted results ---------------------------------------------------------------

    def script_channel_open(self, *results: Script) -> None:
        """Queue results for the next channel opens: an exception to raise, or None."""
        self._channel_script.extend(results)

    # -- outages and kills ----------------------------------------------------------------

    def down(
        self,
        *,
        code: int = CONNECTION_FORCED,
        text: str = SHUTDOWN_TEXT,
        by: Literal["broker", "network"] = "broker",
    ) -> None:
        """Stop the broker: kill every connection, refuse connects, lose transient state."""
        self._down = True
        self._model.record(Op("down", args={"code": code, "text": text, "by": by}))
        self.kill_all_connections(code=code, text=text, by=by)
        self._model.restart()

    def up(self) -> None:
        """Start the broker again after ``down()``."""
        self._down = False
        self._model.record(Op("up"))

    def kill_channel(
        self, channel_id: int, code: int = CONNECTION_FORCED, text: str = FORCED_TEXT
    ) -> None:
        """Close a channel from the broker side with ``code`` and ``text``."""
        if channel_id not in self._model.channels:
            raise ConfigError(f"no channel {channel_id} on {self!r}")
        self._model.close_channel(channel_id, CloseReason(code, text, "broker"))

    def kill_connection(
        self,
        connection_id: int,
        code: int = CONNECTION_FORCED,
        text: str = FORCED_TEXT,
        *,
        by: Literal["broker", "network"] = "broker",
    ) -> None:
        """Close a connection from the broker side (``by="network"``: as if the socket died)."""
        if connection_id not in self._model.connections:
            raise ConfigError(f"no connection {connection_id} on {self!r}")
        self._model.close_connection(connection_id, CloseReason(code, text, by))

    def kill_all_connections(
        self,
        code: int = CONNECTION_FORCED,
        text: str = FORCED_TEXT,
        *,
        by: Literal["broker", "network"] = "broker",
    ) -> None:
        """Close every open connection from the broker side."""
        for connection in list(self._model.connection_infos()):
            self.kill_connection(connection, code, text, by=by)

    def cancel_consumer(self, tag: str) -> None:
        """Cancel a consumer from the broker side; its ``on_cancel`` is called."""
        self._model.record(Op("backdoor_cancel_consumer", args={"consumer_tag": tag}))
        if not self._model.cancel_consumer(tag, CloseReason(0, CANCEL_TEXT, "broker")):
            raise ConfigError(f"no consumer {tag!r} on {self!r}")

    def delete_queue(self, name: str) -> int:
        """Delete a queue like ``rabbitmqctl delete_queue``: consumers are cancelled."""
        self._model.record(Op("backdoor_delete_queue", args={"queue": name}))
        return self._model.delete_queue(name)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties = EMPTY_PROPERTIES,
    ) -> None:
        """Publish a message from outside any connection (``BrokerError`` if no exchange).

        ``ConfigError`` for a message no AMQP client could send.
        """
        try:
            data, props = encode_message(
                exchange, routing_key, body, properties, False, self.frame_max
            )
        except Unsendable as exc:
            raise ConfigError(f"cannot publish: {exc.reason}") from None
        self._model.basic_publish(
            None, data, exchange=exchange, routing_key=routing_key, properties=props
        )

    # -- delivery faults ---------------------------------------------------------------------

    def _fault(
        self,
        action: FaultAction,
        queue: str | None,
        match: Callable[[SandboxMessage], bool] | None,
        times: int | None,
        delay: float = 0.0,
    ) -> Fault:
        return self._add_fault(Fault(action, queue, match, times, delay))

    def drop(
        self,
        *,
        queue: str | None = None,
        match: Callable[[SandboxMessage], bool] | None = None,
        times: int | None = None,
    ) -> Fault:
        """Drop matching deliveries (``times`` of them, or until ``fault.remove()``)."""
        return self._fault("drop", queue, match, times)

    def delay(
        self,
        seconds: float,
        *,
        queue: str | None = None,
        match: Callable[[SandboxMessage], bool] | None = None,
        times: int | None = None,
    ) -> Fault:
        """Deliver matching messages ``seconds`` late; other deliveries overtake them."""
        self._check_delay(seconds)
        return self._fault("delay", queue, match, times, seconds)

    def duplicate(
        self,
        *,
        queue: str | None = None,
        match: Callable[[SandboxMessage], bool] | None = None,
        times: int | None = None,
    ) -> Fault:
        """Deliver matching messages twice (each copy with its own delivery tag)."""
        return self._fault("duplicate", queue, match, times)
