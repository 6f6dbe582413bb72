"""Turn the medians into a Markdown table, the targets and two PNG plots."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .contenders import BASELINE, CONTENDERS, NATS_CONTENDERS

if TYPE_CHECKING:
    from .run import Results, Settings

COLUMNS = (
    ("calls_per_s", "calls/s", "{:,.0f}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"),
    ("p999_ms", "p99.9 ms", "{:.2f}"),
    ("cpu_s_per_10k", "client CPU s/10k calls", "{:.2f}"),
    ("peak_rss_mib", "client peak RSS MiB", "{:.1f}"),
    ("server_cpu_s_per_10k", "server CPU s/10k calls", "{:.2f}"),
    ("broker_cpu_s_per_10k", "broker CPU s/10k calls", "{:.2f}"),
)


def _label(name: str) -> str:
    return str((CONTENDERS.get(name) or NATS_CONTENDERS[name]).label)


def _cell(value: float, ratio: float, form: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    text = form.format(value)
    return f"{text} ({ratio:.2f}x)" if math.isfinite(ratio) else text


def table(results: Results, settings: Settings) -> str:
    """One row per contender and case; each figure the median over rounds (x the baseline)."""
    head = ["case", "contender", *(title for _, title, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case in settings.cases:
        for name in settings.contenders:
            if (name, case) not in results.load:
                continue
            cells = [
                _cell(results.median(name, case, m), results.ratio(name, case, m), form)
                for m, _, form in COLUMNS
            ]
            lines.append(f"| {case.label} | {_label(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tracing_table(results: Results, settings: Settings) -> str:
    """Tracing on against tracing off, the same client and server, as ratios."""
    on, off = "hare_anyio_traced", "hare_anyio"
    if on not in settings.contenders or off not in settings.contenders:
        return ""
    lines = [
        "| case | calls/s, on / off | p50, on / off | p99, on / off "
        "| client CPU per call, on / off | server CPU per call, on / off |",
        "|---|---|---|---|---|---|",
    ]
    metrics = ("calls_per_s", "p50_ms", "p99_ms", "cpu_s_per_10k", "server_cpu_s_per_10k")
    for case in settings.cases:
        ratios = [results.median(on, case, m) / results.median(off, case, m) for m in metrics]
        lines.append(f"| {case.label} | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")
    return "\n".join(lines)


def hold_table(results: Results, settings: Settings, held_by: str = "the broker") -> str:
    lines = [
        f"| contender | client RSS per in-flight request ({settings.hold:,} held) "
        "| Python heap per request (tracemalloc) | of which the library's "
        f"(less the calling task's own) | held by {held_by} | errors | all answered in |",
        "|---|---|---|---|---|---|---|",
    ]
    baseline = results.baseline
    base = results.hold_median(baseline, "bytes_per_request")
    for name in settings.contenders:
        contender = CONTENDERS.get(name) or NATS_CONTENDERS[name]
        if not contender.concurrent:
            lines.append(
                f"| {contender.label} | n/a: one request in flight at a time "
                "(`RabbitBroker.request` holds a lock until the reply) | | | | | |"
            )
            continue
        if name not in results.hold:
            continue
        per = results.hold_median(name, "bytes_per_request")
        ratio = f" ({per / base:.2f}x)" if base else ""
        heap = results.hold_median(name, "heap_bytes_per_request")
        own = heap - results.hold_median(name, "task_bytes")
        base_heap = results.hold_median(baseline, "heap_bytes_per_request")
        base_own = base_heap - results.hold_median(baseline, "task_bytes")
        held = min(r["held"] for r in results.hold[name])
        errors = max(r["errors"] for r in results.hold[name])
        seconds = results.hold_median(name, "seconds")
        lines.append(
            f"| {contender.label} | {per / 1024:.2f} KiB{ratio} "
            f"| {heap / 1024:.2f} KiB ({heap / base_heap:.2f}x) "
            f"| {own / 1024:.2f} KiB ({own / base_own:.2f}x) | {held:,} "
            f"| {errors} | {seconds:.1f} s |"
        )
    return "\n".join(lines)


def targets(results: Results, settings: Settings) -> list[tuple[str, bool, str]]:
    """The issue's targets for each hare_py contender: (target, met, the numbers)."""
    mid = next((c for c in settings.cases if c.size != 64 * 1024 and c.concurrency > 1), None)
    one = next((c for c in settings.cases if c.concurrency == 1), None)
    out: list[tuple[str, bool, str]] = []
    out += _anyio_backend_targets(results, settings, mid)
    for name in ("hare_amqp10", "hare_amqp10_p2p"):
        if name in settings.contenders and mid is not None:
            mine, r = (
                results.median(name, mid, "calls_per_s"),
                results.ratio(name, mid, "calls_per_s"),
            )
            out.append(
                (
                    f"{CONTENDERS[name].label}: throughput at {mid.label} >= 2x raw aiormq 0-9-1",
                    r >= 2.0,
                    f"{mine:,.0f} vs {results.median(BASELINE, mid, 'calls_per_s'):,.0f} "
                    f"calls/s = {r:.2f}x",
                )
            )
    if mid is not None and {"hare_amqp10", "proton"} <= set(settings.contenders):
        mine, theirs = (results.median(n, mid, "calls_per_s") for n in ("hare_amqp10", "proton"))
        out.append(
            (
                f"{CONTENDERS['hare_amqp10'].label}: throughput at {mid.label} >= 2x "
                f"{CONTENDERS['proton'].label} (the same echo server)",
                mine >= 2 * theirs,
                f"{mine:,.0f} vs {theirs:,.0f} calls/s = {mine / theirs:.2f}x",
            )
        )
    for name in ("hare", "hare_anyio", "hare_drt"):
        if name not in settings.contenders:
            continue
        label = CONTENDERS[name].label
        if mid is not None:
            r = results.ratio(name, mid, "calls_per_s")
            out.append(
                (
                    f"{label}: throughput at {mid.label} >= 0.9x raw aiormq",
                    r >= 0.9,
                    f"{results.median(name, mid, 'calls_per_s'):,.0f} vs "
                    f"{results.median(BASELINE, mid, 'calls_per_s'):,.0f} calls/s = {r:.2f}x",
                )
            )
            if "aiopika" in settings.contenders:  # a target against what ran only
                pika = results.median("aiopika", mid, "calls_per_s")
                mine = results.median(name, mid, "calls_per_s")
                out.append(
                    (
                        f"{label}: throughput at {mid.label} >= 1.5x aio-pika patterns.RPC",
                        mine / pika >= 1.5,
                        f"{mine:,.0f} vs {pika:,.0f} calls/s = {mine / pika:.2f}x",
                    )
                )
            r = results.ratio(name, mid, "cpu_s_per_10k")
            out.append(
                (
                    f"{label}: client CPU per call at {mid.label} <= raw aiormq's",
                    r <= 1.0,
                    f"{results.median(name, mid, 'cpu_s_per_10k'):.2f} vs "
                    f"{results.median(BASELINE, mid, 'cpu_s_per_10k'):.2f} s/10k calls = {r:.2f}x",
                )
            )
        if one is not None:
            r = results.ratio(name, one, "p50_ms")
            out.append(
                (
                    f"{label}: p50 at {one.label} <= 1.15x raw aiormq",
                    r <= 1.15,
                    f"{results.median(name, one, 'p50_ms'):.3f} vs "
                    f"{results.median(BASELINE, one, 'p50_ms'):.3f} ms = {r:.2f}x",
                )
            )
        if name in results.hold:
            runs = results.hold[name]
            ok = all(r["held"] >= r["n"] and r["errors"] == 0 for r in runs)
            out.append(
                (
                    f"{label}: {settings.hold:,} requests in flight at once, no errors",
                    ok,
                    ", ".join(f"{r['held']:,} held, {r['errors']} errors" for r in runs),
                )
            )
            per = results.hold_median(name, "bytes_per_request")
            heap = results.hold_median(name, "heap_bytes_per_request")
            own = heap - results.hold_median(name, "task_bytes")
            out.append(
                (
                    f"{label}: < 2 KiB of client memory (RSS) per in-flight request",
                    per < 2048,
                    f"{per / 1024:.2f} KiB RSS (raw aiormq: "
                    f"{results.hold_median(BASELINE, 'bytes_per_request') / 1024:.2f} KiB); "
                    f"Python heap {heap / 1024:.2f} KiB, {own / 1024:.2f} KiB without "
                    "the calling task itself",
                )
            )
    return out


