"""A burst of new chats (issue #14): many chats started at the same moment, on one worker.

    .venv/bin/python -m bench.burst [--quick] [--rounds N] [--bins] [--flame docs/flame-burst]

Every stream is a new chat: 100 tokens 20 ms apart from the demo provider, all
requests sent in one go (no stagger). Side by side, alternating rounds: no proxy, the
plain relay (no store), Stopwire's `/v1` (no store) and Stopwire's `/api/chat` with
the store on (a new conversation saved per chat, partial text flushed every second).
Every stream's text is checked against the provider's, character for character
(coalesced frames are fine, lost or reordered text is not).

`--bins` also prints, for each round, the delay per token by when the provider wrote it
(200 ms bins from the first request): whether tokens waited while the chats started, all
through the burst (a standing queue), or as the answers ended.

`--flame PREFIX` then runs one more round of each relay under py-spy (not counted in
the table) and writes `PREFIX-<relay>.svg`, a flame graph of the worker's busy samples.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import client, relay_cost, servers
from bench.stop_latency import load_line, machine, machine_line, ms, percentile
from bench.store_cost import pooled

STREAMS = 200
TOKENS = 100
GAP_S = 0.02
PROFILE_RATE = 250  # py-spy samples per second
BIN_S = 0.2


def targets(
    demo: servers.Demo, stopwire: servers.Gunicorn, baseline: servers.Gunicorn
) -> list[relay_cost.Target]:
    """No proxy, the plain relay, Stopwire /v1 without a store, Stopwire /api/chat with it."""
    return [
        relay_cost.direct_target(demo),
        relay_cost.baseline_target(baseline),
        relay_cost.stopwire_target(
            "Stopwire /v1 (no store)", stopwire, client.openai_body, "/v1/chat/completions"
        ),
        relay_cost.stopwire_target("Stopwire /api/chat (store on)", stopwire, client.content_body),
    ]


def measure(
    demo: servers.Demo,
    chosen: list[relay_cost.Target],
    streams: int,
    rounds: int,
    tokens: int = TOKENS,
) -> dict[str, list[relay_cost.Load]]:
    """Alternate rounds over the targets; each round starts `streams` chats at once."""
    for target in chosen:
        relay_cost.warm_up(target)
    runs: dict[str, list[relay_cost.Load]] = {t.name: [] for t in chosen}
    for _ in range(rounds):
        for target in chosen:
            runs[target.name].append(relay_cost.measure(target, demo, streams, tokens, GAP_S, 0))
            time.sleep(0.5)  # the worker finishes its bookkeeping between bursts
    return runs


def summary(runs: dict[str, list[relay_cost.Load]]) -> dict[str, dict]:
    """Pooled stats per target, with the worker's CPU for one round."""
    out = {}
    for name, loads in runs.items():
        stats = pooled(loads).stats()
        cpu = [load.cpu_s for load in loads if load.cpu_s is not None]
        stats["cpu_s_per_round"] = sum(cpu) / len(cpu) if cpu else None
        stats["rounds"] = len(loads)
        out[name] = stats
    return out


def table(stats: dict[str, dict], streams: int) -> str:
    """Markdown: one column per target."""
    names = list(stats)
    rows = [
        (
            "time to first token p50 / p99 ms",
            lambda s: f"{ms(s['ttft_p50_ms'])} / {ms(s['ttft_p99_ms'])}",
        ),
        (
            "delay per token p50 / p99 ms",
            lambda s: f"{ms(s['token_p50_ms'])} / {ms(s['token_p99_ms'])}",
        ),
        (
            "worker CPU per round s",
            lambda s: "-" if s["cpu_s_per_round"] is None else f"{s['cpu_s_per_round']:.2f}",
        ),
        (
            "CPU µs per token",
            lambda s: "-" if s["cpu_us_per_token"] is None else f"{s['cpu_us_per_token']:.0f}",
        ),
        ("streams incomplete / text differs", lambda s: f"{s['incomplete']} / {s['mismatched']}"),
        (
            "provider CPU µs per token (the demo, on the same cores)",
            lambda s: f"{s['provider_cpu_us_per_token']:.0f}",
        ),
    ]
    lines = [
        f"| {streams} new chats at once | " + " | ".join(names) + " |",
        "|---|" + "--:|" * len(names),
    ]
    lines += [
        f"| {label} | " + " | ".join(cell(stats[n]) for n in names) + " |" for label, cell in rows
    ]
    return "\n".join(lines)


