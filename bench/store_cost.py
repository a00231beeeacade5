"""Store cost (issue #3): what saving conversations adds per token, on one worker.

    .venv/bin/python -m bench.store_cost [--quick] [--streams N] [--rounds N]

The same Stopwire worker relays the same demo streams two ways, alternating:
store on = `POST /api/chat {"content"}` (the conversation is saved, partial text
flushed every STOPWIRE_FLUSH_S = 1 s, final write); store off = `{"messages": [...]}`
(same relay, nothing saved). Alternating rounds spread the host's other load over both.
Goal from the issue: the store adds <= 5 ms p99 per token and <= 10% CPU per token.
"""

import argparse
import os
import time

from bench import client, relay_cost, servers
from bench.stop_latency import load_line, machine, machine_line, ms

TOKENS = 100
GAP_S = 0.05
STAGGER_S = 0.005  # 200 connects in one second, not one burst


def measure(
    demo: servers.Demo, gunicorn: servers.Gunicorn, streams: int, rounds: int, tokens: int = TOKENS
) -> dict[str, list[relay_cost.Load]]:
    """Alternate store off / on rounds and pool each side's samples."""
    targets = {
        "store off": relay_cost.stopwire_target("store off", gunicorn, client.messages_body),
        "store on": relay_cost.stopwire_target("store on", gunicorn, client.content_body),
    }
    for target in targets.values():
        relay_cost.warm_up(target)
    runs: dict[str, list[relay_cost.Load]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, target in targets.items():
            runs[name].append(relay_cost.measure(target, demo, streams, tokens, GAP_S, STAGGER_S))
    return runs


def pooled(runs: list[relay_cost.Load]) -> relay_cost.Load:
    """All rounds of one side as one sample."""
    total = runs[0]
    for load in runs[1:]:
        total = merge(total, load)
    return total


def merge(a: relay_cost.Load, b: relay_cost.Load) -> relay_cost.Load:
    """Two rounds of one side as one sample."""
    return relay_cost.Load(
        a.target,
        a.streams,
        a.gap_s,
        a.latencies_ms + b.latencies_ms,
        a.ttft_ms + b.ttft_ms,
        a.tokens + b.tokens,
        a.seconds + b.seconds,
        (a.cpu_s or 0) + (b.cpu_s or 0),
        a.incomplete + b.incomplete,
        mismatched=a.mismatched + b.mismatched,
        user_cpu_s=(a.user_cpu_s or 0) + (b.user_cpu_s or 0),
        provider_cpu_s=(a.provider_cpu_s or 0) + (b.provider_cpu_s or 0),
        written_s=a.written_s + b.written_s,
    )


def summary(runs: dict[str, list[relay_cost.Load]]) -> dict[str, dict]:
    """Pooled stats per side, with each round's p99 and CPU per token (to show the spread)."""
    out = {}
    for name, loads in runs.items():
        out[name] = pooled(loads).stats()
        out[name]["round_p99_ms"] = [load.stats()["token_p99_ms"] for load in loads]
        out[name]["round_cpu_us_per_token"] = [load.stats()["cpu_us_per_token"] for load in loads]
    return out


def table(stats: dict[str, dict]) -> str:
    """Markdown: latency and CPU per token, store on against off."""
    off, on = stats["store off"], stats["store on"]
    lines = [
        "| store | streams | tokens | token p50 ms | token p99 ms | p99 per round ms "
        "| TTFT p50 ms | TTFT p99 ms | CPU µs/token | per round | incomplete |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in (off, on):
        cells = [s["target"], str(s["streams"]), str(s["tokens"])]
        cells += [ms(s["token_p50_ms"]), ms(s["token_p99_ms"])]
        cells += [" / ".join(ms(v) for v in s["round_p99_ms"])]
        cells += [ms(s["ttft_p50_ms"]), ms(s["ttft_p99_ms"])]
        cells += [f"{s['cpu_us_per_token']:.0f}"]
        cells += [" / ".join(f"{v:.0f}" for v in s["round_cpu_us_per_token"])]
        cells += [str(s["incomplete"])]
        lines.append("| " + " | ".join(cells) + " |")
    added = on["token_p99_ms"] - off["token_p99_ms"]
    cpu = (on["cpu_us_per_token"] / off["cpu_us_per_token"] - 1) * 100
    lines.append("")
    lines.append(
        f"Store adds {added:+.2f} ms at p99 per token (goal <= 5 ms: "
        f"{'met' if added <= 5 else 'missed'}) and {cpu:+.1f}% CPU per token "
        f"(goal <= 10%: {'met' if cpu <= 10 else 'missed'})."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Start the demo and one Stopwire worker, measure, print, stop what we started."""
    parser = argparse.ArgumentParser(prog="python -m bench.store_cost", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--streams", type=int, help="concurrent streams (200)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per side (4)")
    args = parser.parse_args(argv)
    streams = args.streams or (20 if args.quick else 200)
    rounds = args.rounds or (1 if args.quick else 4)
    load_before = os.getloadavg()
    demo = servers.Demo()
    gunicorn = None
    try:
        gunicorn = servers.stopwire(demo.url, FLUSH_S="1")
        stats = summary(measure(demo, gunicorn, streams, rounds))
    finally:
        for process in (gunicorn, demo):
            if process:
                process.close()
    gap_ms = GAP_S * 1000
    print(f"# Store cost ({streams} streams x {TOKENS} tokens every {gap_ms:.0f} ms, ", end="")
    print(f"one worker, {rounds} alternating rounds per side)\n")
    print(f"Machine: {machine_line(machine())}")
    print(f"Load average: {load_line(load_before)} at start, {load_line(os.getloadavg())} at end\n")
    print(table(stats))


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"\nRun took {time.monotonic() - started:.0f} s.")
