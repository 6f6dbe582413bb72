"""A traced call chain, client -> orders -> (nested call) -> stock, drawn as a waterfall.

python examples/tracing.py                       # on the in-memory broker
HARE_URL=amqp://guest:guest@localhost/ python examples/tracing.py
python examples/tracing.py docs/img/trace-waterfall.svg   # write the picture there

The spans go to OpenTelemetry's SDK (``opentelemetry-sdk``, with the
in-memory exporter) and the waterfall is an SVG drawn from them, without a
plotting library: docs/observability.md shows the one this script wrote.
An application would set the global providers instead of ``telemetry=``
(``trace.set_tracer_provider(...)``): every client and server then traces.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import anyio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from hare_py import JSON, Caller, Connection, Reply, Request, RPCClient, RPCServer, Telemetry
from hare_py.testing import SandboxBroker


class Stock(RPCServer[None]):
    """The last hop: how many of an item are left."""

    async def handle_request(self, request: Request, caller: Caller, state: None) -> Any:
        await anyio.sleep(0.004)  # a lookup
        return Reply({"item": request.payload["item"], "left": 7}, state)


class Orders(RPCServer[RPCClient[Any]]):
    """Places an order after asking Stock: a nested call, in the same trace."""

    async def handle_request(self, request: Request, caller: Caller, stock: Any) -> Any:
        level = await stock.request({"item": request.payload["item"]}, "stock")
        await anyio.sleep(0.002)  # writing the order
        return Reply({"ordered": request.payload["item"], "stock": level}, stock)


async def traced_chain(url: str, telemetry: Telemetry) -> Any:
    """Start both services and their clients on ``url``, make one call, return its answer."""
    async with (
        Connection(url) as conn,
        Stock.start(conn, queue="stock", codec=JSON, telemetry=telemetry) as stock,
        RPCClient.start(conn, codec=JSON, telemetry=telemetry) as to_stock,
        Orders.start(conn, queue="orders", arg=to_stock, codec=JSON, telemetry=telemetry) as orders,
        RPCClient.start(conn, codec=JSON, telemetry=telemetry) as client,
    ):
        with anyio.fail_after(10):
            while not all(a.connected for a in (stock, to_stock, orders, client)):
                await anyio.sleep(0.01)
            return await client.request({"item": "apple"}, "orders")


async def main() -> tuple[list[ReadableSpan], str]:
    """Run the chain with an SDK tracer provider; return its spans and their waterfall."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sandbox = None
    url = os.environ.get("HARE_URL")
    if not url:
        sandbox = SandboxBroker()
        url = sandbox.url
    try:
        await traced_chain(url, Telemetry(tracer_provider=provider))
    finally:
        if sandbox is not None:
            sandbox.close()
        provider.shutdown()
    spans = list(exporter.get_finished_spans())
    where = "the in-memory broker" if sandbox is not None else url.partition("://")[0] + "://"
    svg = waterfall(spans, f"client, orders, stock over {where}")
    for line in outline(spans):
        print(line)
    return spans, svg


def _depths(spans: Sequence[ReadableSpan]) -> list[tuple[ReadableSpan, int]]:
    """Spans in trace order (parents before children, by start time), with their depth."""
    ids = {s.context.span_id for s in spans}
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent if parent in ids else None, []).append(span)
    ordered: list[tuple[ReadableSpan, int]] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s.start_time or 0):
            ordered.append((span, depth))
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return ordered


def outline(spans: Sequence[ReadableSpan]) -> list[str]:
    """The trace as text: one line per span, indented under its parent."""
    lines = []
    for span, depth in _depths(spans):
        ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
        kind = span.kind.name.lower()
        lines.append(f"{'  ' * depth}{span.name} [{kind}] {ms:.2f} ms")
    return lines


_COLOURS = {SpanKind.CLIENT: "#4e79a7", SpanKind.SERVER: "#59a14f"}


def waterfall(spans: Sequence[ReadableSpan], title: str = "", width: int = 760) -> str:
    """An SVG waterfall of ``spans``, as trace viewers draw one: a row per span, its bar
    placed by its start and end on the trace's time line, indented under its parent."""
    rows = _depths(spans)
    start = min(s.start_time or 0 for s in spans)
    end = max(s.end_time or 0 for s in spans)
    total = max(end - start, 1)
    label, row, top = 300, 26, 34
    scale = (width - label - 20) / total
    height = top + row * len(rows) + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="8" y="18" font-weight="bold">{escape(title)} '
        f"(trace {spans[0].context.trace_id:032x})</text>",
        f'<text x="{width - 12}" y="18" text-anchor="end">{total / 1e6:.2f} ms</text>',
    ]
    for i, (span, depth) in enumerate(rows):
        y = top + i * row
        x = label + ((span.start_time or 0) - start) * scale
        w = max(((span.end_time or 0) - (span.start_time or 0)) * scale, 1.5)
        failed = span.status.status_code is StatusCode.ERROR
        colour = "#e15759" if failed else _COLOURS.get(span.kind, "#9c9c9c")
        ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
        name = escape(f"{span.name} ({span.kind.name.lower()})")
        parts += [
            f'<text x="{8 + 14 * depth}" y="{y + 16}">{name}</text>',
            f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{row - 10}" '
            f'fill="{colour}" rx="2"><title>{name}: {ms:.2f} ms</title></rect>',
            f'<text x="{label - 8}" y="{y + 16}" text-anchor="end" fill="#555">{ms:.2f} ms</text>',
        ]
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    _, picture = anyio.run(main)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(picture)