def delay_bins(load: relay_cost.Load, width_s: float = BIN_S) -> str:
    """`0.2 s 12/30 · ...`: p50/p99 of the delays of the tokens written in each bin."""
    bins: dict[int, list[float]] = {}
    for written, delay in zip(load.written_s, load.latencies_ms, strict=True):
        bins.setdefault(int(written / width_s), []).append(delay)
    cells = []
    for index, delays in sorted(bins.items()):
        delays.sort()
        p50, p99 = percentile(delays, 50), percentile(delays, 99)
        cells.append(f"{index * width_s:.1f} s {p50:.0f}/{p99:.0f}")
    return " · ".join(cells)


def flames(
    demo: servers.Demo, chosen: list[relay_cost.Target], streams: int, prefix: Path
) -> list[Path]:
    """One more burst per relay under py-spy; a flame graph of its worker each."""
    spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("py-spy is not installed: pip install -e '.[bench]'")
    written = []
    for target in chosen:
        if target.pid is None:
            continue
        slug = "".join(c if c.isalnum() else "-" for c in target.name.lower()).strip("-")
        while "--" in slug:
            slug = slug.replace("--", "-")
        out = prefix.parent / f"{prefix.name}-{slug}.svg"
        args = [spy, "record", "--pid", str(target.pid), "--rate", str(PROFILE_RATE)]
        args += ["--nonblocking", "--threads", "--format", "flamegraph", "--output", str(out)]
        profiler = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # attached before the burst starts
        relay_cost.measure(target, demo, streams, TOKENS, GAP_S, 0)
        profiler.send_signal(signal.SIGINT)  # py-spy writes the graph on SIGINT
        _, err = profiler.communicate(timeout=60)
        if not out.exists():
            raise RuntimeError(f"py-spy wrote no {out}: {err.decode()[-500:]}")
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> None:
    """Start the demo, the plain relay and one Stopwire worker; measure; print."""
    parser = argparse.ArgumentParser(prog="python -m bench.burst", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--streams", type=int, help=f"chats per burst ({STREAMS})")
    parser.add_argument("--rounds", type=int, help="alternating rounds per target (3)")
    parser.add_argument("--bins", action="store_true", help="also each round's delay over time")
    parser.add_argument("--flame", type=Path, help="also write py-spy flame graphs PREFIX-*.svg")
    args = parser.parse_args(argv)
    streams = args.streams or (20 if args.quick else STREAMS)
    rounds = args.rounds or (1 if args.quick else 3)
    load_before = os.getloadavg()
    began = time.monotonic()
    demo = servers.Demo()
    started: list[servers.Process] = [demo]
    try:
        stopwire = servers.stopwire(demo.url, WORKER_CONNECTIONS="2000", FLUSH_S="1")
        started.append(stopwire)
        baseline = servers.baseline(demo.url, worker_connections=2000)
        started.append(baseline)
        chosen = targets(demo, stopwire, baseline)
        runs = measure(demo, chosen, streams, rounds)
        stats = summary(runs)
        graphs = flames(demo, chosen, streams, args.flame) if args.flame else []
    finally:
        for process in reversed(started):
            process.close()
    print(f"# {streams} new chats at once x {TOKENS} tokens every {GAP_S * 1000:.0f} ms, ", end="")
    print(f"one worker each, {rounds} alternating rounds\n")
    print(f"Machine: {machine_line(machine())}")
    print(f"Load average: {load_line(load_before)} at start, {load_line(os.getloadavg())} at end\n")
    print(table(stats, streams))
    if args.bins:
        print(f"\nDelay per token p50/p99 ms by when the provider wrote it, {BIN_S:g} s bins:\n")
        for name, loads in runs.items():
            for number, load in enumerate(loads, 1):
                print(f"- {name}, round {number}: {delay_bins(load)}")
    for path in graphs:
        print(f"flame graph: {path}")
    print(f"\nRun took {time.monotonic() - began:.0f} s.")


if __name__ == "__main__":
    main()
