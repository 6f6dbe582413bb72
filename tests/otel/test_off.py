"""Telemetry off costs nothing: no provider set, the extra missing, or telemetry=False.

Each runs in a fresh interpreter: OpenTelemetry's global providers can be set
once per process, and the rest of the suite must run untraced.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from hare_py import ConfigError, Connection, RPCClient


def run(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


def test_without_a_provider_nothing_is_instrumented() -> None:
    """No global provider: clients and servers have no instrumentation, and importing
    hare_py imports no OpenTelemetry; setting a provider turns it on, False keeps it off."""
    out = run(
        """
        import sys
        from hare_py import Connection, RPCClient, RPCServer
        print("imported" if "opentelemetry" in sys.modules else "lazy")
        conn = Connection("sandbox://off")
        print(RPCClient(conn)._otel is None, RPCServer(conn, queue="q")._otel is None)
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        trace.set_tracer_provider(TracerProvider())
        print(RPCClient(conn)._otel is not None, RPCServer(conn, queue="q")._otel is not None)
        print(RPCClient(conn, telemetry=False)._otel is None)
        """
    )
    assert out == ["lazy", "True", "True", "True", "True", "True"]


def test_a_meter_provider_alone_turns_it_on() -> None:
    """A global meter provider without a tracer provider is enough for metrics."""
    out = run(
        """
        from hare_py import Connection, RPCClient
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        metrics.set_meter_provider(MeterProvider())
        print(RPCClient(Connection("sandbox://off"))._otel is not None)
        """
    )
    assert out == ["True"]


def test_without_the_extra_telemetry_is_off_or_a_clear_error() -> None:
    """opentelemetry-api missing: off by default; asking for telemetry names the extra."""
    out = run(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if hare_py[otel] were not installed
        from hare_py import ConfigError, Connection, RPCClient, Telemetry
        conn = Connection("sandbox://off")
        print(RPCClient(conn)._otel is None)
        try:
            RPCClient(conn, telemetry=Telemetry())
        except ConfigError as exc:
            print("hare_py[otel]" in str(exc))
        """
    )
    assert out == ["True", "True"]


def test_a_bad_telemetry_option_is_a_config_error() -> None:
    """telemetry= takes a Telemetry, False or None."""
    with pytest.raises(ConfigError, match="telemetry must be"):
        RPCClient(Connection("sandbox://off"), telemetry=True)  # type: ignore[arg-type]
