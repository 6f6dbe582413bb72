"""Tracing tests: spans and metrics into the OpenTelemetry SDK's in-memory exporter and reader.

``otel`` gives each test its own tracer and meter providers (handed to clients
and servers as ``telemetry=``), so that no global provider is set and the rest
of the suite runs untraced. ``site`` runs a test on every transport and
convention hare_py has, each on asyncio and trio: AMQP 0-9-1 on the sandbox
and on RabbitMQ (both backends), NATS on the sandbox and nats-server (the
``loom`` and ``nats()`` conventions), AMQP 1.0 through qpid-proton's broker.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from amqp10.peers import ProtonBroker, proton_broker
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rabbitmq import with_amqp_backend

from hare_py import JSON, Telemetry
from hare_py.conventions import amqp10, loom, nats
from hare_py.testing import SandboxBroker, SandboxNatsBroker


@dataclass
class Otel:
    """The test's providers, what they recorded, and the ``telemetry=`` to pass."""

    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    telemetry: Telemetry

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        """Every data point of the metric ``name`` recorded so far."""
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource in data.resource_metrics if data is not None else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(spans, reader, tracer_provider, Telemetry(tracer_provider, meter_provider))
    tracer_provider.shutdown()
    meter_provider.shutdown()


@dataclass(frozen=True)
class Place:
    transport: str  # "sandbox", "rabbitmq", "sandbox+nats", "nats-server", "amqp10"
    convention: str  # "hare", "loom", "nats", "amqp10"
    anyio_backend: str
    amqp_backend: str | None = None


def _param(place: Place, *marks: Any) -> Any:
    backend = f"-{place.amqp_backend}" if place.amqp_backend else ""
    name = f"{place.transport}-{place.convention}{backend}-{place.anyio_backend}"
    return pytest.param(place, id=name, marks=list(marks))


PLACES = [
    _param(Place("sandbox", "hare", "asyncio")),
    _param(Place("sandbox", "hare", "trio")),
    _param(Place("rabbitmq", "hare", "asyncio", "anyio"), pytest.mark.rabbitmq),
    _param(Place("rabbitmq", "hare", "asyncio", "aiormq"), pytest.mark.rabbitmq),
    _param(Place("rabbitmq", "hare", "trio"), pytest.mark.rabbitmq),
    _param(Place("sandbox+nats", "loom", "asyncio")),
    _param(Place("sandbox+nats", "loom", "trio")),
    _param(Place("nats-server", "loom", "asyncio"), pytest.mark.nats),
    _param(Place("nats-server", "loom", "trio"), pytest.mark.nats),
    _param(Place("nats-server", "nats", "asyncio"), pytest.mark.nats),
    _param(Place("nats-server", "nats", "trio"), pytest.mark.nats),
    _param(Place("amqp10", "amqp10", "asyncio"), pytest.mark.amqp10),
    _param(Place("amqp10", "amqp10", "trio"), pytest.mark.amqp10),
]


@dataclass
class Site:
    """Where a test's servers and clients run: the URL and each convention's options."""

    place: Place
    url: str
    tag: str = field(default_factory=lambda: secrets.token_hex(3))

    def service(self, name: str) -> str:
        return f"{name}{self.tag}"

    def server_options(self, name: str) -> dict[str, Any]:
        """``RPCServer.start`` options that serve the service ``name``."""
        service = self.service(name)
        convention = self.place.convention
        if convention == "loom":
            return {"convention": loom(service, instance_id="i1"), "routing_keys": ["work"]}
        if convention == "nats":
            return {"convention": nats(service), "routing_keys": [f"{service}.work"]}
        if convention == "amqp10":
            return {"convention": amqp10(""), "queue": service}
        return {"queue": service}

    def client_options(self, name: str) -> dict[str, Any]:
        """``RPCClient.start`` options for a client of the service ``name``."""
        convention = self.place.convention
        if convention == "loom":
            return {"convention": loom(self.service(name), caller_id="tests")}
        if convention == "nats":
            return {"convention": nats()}
        if convention == "amqp10":
            return {"convention": amqp10("")}
        return {}

    def key(self, name: str) -> str:
        """The routing key that reaches the service ``name``."""
        service = self.service(name)
        convention = self.place.convention
        if convention == "loom":
            return "any.work"
        if convention == "nats":
            return f"{service}.work"
        return service


#: JSON everywhere: Loom's envelope carries JSON payloads only.
CODEC = JSON


@pytest.fixture(scope="session")
def otel_proton_broker() -> Iterator[ProtonBroker]:
    """qpid-proton's example broker, for the tracing tests."""
    with proton_broker() as broker:
        yield broker


@pytest.fixture(params=PLACES)
def place(request: pytest.FixtureRequest) -> Place:
    value: Place = request.param
    return value


@pytest.fixture
def anyio_backend(place: Place) -> str:
    return place.anyio_backend


@pytest.fixture
def site(place: Place, request: pytest.FixtureRequest) -> Iterator[Site]:
    if place.transport == "sandbox":
        with SandboxBroker() as broker:
            yield Site(place, broker.url)
    elif place.transport == "sandbox+nats":
        with SandboxNatsBroker() as nats_broker:
            yield Site(place, nats_broker.url)
    elif place.transport == "rabbitmq":
        url = request.getfixturevalue("rabbitmq_url")
        yield Site(place, with_amqp_backend(url, place.amqp_backend))
    elif place.transport == "nats-server":
        yield Site(place, str(request.getfixturevalue("nats_server").url))
    else:
        yield Site(place, request.getfixturevalue("otel_proton_broker").url)
