"""Tracing and metrics through OpenTelemetry: whether a client or server has them.

The instrumentation itself is ``hare_py.rpc._otel``; it needs the
``hare_py[otel]`` extra (``opentelemetry-api``) and is imported only when a
client or server is built with telemetry on. Off, the request path pays one
attribute check per hook: ``RPCClient._otel`` / ``RPCServer._otel`` is None.

Telemetry is on when ``telemetry=Telemetry(...)`` is given, or, by default,
when the process has set a global tracer provider or meter provider
(``opentelemetry.trace.set_tracer_provider``, ``metrics.set_meter_provider``).
``telemetry=False`` turns it off whatever the globals say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigError

if TYPE_CHECKING:
    from ._otel import ClientInstrumentation, ServerInstrumentation

__all__ = ["Telemetry", "TelemetryOption", "client_instrumentation", "server_instrumentation"]


@dataclass(frozen=True, slots=True)
class Telemetry:
    """Where a client's or server's spans and metrics go.

    ``tracer_provider`` and ``meter_provider`` are OpenTelemetry providers
    (``opentelemetry.sdk.trace.TracerProvider``, ...); None takes the global
    one. Propagation always uses the global propagator
    (``opentelemetry.propagate``: W3C trace context and baggage by default).
    """

    tracer_provider: Any = None
    meter_provider: Any = None


#: ``telemetry=``: None (the global providers, if set), False (off), or a Telemetry.
TelemetryOption = Telemetry | Literal[False] | None

_MISSING = "telemetry= needs the hare_py[otel] extra: pip install 'hare_py[otel]'"


def _enabled(option: TelemetryOption) -> bool:
    """True when telemetry is on; a ConfigError when asked for without the extra."""
    if option is False:
        return False
    if option is not None and not isinstance(option, Telemetry):
        raise ConfigError(f"telemetry must be a hare_py Telemetry, False or None, got {option!r}")
    try:
        from . import _otel
    except ImportError:
        if option is not None:
            raise ConfigError(_MISSING) from None
        return False
    return option is not None or _otel.globally_configured()


def client_instrumentation(
    option: TelemetryOption, wire_protocol: str, service: str
) -> ClientInstrumentation | None:
    """The client's instrumentation, or None when telemetry is off."""
    if not _enabled(option):
        return None
    from ._otel import ClientInstrumentation

    return ClientInstrumentation(option, wire_protocol, service)


def server_instrumentation(
    option: TelemetryOption, wire_protocol: str, service: str, queue: str
) -> ServerInstrumentation | None:
    """The server's instrumentation, or None when telemetry is off."""
    if not _enabled(option):
        return None
    from ._otel import ServerInstrumentation

    return ServerInstrumentation(option, wire_protocol, service, queue)
