"""OpenTelemetry instrumentation of RPCClient and RPCServer (the ``hare_py[otel]`` extra).

Imported only when telemetry is on (``hare_py.rpc.telemetry``). The client and
server consult one instrumentation object at a few points each:

- client: ``start`` (in the caller's task, so that the span's parent is the
  caller's current span), ``CallTrace.sent`` (the actor publishes it: the
  wire message's destination and size; a second send is a republish), and
  ``CallTrace.finish`` (the caller has its answer: outcome, status, duration);
- server: ``start`` (the request is unwrapped: the caller's context is
  extracted from its headers), ``HandlingTrace.enter``/``leave`` around
  ``handle_request`` (a nested request continues the trace), and
  ``HandlingTrace.finish`` (the answer is sent, or the request abandoned);
- both: ``started`` (a new incarnation: after the first, a restart) and
  ``connected`` (a session is up: after the first, a reconnect).

The trace context travels in the request's headers, which every convention
already carries on its protocol (AMQP 0-9-1 headers, NATS headers, AMQP 1.0
application-properties): the client adds the propagator's fields to the
headers it hands ``ClientConvention.wrap``, the server reads them back from
``Incoming.headers``. Attribute names follow OpenTelemetry's RPC and
messaging semantic conventions; docs/observability.md says which and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import Token
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio
from opentelemetry import context, metrics, propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import ProxyTracerProvider, SpanKind, Status, StatusCode

from .._clock import now
from ..transport.base import AMQP_0_9_1, AMQP_1_0, NATS, Delivery, Message

if TYPE_CHECKING:
    from ..actor.caller import Caller
    from ..conventions import Incoming
    from .telemetry import TelemetryOption

__all__ = [
    "CallTrace",
    "ClientInstrumentation",
    "HandlingTrace",
    "ServerInstrumentation",
    "globally_configured",
]

_SCOPE = "hare_py"
_VERSION = "0.1.0"

#: messaging.system, network.protocol.name, network.protocol.version per wire protocol.
#: AMQP 1.0 names no system: the peer may be RabbitMQ, qpid, ActiveMQ or a hare_py listener.
_SYSTEMS = {
    AMQP_0_9_1: ("rabbitmq", "amqp", "0.9.1"),
    NATS: ("nats", "nats", None),
    AMQP_1_0: ("amqp", "amqp", "1.0"),
}

#: Seconds: the buckets the semantic conventions advise for RPC and messaging durations.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

#: A propagation header longer than this is ignored (W3C baggage allows 8192 bytes).
_MAX_VALUE = 8192
#: Headers scanned for a case-insensitive match (a Go peer sends ``Traceparent``).
_MAX_SCAN = 64


def globally_configured() -> bool:
    """True when the process has set a global tracer provider or meter provider."""
    if not isinstance(trace.get_tracer_provider(), ProxyTracerProvider):
        return True
    # The API's default meter provider is a proxy until one is set; its class is private.
    return type(metrics.get_meter_provider()).__name__ != "_ProxyMeterProvider"


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads propagation fields from request headers as any protocol delivers them:
    ``str``, ``bytes`` (AMQP 0-9-1 byte arrays) or a list of values (NATS)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            value = _case_insensitive(carrier, key)
        if isinstance(value, list | tuple):
            value = value[0] if value else None
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("latin-1")
        if not isinstance(value, str) or len(value) > _MAX_VALUE:
            return None
        return [value]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [key for key in carrier if isinstance(key, str)]


def _case_insensitive(carrier: Mapping[str, Any], key: str) -> Any:
    for seen, (name, value) in enumerate(carrier.items()):
        if seen >= _MAX_SCAN:
            return None
        if isinstance(name, str) and name.lower() == key:
            return value
    return None


_GETTER = _HeaderGetter()


class _Instrumentation:
    """What clients and servers share: the tracer, the meter, the fixed attributes."""

    role = "actor"

    def __init__(self, option: TelemetryOption, wire_protocol: str, service: str) -> None:
        tracer_provider = option.tracer_provider if option else None
        meter_provider = option.meter_provider if option else None
        self.tracer = trace.get_tracer(_SCOPE, _VERSION, tracer_provider)
        self.meter = metrics.get_meter(_SCOPE, _VERSION, meter_provider)
        system, protocol, version = _SYSTEMS.get(wire_protocol, (wire_protocol, None, None))
        self.wire_protocol = wire_protocol
        self.service = service
        attributes: dict[str, str] = {"rpc.system": "hare_py", "messaging.system": system}
        if protocol is not None:
            attributes["network.protocol.name"] = protocol
        if version is not None:
            attributes["network.protocol.version"] = version
        if service:
            attributes["rpc.service"] = service
        self.attributes = attributes
        #: Metric attributes: low cardinality (no routing keys, no ids).
        self.metric_attributes = {"messaging.system": system, "hare_py.role": self.role}
        self.incarnation = 0
        self._reconnects = self.meter.create_counter(
            "hare_py.reconnects", "{reconnect}", "Sessions reopened after one was lost"
        )
        self._restarts = self.meter.create_counter(
            "hare_py.actor.restarts", "{restart}", "Clients and servers restarted by a supervisor"
        )

    def started(self) -> None:
        """A new incarnation runs: every one after the first is a supervisor restart."""
        self.incarnation += 1
        if self.incarnation > 1:
            self._restarts.add(1, self.metric_attributes)

    def connected(self, connects: int) -> None:
        """A session is up (``connects``: 1 for an incarnation's first)."""
        if connects > 1:
            self._reconnects.add(1, self.metric_attributes)

    def span_name(self, routing_key: str) -> str:
        """``service/method`` as the RPC conventions name spans; the key alone without one."""
        return f"{self.service}/{routing_key}" if self.service else routing_key or "(default)"


def _destination(wire_protocol: str, exchange: str, routing_key: str) -> dict[str, str]:
    """Where a message goes: an exchange and routing key in AMQP 0-9-1, else the
    subject (NATS) or address (AMQP 1.0), which hare_py keeps in ``routing_key``."""
    if wire_protocol == AMQP_0_9_1:
        return {
            "messaging.destination.name": exchange or "amq.default",
            "messaging.rabbitmq.destination.routing_key": routing_key,
        }
    return {"messaging.destination.name": routing_key}


def _outcome(value: Any) -> str:
    return type(value).__name__ if isinstance(value, BaseException) else "ok"


class CallTrace:
    """One request's client span, from ``request()`` to its answer."""

    __slots__ = ("carrier", "incarnation", "owner", "sends", "span", "started")

    def __init__(self, owner: ClientInstrumentation, span: trace.Span, carrier: dict[str, str]):
        self.owner = owner
        self.span = span
        #: The propagator's fields (traceparent, tracestate, baggage) for the headers.
        self.carrier = carrier
        self.incarnation = owner.incarnation
        self.sends = 0
        self.started = perf_counter()

    def sent(self, message: Message) -> None:
        """The actor publishes the request (again, after a reconnect or a restart)."""
        self.sends += 1
        owner, span = self.owner, self.span
        if self.sends > 1:
            span.add_event("hare_py.republish", {"hare_py.attempt": self.sends})
            owner.republishes.add(1, owner.metric_attributes)
        elif span.is_recording():
            attributes: dict[str, str | int] = {
                **_destination(owner.wire_protocol, message.exchange, message.routing_key)
            }
            attributes["messaging.message.body.size"] = len(message.body)
            if message.properties.message_id:
                attributes["messaging.message.id"] = message.properties.message_id
            span.set_attributes(attributes)
        if self.incarnation != owner.incarnation:
            # Made while the client restarted: the next incarnation sends it.
            span.add_event("hare_py.restart", {"hare_py.incarnation": owner.incarnation})
            self.incarnation = owner.incarnation

    def unsent(self) -> None:
        """The send was refused before anything was written: the next one is the first."""
        self.sends -= 1

    def finish(self, caller: Caller | None, error: BaseException | None = None) -> None:
        """The caller has its answer (``caller``), or failed before it had one (``error``)."""
        value: Any
        if error is not None:
            cancelled = isinstance(error, anyio.get_cancelled_exc_class())
            outcome, value = ("cancelled" if cancelled else _outcome(error)), error
        elif caller is None or caller.gave_up:
            deadline = caller.deadline if caller is not None else 0.0
            outcome, value = ("RequestTimeout", None) if now() >= deadline else ("cancelled", None)
        else:
            value = caller.value
            outcome = _outcome(value)
            if outcome == "ok" and not self.sends:
                outcome = "local"  # answered by handle_request (or reply()) without a send
        owner, span = self.owner, self.span
        elapsed = perf_counter() - self.started
        metric = {**owner.metric_attributes, "hare_py.outcome": outcome}
        if outcome not in ("ok", "local", "cancelled"):
            metric["error.type"] = outcome
            if span.is_recording():
                span.set_attribute("error.type", outcome)
                text = str(value)[:200] if value is not None else "no reply before the deadline"
                span.set_status(Status(StatusCode.ERROR, f"{outcome}: {text}"))
        if span.is_recording():
            span.set_attribute("hare_py.outcome", outcome)
        span.end()
        owner.in_flight.add(-1, owner.metric_attributes)
        owner.duration.record(elapsed, metric)


class ClientInstrumentation(_Instrumentation):
    """An RPCClient's spans and metrics."""

    role = "client"

    def __init__(self, option: TelemetryOption, wire_protocol: str, service: str) -> None:
        super().__init__(option, wire_protocol, service)
        meter = self.meter
        self.duration = meter.create_histogram(
            "rpc.client.call.duration",
            "s",
            "Requests from request() to the answer, by outcome",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )
        self.in_flight = meter.create_up_down_counter(
            "hare_py.client.requests.in_flight", "{request}", "Requests waiting for their answer"
        )
        self.republishes = meter.create_counter(
            "hare_py.client.republishes",
            "{request}",
            "Idempotent requests sent again after their session was lost",
        )

    def start(self, routing_key: str, correlation_id: str) -> CallTrace:
        """A request begins, in the caller's task: its span is a child of the current one."""
        parent = context.get_current()
        attributes: dict[str, Any] = {
            **self.attributes,
            "rpc.method": routing_key,
            "messaging.operation.type": "send",
            "messaging.operation.name": "request",
            "messaging.message.conversation_id": correlation_id,
        }
        span = self.tracer.start_span(
            self.span_name(routing_key), parent, SpanKind.CLIENT, attributes
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, trace.set_span_in_context(span, parent))
        self.in_flight.add(1, self.metric_attributes)
        return CallTrace(self, span, carrier)


class HandlingTrace:
    """One request's server span, from its delivery to its answer."""

    __slots__ = ("context", "owner", "span", "started", "token")

    def __init__(self, owner: ServerInstrumentation, span: trace.Span, ctx: context.Context):
        self.owner = owner
        self.span = span
        self.context = ctx
        self.started = perf_counter()
        self.token: Token[context.Context] | None = None

    def enter(self) -> None:
        """``handle_request`` runs: its span is current, so a nested request continues it."""
        self.token = context.attach(self.context)

    def leave(self) -> None:
        token, self.token = self.token, None
        if token is not None:
            context.detach(token)

    def repeated(self) -> None:
        """The request's id was answered before: the answer comes from the cache."""
        self.span.set_attribute("hare_py.repeated", True)
        self.owner.redeliveries.add(1, {**self.owner.metric_attributes, "hare_py.cause": "repeat"})

    def crashed(self, error: BaseException) -> None:
        """``handle_request`` raised: the span keeps the exception and its traceback."""
        self.span.record_exception(error)

    def finish(self, error: BaseException | None) -> None:
        """Answered (``error``: the error reply, or what kept the answer from leaving)."""
        owner, span = self.owner, self.span
        outcome = _outcome(error)
        metric = {**owner.metric_attributes, "hare_py.outcome": outcome}
        if error is not None:
            metric["error.type"] = outcome
            if span.is_recording():
                span.set_attribute("error.type", outcome)
                span.set_status(Status(StatusCode.ERROR, f"{outcome}: {str(error)[:200]}"))
        if span.is_recording():
            span.set_attribute("hare_py.outcome", outcome)
        span.end()
        owner.duration.record(perf_counter() - self.started, metric)


class ServerInstrumentation(_Instrumentation):
    """An RPCServer's spans and metrics."""

    role = "server"

    def __init__(
        self, option: TelemetryOption, wire_protocol: str, service: str, queue: str
    ) -> None:
        super().__init__(option, wire_protocol, service)
        if queue:  # the queue (AMQP) or queue group (NATS) the server's instances share
            self.attributes["messaging.consumer.group.name"] = queue
        meter = self.meter
        self.duration = meter.create_histogram(
            "rpc.server.call.duration",
            "s",
            "Requests from their delivery to their answer, by outcome",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )
        self.redeliveries = meter.create_counter(
            "hare_py.server.redeliveries",
            "{request}",
            "Requests delivered again: by the broker, or repeated by their caller",
        )

    def start(self, delivery: Delivery, incoming: Incoming) -> HandlingTrace:
        """A request was unwrapped: its span continues the caller's trace, if it sent one."""
        parent = propagate.extract(incoming.headers, getter=_GETTER)
        attributes: dict[str, Any] = {
            **self.attributes,
            **_destination(self.wire_protocol, delivery.exchange, delivery.routing_key),
            "rpc.method": incoming.routing_key,
            "messaging.operation.type": "process",
            "messaging.operation.name": "handle",
            "messaging.message.body.size": len(delivery.body),
        }
        if incoming.correlation_id:
            attributes["messaging.message.conversation_id"] = incoming.correlation_id
        if delivery.properties.message_id:
            attributes["messaging.message.id"] = delivery.properties.message_id
        if delivery.redelivered:
            attributes["hare_py.redelivered"] = True
            self.redeliveries.add(1, {**self.metric_attributes, "hare_py.cause": "broker"})
        span = self.tracer.start_span(
            self.span_name(incoming.routing_key), parent, SpanKind.SERVER, attributes
        )
        return HandlingTrace(self, span, trace.set_span_in_context(span, parent))