def _anyio_backend_targets(
    results: Results, settings: Settings, mid: Any
) -> list[tuple[str, bool, str]]:
    """The anyio backend's targets against the aiormq backend, same client."""
    names = ("hare", "hare_anyio")
    if mid is None or not all(name in settings.contenders for name in names):
        return []
    mine = results.median("hare_anyio", mid, "calls_per_s")
    theirs = results.median("hare", mid, "calls_per_s")
    cpu_ms = results.median("hare_anyio", mid, "cpu_s_per_10k") / 10  # s/10k -> ms/call
    return [
        (
            f"anyio backend: throughput at {mid.label} >= 2x the aiormq backend's",
            mine / theirs >= 2,
            f"{mine:,.0f} vs {theirs:,.0f} calls/s = {mine / theirs:.2f}x",
        ),
        (
            f"anyio backend: client CPU per call at {mid.label} <= 0.08 ms",
            cpu_ms <= 0.08,
            f"{cpu_ms:.3f} ms (aiormq backend: "
            f"{results.median('hare', mid, 'cpu_s_per_10k') / 10:.3f} ms)",
        ),
    ]


#: The NATS targets: (contender, throughput goal, the baseline doing the same work).
#: hare_py's nats() convention echoes raw bytes, as the nats-py echo does; its loom
#: convention is measured against nats-py speaking Loom's JSON envelopes.
NATS_GOALS = (
    ("hare_nats_plain", 1.0, "natspy"),
    ("hare_nats_plain_trio", 0.8, "natspy"),
    ("hare_nats", 1.0, "natspy_loom"),
    ("hare_nats_trio", 0.8, "natspy_loom"),
)


