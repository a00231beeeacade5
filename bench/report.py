"""Tables and plots of the suite: markdown for people, PNG CDFs when matplotlib is there."""

import logging
from pathlib import Path

from bench.relay_cost import Load
from bench.stop_latency import Row, ms
from bench.stops import Abort

log = logging.getLogger(__name__)


def relay_table(loads: list[Load]) -> str:
    """Per-token latency, TTFT, token rate and CPU for each load and target.

    "added" columns subtract the no-proxy figure at the same load, the floor any
    relay sits on; the CPU ratio is against the plain relay (the baseline).
    """
    lines = [
        "| streams | gap ms | target | token p50 ms | token p99 ms | added p99 ms | TTFT p50 ms "
        "| TTFT p99 ms | added TTFT p50 ms | tokens/s | % of no proxy | CPU µs/token "
        "| CPU vs baseline | incomplete |",
        "|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    stats = [load.stats() for load in loads]
    index = {(s["streams"], s["target"]): s for s in stats}
    for s in stats:
        floor = index.get((s["streams"], "no proxy"), s)
        base = index.get((s["streams"], "baseline"))
        cpu_ratio = ""
        if s["cpu_us_per_token"] and base and base["cpu_us_per_token"]:
            cpu_ratio = f"{s['cpu_us_per_token'] / base['cpu_us_per_token']:.2f}x"
        cells = [str(s["streams"]), f"{s['gap_ms']:.0f}", s["target"]]
        cells += [ms(s["token_p50_ms"]), ms(s["token_p99_ms"])]
        cells += [diff(s["token_p99_ms"], floor["token_p99_ms"])]
        cells += [ms(s["ttft_p50_ms"]), ms(s["ttft_p99_ms"])]
        cells += [diff(s["ttft_p50_ms"], floor["ttft_p50_ms"])]
        cells += [f"{s['tokens_per_s']:.0f}", percent(s["tokens_per_s"], floor["tokens_per_s"])]
        cpu = s["cpu_us_per_token"]
        cells += ["-" if cpu is None else f"{cpu:.0f}", cpu_ratio, str(s["incomplete"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def abort_table(aborts: list[Abort]) -> str:
    """Mass abort: time to the last provider close, memory per stream, leaks."""
    lines = [
        "| system | streams | all provider connections closed after ms | per-stream p50 ms "
        "| p99 ms | tokens after stop | RSS per open stream KiB | leaks (fds / greenlets / live) |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for abort in aborts:
        row = Row("abort", "fin", abort.system, abort.samples).stats()
        leaks = abort.leaks()
        leak_cell = "not exposed" if leaks is None else " / ".join(str(v) for v in leaks.values())
        never = row["trials"] - row["measured"]  # provider streams left open
        streams = f"{abort.streams} ({never} never closed)" if never else str(abort.streams)
        cells = [abort.system, streams, ms(abort.all_closed_ms)]
        cells += [ms(row["p50_ms"]), ms(row["p99_ms"]), str(row["tokens_after_total"])]
        rss = abort.rss_per_stream_kib
        cells += ["-" if rss is None else f"{rss:.1f}", leak_cell]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diff(value: float | None, floor: float | None) -> str:
    """A difference in ms, signed."""
    if value is None or floor is None:
        return "-"
    return f"{value - floor:+.2f}"


def percent(value: float | None, floor: float | None) -> str:
    """A share of the floor's figure."""
    if not value or not floor:
        return "-"
    return f"{value / floor * 100:.0f}%"


def plots(out: Path, stop_rows: list[Row], loads: list[Load]) -> list[Path]:
    """Latency CDFs (Stopwire against baseline); none, with a message, without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install -e '.[bench]')")
        return []
    paths = [stop_cdfs(plt, out / "stop-latency-cdf.png", stop_rows)]
    paths.append(relay_cdfs(plt, out / "relay-latency-cdf.png", loads))
    return paths


def stop_cdfs(plt, path: Path, rows: list[Row]) -> Path:
    """One panel per stop scenario, a line per system and close."""
    scenarios = list(dict.fromkeys(r.scenario for r in rows))
    fig, axes = plt.subplots(
        (len(scenarios) + 2) // 3, 3, figsize=(15, 3.6 * ((len(scenarios) + 2) // 3))
    )
    axes = list(axes.flat)
    for ax, scenario in zip(axes, scenarios, strict=False):
        for row in (r for r in rows if r.scenario == scenario):
            where = " side by side" if row.parallel else ""
            label = f"{row.system} {row.close.upper()}{where}"
            cdf(ax, row.latencies(), label, STYLES.get(row.system, "-"))
        ax.set_title(scenario, fontsize=10)
        ax.set_xscale("log")
        ax.set_xlabel("client close / stop -> provider closed (ms)")
        ax.legend(fontsize=7)
    for ax in axes[len(scenarios) :]:
        ax.set_visible(False)
    return save(plt, fig, path)


def relay_cdfs(plt, path: Path, loads: list[Load]) -> Path:
    """One panel per load: per-token delivery latency of each target."""
    counts = sorted({load.streams for load in loads})
    fig, axes = plt.subplots(1, len(counts), figsize=(5 * len(counts), 3.6), squeeze=False)
    for ax, count in zip(axes[0], counts, strict=True):
        for load in (x for x in loads if x.streams == count):
            cdf(ax, sorted(load.latencies_ms), load.target, STYLES.get(load.target, "-"))
        gap_ms = next(x.gap_s for x in loads if x.streams == count) * 1000
        ax.set_title(f"{count} streams, {gap_ms:.0f} ms/token", fontsize=10)
        ax.set_xscale("log")
        ax.set_xlabel("provider sent -> client received, per token (ms)")
        ax.legend(fontsize=7)
    return save(plt, fig, path)


STYLES = {"baseline": "--", "no proxy": ":"}  # a line style per system; Stopwire's solid


def cdf(ax, values: list[float], label: str, style: str) -> None:
    """A step CDF of sorted values (log axes need positives: floor at 0.01 ms)."""
    if not values:
        return
    ys = [(i + 1) / len(values) for i in range(len(values))]
    xs = [max(v, 0.01) for v in values]
    ax.step(xs, ys, where="post", label=label, linestyle=style)
    ax.set_ylabel("fraction")
    ax.grid(True, alpha=0.3)


def save(plt, fig, path: Path) -> Path:
    """Write and free a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
