"""A/B of two Stopwire revisions on one machine: alternating rounds of one scenario.

    .venv/bin/python -m bench.ab abort --base 150723c [--rounds 8]
    .venv/bin/python -m bench.ab burst --base 150723c [--rounds 6] [--streams 100]
    .venv/bin/python -m bench.ab relay --base 150723c [--rounds 6] [--streams 1000]
    .venv/bin/python -m bench.ab silent --base 150723c [--rounds 6] [--streams 20]

`--base` is a git revision, checked out in a temporary worktree; the other side is this
working tree. Each side runs its own gunicorn worker from its own tree (one venv: the
worker imports the tree it runs in). Rounds alternate, so the host's other load falls on
both sides alike; on a shared 2-core machine single rounds of these scenarios vary by a
factor of two, so compare the medians of many rounds, never one.

- `abort`: 200 streams at 20 ms/token read a token each, then every client closes (FIN)
  in one loop, as section h of the suite. Per round: stop p99 and p50 (the provider saw
  its client close, minus the client's close), provider tokens sent after the clients
  left, and the time to the last close; no proxy alongside, the floor of this machine.
- `burst`: chats started at once through `/api/chat` (store on), as section g, with the
  plain relay alongside. Per round: time to first token p99, delay per token p50 and p99, the
  worker's CPU per token and the part of it in user mode (the interpreter, not the kernel).
- `relay`: streams connecting 5 ms apart through `/api/chat` with the store off, as section
  d: 100 tokens 20 ms apart, or, with `--streams` over 200, 30 tokens 200 ms apart; with
  the plain relay alongside. Per round: the same measures as `burst`.
- `silent`: one stream at a time (`--streams` of them a round, 20 by default), the client
  closing (FIN) while the provider is silent, as the suite's single-stream goal row. Per
  round: stop p50, p99 and the largest.
"""

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

from bench import burst, client, relay_cost, servers, stop_latency, stops
from bench.stop_latency import Row, System
from bench.suite import STAGGER_S, raise_fd_limit

STREAMS = 200
SILENT_TRIALS = 20

Round = dict[str, float]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("scenario", choices=["abort", "burst", "relay", "silent"])
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds (8)")
    parser.add_argument("--streams", type=int, help="streams per round (200; silent: 20)")
    args = parser.parse_args(argv)
    raise_fd_limit()
    with servers.checkout(args.base) as base:
        trees = {f"base {args.base}": base, "this tree": servers.ROOT}
        rounds = measure(args.scenario, trees, args.rounds, args.streams)
    print(report(args.scenario, rounds))


def measure(
    scenario: str, trees: dict[str, Path], rounds: int, streams: int | None
) -> dict[str, list[Round]]:
    if scenario == "abort":
        count = streams or STREAMS
        return stop_rounds(trees, rounds, lambda s, d: abort_round(s, d, count))
    if scenario == "silent":
        trials = streams or SILENT_TRIALS
        return stop_rounds(trees, rounds, lambda s, d: silent_round(s, d, trials))
    return relay_rounds(trees, rounds, streams or STREAMS, scenario == "burst")


def workers(trees: dict[str, Path], demo: servers.Demo) -> dict[str, servers.Gunicorn]:
    """One Stopwire worker per tree, as the suite starts it."""
    started = {}
    try:
        for name, tree in trees.items():
            with servers.running_from(tree):
                started[name] = servers.stopwire(demo.url, WORKER_CONNECTIONS="2000", FLUSH_S="1")
    except BaseException:
        for worker in started.values():
            worker.close()
        raise
    return started