def nats_targets(results: Results, settings: Settings) -> list[tuple[str, bool, str]]:
    """The NATS targets at c=64, 100 B, each as a ratio to the nats-py contender doing
    the same work, measured in the same run."""
    case = next((c for c in settings.cases if c.size != 64 * 1024 and c.concurrency > 1), None)
    out: list[tuple[str, bool, str]] = []
    if case is None:
        return out
    for name, goal, base in NATS_GOALS:
        if name not in settings.contenders or base not in settings.contenders:
            continue
        label, base_label = _label(name), _label(base)
        r = results.ratio(name, case, "calls_per_s", base)
        out.append(
            (
                f"{label}: throughput at {case.label} >= {goal:.1f}x {base_label}",
                r >= goal,
                f"{results.median(name, case, 'calls_per_s'):,.0f} vs "
                f"{results.median(base, case, 'calls_per_s'):,.0f} calls/s = {r:.2f}x",
            )
        )
        if goal >= 1.0:
            r = results.ratio(name, case, "cpu_s_per_10k", base)
            out.append(
                (
                    f"{label}: client CPU per call at {case.label} <= {base_label}'s",
                    r <= 1.0,
                    f"{results.median(name, case, 'cpu_s_per_10k'):.2f} vs "
                    f"{results.median(base, case, 'cpu_s_per_10k'):.2f} s/10k calls = {r:.2f}x",
                )
            )
        if name in results.hold:
            per = results.hold_median(name, "bytes_per_request")
            heap = results.hold_median(name, "heap_bytes_per_request")
            own = heap - results.hold_median(name, "task_bytes")
            out.append(
                (
                    f"{label}: < 2 KiB of client memory (RSS) per in-flight request",
                    per < 2048,
                    f"{per / 1024:.2f} KiB RSS ({base_label}: "
                    f"{results.hold_median(base, 'bytes_per_request') / 1024:.2f} KiB); "
                    f"Python heap {heap / 1024:.2f} KiB, {own / 1024:.2f} KiB without "
                    "the calling task itself",
                )
            )
    return out


def targets_table(rows: list[tuple[str, bool, str]]) -> str:
    lines = ["| target | met | measured |", "|---|---|---|"]
    lines += [f"| {t} | {'yes' if ok else '**no**'} | {d} |" for t, ok, d in rows]
    return "\n".join(lines)


# --- plots -----------------------------------------------------------------------------


def _nines(q: float) -> float:
    return -math.log10(1 - q)


def plots(
    results: Results, settings: Settings, out: Path, *, prefix: str = "", broker: str = "RabbitMQ"
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter

    small = [c for c in settings.cases if c.size != 64 * 1024]
    palette = (
        "black", "tab:blue", "tab:red", "tab:purple", "tab:cyan", "tab:brown", "tab:pink",
        "tab:orange", "tab:green", "tab:olive", "tab:gray",
    )  # fmt: skip
    colours = dict(zip(settings.contenders, palette, strict=False))
    styles = {results.baseline: "--"}

    # Latency distribution: latency against percentile on a "nines" axis.
    fig, axes = plt.subplots(1, len(small), figsize=(5.2 * len(small), 4.6), squeeze=False)
    for ax, case in zip(axes[0], small, strict=True):
        for name in settings.contenders:
            runs = results.load.get((name, case), [])
            if not runs:
                continue
            qs = [q for q, _ in runs[0]["quantiles"]]
            ms = [statistics.median(r["quantiles"][i][1] for r in runs) for i in range(len(qs))]
            points = [(_nines(q), m) for q, m in zip(qs, ms, strict=True) if math.isfinite(m)]
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                styles.get(name, "-"),
                color=colours[name],
                label=_label(name),
                linewidth=1.6,
            )
        ticks = [0.5, 0.9, 0.99, 0.999, 0.9999]
        ax.xaxis.set_major_locator(FixedLocator([_nines(q) for q in ticks]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"p{100 * (1 - 10**-x):g}"))
        ax.set_xlim(_nines(0.01), _nines(0.9999))
        ax.set_yscale("log")
        ax.set_title(f"latency, {case.label}")
        ax.set_xlabel("percentile")
        ax.set_ylabel("round trip, ms (log)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"RPC round-trip latency on one local {broker} (median over rounds)")
    fig.tight_layout()
    latency = out / f"{prefix}latency.png"
    fig.savefig(latency, dpi=110)
    plt.close(fig)

    # Throughput and client CPU per call against concurrency.
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    xs = [c.concurrency for c in small]
    for name in settings.contenders:
        kw: dict[str, Any] = {
            "color": colours[name],
            "linestyle": styles.get(name, "-"),
            "marker": "o",
            "label": _label(name),
        }
        left.plot(xs, [results.median(name, c, "calls_per_s") for c in small], **kw)
        right.plot(xs, [results.median(name, c, "cpu_s_per_10k") for c in small], **kw)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("concurrent callers (one client process)")
        ax.grid(True, alpha=0.3)
    left.set_ylabel("calls/s")
    left.set_ylim(bottom=0)
    left.set_title("throughput, 100 B payload")
    right.set_ylabel("client CPU seconds per 10,000 calls")
    right.set_ylim(bottom=0)
    right.set_title("client CPU per call, 100 B payload")
    left.legend(fontsize=8)
    fig.tight_layout()
    throughput = out / f"{prefix}throughput.png"
    fig.savefig(throughput, dpi=110)
    plt.close(fig)
    return [latency, throughput]