def alternate(sides: dict[str, Callable[[], Round]], rounds: int) -> dict[str, list[Round]]:
    out: dict[str, list[Round]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, one_round in sides.items():
            out[name].append(one_round())
    return out


def stop_rounds(
    trees: dict[str, Path], rounds: int, one_round: Callable[[System, servers.Demo], Round]
) -> dict:
    """Stops through each tree's worker and with no proxy, alternating."""
    demo = servers.Demo()
    started: dict[str, servers.Gunicorn] = {}
    try:
        started = workers(trees, demo)
        systems = [
            System(name, worker.url, "/api/chat", stop_latency.stopwire_token)
            for name, worker in started.items()
        ]
        systems.append(stop_latency.no_proxy(demo))
        for system in systems:
            stop_latency.warm_up(system, demo)
        sides = {s.name: (lambda s=s: one_round(s, demo)) for s in systems}
        return alternate(sides, rounds)
    finally:
        for worker in started.values():
            worker.close()
        demo.close()


def abort_round(system: System, demo: servers.Demo, streams: int) -> Round:
    abort = stops.mass_abort(system, demo, streams, None, False, stops.PACED_ABORT)
    stats = Row("abort", "fin", system.name, abort.samples).stats()
    return {
        "stop p99 ms": stats["p99_ms"],
        "stop p50 ms": stats["p50_ms"],
        "tokens after": stats["tokens_after_total"],
        "all closed ms": abort.all_closed_ms,
    }


def silent_round(system: System, demo: servers.Demo, trials: int) -> Round:
    samples = stop_latency.sequential(system, demo, stop_latency.SILENT, "fin", trials)
    stats = Row("silent", "fin", system.name, samples).stats()
    return {
        "stop p50 ms": stats["p50_ms"],
        "stop p99 ms": stats["p99_ms"],
        "stop max ms": stats["max_ms"],
        "tokens after": stats["tokens_after_total"],
    }


def relay_rounds(trees: dict[str, Path], rounds: int, streams: int, burst_of_chats: bool) -> dict:
    demo = servers.Demo()
    started: dict[str, servers.Gunicorn] = {}
    baseline = None
    try:
        started = workers(trees, demo)
        baseline = servers.baseline(demo.url, worker_connections=2000)
        body = client.content_body if burst_of_chats else client.messages_body
        targets = [relay_cost.baseline_target(baseline)]
        targets += [
            relay_cost.stopwire_target(name, worker, body) for name, worker in started.items()
        ]
        for target in targets:
            relay_cost.warm_up(target)
        if burst_of_chats:  # every request in one go
            load = (streams, burst.TOKENS, burst.GAP_S, 0.0)
        elif streams > STREAMS:  # as the suite's relay cost: connects spread out
            load = (streams, 30, 0.2, STAGGER_S)
        else:
            load = (streams, 100, 0.02, STAGGER_S)
        sides = {t.name: (lambda t=t: relay_round(t, demo, *load)) for t in targets}
        return alternate(sides, rounds)
    finally:
        for process in [*started.values(), baseline]:
            if process is not None:
                process.close()
        demo.close()


def relay_round(
    target: relay_cost.Target,
    demo: servers.Demo,
    streams: int,
    tokens: int,
    gap_s: float,
    stagger_s: float,
) -> Round:
    stats = relay_cost.measure(target, demo, streams, tokens, gap_s, stagger_s).stats()
    return {
        "TTFT p99 ms": stats["ttft_p99_ms"],
        "delay p50 ms": stats["token_p50_ms"],
        "delay p99 ms": stats["token_p99_ms"],
        "CPU µs/token": stats["cpu_us_per_token"],
        "of it user µs/token": stats["user_cpu_us_per_token"],
        "text differs": stats["mismatched"],
    }


def report(scenario: str, rounds: dict[str, list[Round]]) -> str:
    """Markdown: the median of the rounds per measure, then every round."""
    names = list(rounds)
    measures = list(next(iter(rounds.values()))[0])
    lines = [
        f"| {scenario}, median of {len(rounds[names[0]])} rounds | " + " | ".join(names) + " |",
        "|---|" + "--:|" * len(names),
    ]
    for measure in measures:
        cells = [median(r[measure] for r in rounds[name]) for name in names]
        lines.append(f"| {measure} | " + " | ".join(cells) + " |")
    lines.append("")
    for name in names:
        each = " · ".join("/".join(number(r[m]) for m in measures) for r in rounds[name])
        lines.append(f"- {name}, every round ({' / '.join(measures)}): {each}")
    return "\n".join(lines)


def median(values) -> str:
    known = [v for v in values if v is not None]
    return number(statistics.median(known)) if known else "-"


def number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}".rstrip("0").rstrip(".")


if __name__ == "__main__":
    main()
