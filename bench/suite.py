"""The benchmark suite (issue #6): Stopwire against the plain relay, in one run.

    .venv/bin/python -m bench.suite            # full run, writes docs/benchmarks.{md,json} + PNGs
    .venv/bin/python -m bench.suite --quick    # smoke run (~2 min), writes bench/results/quick/

Sections, each on loopback against the demo provider (which records when its client
left and when it sent each token, in `time.monotonic()`):

a. stop latency (client close -> provider closed) at 20 and 200 ms/token, during a
   10 s silence, before the first token; FIN and RST; Stopwire vs baseline;
b. explicit stop request -> provider closed, on the stream's worker and the other one;
c. mass abort of many streams on one worker: time until the provider saw the last
   close, leaks from /api/debug/stats;
d. relay cost at 1, 200, 1,000 streams: per-token latency and TTFT against no proxy
   and the baseline, token rate, CPU per token;
e. memory per open stream (worker RSS growth / open streams, during c);
f. store cost (issue #3): store on versus off at 200 streams;
g. a burst of new chats (issue #14): 200 chats started at once through the plain relay,
   Stopwire's /v1 (no store) and /api/chat (store on), every stream's text checked;
h. 200 streams at 20 ms/token aborted at once (nginx, a relay in C, beside the relays and
   no proxy), and the issue #14 goals, met or missed.
"""

import argparse
import json
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import (
    burst,
    capacity,
    client,
    relay_cost,
    report,
    servers,
    stop_latency,
    stops,
    store_cost,
)
from bench.client import CLOSES
from bench.stop_latency import PACED, SILENT, Row, Scenario, System, ms

SLOW = Scenario("slow", "200 ms/token", "[demo ttft=0.02 tokens=100 gap=0.2]", 3)
FIRST = Scenario(
    "first", "before the first token (5 s to it)", "[demo ttft=5 tokens=20 gap=0.02]", 0, 0.2
)
PARALLEL = (SLOW, SILENT, FIRST)  # trials this long run side by side, or the run takes hours
SINGLE = (SILENT, FIRST)  # and one at a time, where a trial ends at its stop


NOTES = """\
Command: `.venv/bin/python -m bench.suite` (`--quick` for a smoke run). Everything runs on
loopback against the demo provider, whose records (`time.monotonic()`, one clock for every
process on the host) say when it sent each token and when its client connection closed.
One gunicorn gevent worker per system, except the stop requests (two workers). The
baseline is `bench/baseline_relay.py`: a Flask generator over `requests` that closes the
upstream in `finally`. p99 is nearest-rank. The host is shared with other test runs: the
load average above says how busy it was, and the tails move with it. The loop's time says
how fast the machine was, and the steal how much of it the hypervisor took back: CPU per
token and the tails move with both from run to run.

- **Stop latency**: the provider saw its client close, minus the client's close (or the
  moment just before the stop request was sent). "in parallel" = the trials ran side by
  side, staggered 20 ms (long scenarios; one at a time would take hours); the silence and
  the wait for the first token run one at a time as well, where a trial ends at its stop.
  **no proxy**: the client reads the demo provider itself, with no relay: the floor this
  machine puts under every stop latency (the client's close, loopback, the provider noticing).
- **Mass abort**: every stream read one token, then all clients closed (FIN) in one loop;
  "all closed after" = the provider's last close minus the first client close. Leaks =
  the worker's `/api/debug/stats` (open fds, live greenlets, live generations) after minus before,
  both read once the worker is idle; a negative count is earlier work that finished.
  In h, **nginx** (Debian's, one worker, unbuffered) relays the provider too: a relay in C
  with no application, how soon any relay's FIN can follow its client's on this machine.
- **Relay cost**: per-token latency = client received the k-th word minus the provider sent
  its k-th token (each demo token is one word, so coalesced frames are credited right);
  TTFT = request sent to first token; "added" = minus no proxy at the same load; CPU per
  token = the worker's utime + stime over the run / tokens relayed (10 ms tick resolution).
- **Store cost**: the same Stopwire worker, `{"content"}` (saved, flushed every 1 s) versus
  `{"messages"}` (nothing saved), alternating rounds.
- **Burst of new chats**: every request sent in one go (no stagger), alternating rounds over
  the targets; "text differs" counts streams whose text is not the provider's, character for
  character. Worker CPU is per round (one burst). Flame graphs of this scenario, before and
  after issue #14, and what they showed: [token-path-profile.md](token-path-profile.md)."""


@dataclass(frozen=True)
class Config:
    """How big each section is."""

    trials: int  # per scenario, close and system
    abort_streams: int
    loads: tuple[tuple[int, int, float], ...]  # (streams, tokens each, seconds between tokens)
    store_streams: int
    store_rounds: int
    store_tokens: int
    capacity_steps: tuple[int, ...] = capacity.STEPS
    burst_streams: int = burst.STREAMS
    burst_rounds: int = 3
    paced_abort_streams: int = 200


FULL = Config(60, 1000, ((1, 200, 0.02), (200, 100, 0.02), (1000, 30, 0.2)), 200, 2, 100)
QUICK = Config(5, 20, ((1, 30, 0.02), (20, 30, 0.02)), 20, 1, 40, (5, 10), 20, 1, 20)
STAGGER_S = 0.005  # between connects of a load: a burst of 1,000 SYNs measures the backlog


def stop_section(systems: list[System], demo: servers.Demo, trials: int) -> list[Row]:
    """a. Clients leaving: one at a time at 20 ms/token; the long scenarios side by side
    (one at a time they would take hours for the baseline), and the silence and the wait
    for the first token one at a time too for the systems whose trials end at the stop:
    the goal is a single stream's."""
    rows = []
    for how in CLOSES:
        for system in systems:
            samples = stop_latency.sequential(system, demo, PACED, how, trials)
            rows.append(Row(PACED.title, how, system.name, samples))
    for scenario in PARALLEL:
        results = {s.name: stop_latency.concurrent(s, demo, scenario, trials) for s in systems}
        for how in CLOSES:
            for system in systems:
                samples = results[system.name][how]
                rows.append(Row(scenario.title, how, system.name, samples, parallel=True))
    for scenario in SINGLE:
        for how in CLOSES:
            for system in systems:
                if not system.silence_in_parallel:
                    samples = stop_latency.sequential(system, demo, scenario, how, trials)
                    rows.append(Row(scenario.title, how, system.name, samples))
    return rows


def explicit_section(url: str, demo: servers.Demo, trials: int) -> list[Row]:
    """b. Stop requests on the stream's own worker and on the other of two."""
    samples = stops.explicit_stops(url, demo, trials)
    return [Row(f"stop request, {where}", "request", "Stopwire", s) for where, s in samples.items()]


def relay_section(
    targets: list[relay_cost.Target], demo: servers.Demo, loads: tuple
) -> list[relay_cost.Load]:
    """d. Every load through every target, no proxy first."""
    for target in targets:
        relay_cost.warm_up(target)
    results = []
    for streams, tokens, gap in loads:
        for target in targets:
            stagger = STAGGER_S if streams > 1 else 0.0
            results.append(relay_cost.measure(target, demo, streams, tokens, gap, stagger))
    return results


def raise_fd_limit(wanted: int = 8192) -> None:
    """1,000 streams need ~2,000 descriptors in the bench and as many in a worker."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run(config: Config) -> dict:
    """Start everything, run every section, stop what we started; the raw results."""
    raise_fd_limit()  # before the servers start: they inherit it
    demo = servers.Demo()
    started: list[servers.Process] = [demo]
    try:
        one = servers.stopwire(demo.url, WORKER_CONNECTIONS="2000", FLUSH_S="1")
        started.append(one)
        base = servers.baseline(demo.url, worker_connections=2000)
        started.append(base)
        two = servers.stopwire(demo.url, workers=2)
        started.append(two)
        relay_in_c = servers.Nginx(demo.base)
        started.append(relay_in_c)
        systems = [
            System("Stopwire", one.url, "/api/chat", stop_latency.stopwire_token),
            System("baseline", base.url, "/chat", stop_latency.openai_token, True),
            stop_latency.no_proxy(demo),
        ]
        targets = [
            relay_cost.direct_target(demo),
            relay_cost.baseline_target(base),
            relay_cost.stopwire_target("Stopwire", one, client.messages_body),
        ]
        loads = relay_section(targets, demo, config.loads)
        steps = capacity.search(targets[:0:-1], targets[0], demo, config.capacity_steps)
        store_runs = store_cost.measure(
            demo, one, config.store_streams, config.store_rounds, config.store_tokens
        )
        bursts = burst.measure(
            demo, burst.targets(demo, one, base), config.burst_streams, config.burst_rounds
        )
        for system in systems:
            stop_latency.warm_up(system, demo)
        rows = stop_section(systems, demo, config.trials)
        rows += explicit_section(two.url, demo, config.trials)
        aborts = [
            stops.mass_abort(systems[0], demo, config.abort_streams, targets[2].pid, True),
            stops.mass_abort(systems[1], demo, config.abort_streams, targets[1].pid, False),
        ]
        nginx = stop_latency.nginx_relay(relay_in_c)
        stop_latency.warm_up(nginx, demo)
        workers = [targets[2].pid, targets[1].pid, None, None]  # no proxy and nginx: none
        paced = [
            stops.mass_abort(
                system, demo, config.paced_abort_streams, pid, False, stops.PACED_ABORT
            )
            for system, pid in zip([*systems, nginx], workers, strict=True)
        ]
    finally:
        for process in reversed(started):
            process.close()
    return {
        "rows": rows,
        "loads": loads,
        "capacity": steps,
        "aborts": aborts,
        "store": store_runs,
        "burst": burst.summary(bursts),
        "paced_aborts": paced,
    }


def markdown(results: dict, header: list[str], config: Config) -> str:
    """The whole report as markdown."""
    gap_s = store_cost.GAP_S * 1000
    parts = [
        *header,
        "",
        NOTES,
        "",
        "## a, b. Stop latency (client close or stop request -> provider connection closed)",
        "",
        stop_latency.table(results["rows"]),
        "",
        f"## c, e. Mass abort: {config.abort_streams} streams on one worker closed at once",
        "",
        report.abort_table(results["aborts"]),
        "",
        "## d. Relay cost (Stopwire with the store off; one worker each)",
        "",
        report.relay_table(results["loads"]),
        "",
        "### Highest token rate of one worker with p99 added latency within 20 ms",
        "",
        capacity.table(results["capacity"]),
        "",
        f"## f. Store cost: {config.store_streams} streams x {config.store_tokens} tokens "
        f"every {gap_s:.0f} ms, one worker, {config.store_rounds} alternating rounds per side",
        "",
        store_cost.table(store_cost.summary(results["store"])),
        "",
        f"## g. A burst of new chats: {config.burst_streams} chats started at once x "
        f"{burst.TOKENS} tokens every {burst.GAP_S * 1000:.0f} ms, one worker each, "
        f"{config.burst_rounds} alternating rounds",
        "",
        burst.table(results["burst"], config.burst_streams),
        "",
        f"## h. {config.paced_abort_streams} streams at 20 ms/token on one worker closed at once",
        "",
        report.abort_table(results["paced_aborts"]),
        "",
        "## Issue #14 goals (this run)",
        "",
        goals(results, config),
    ]
    return "\n".join(parts) + "\n"


def goals(results: dict, config: Config) -> str:
    """Each goal of issue #14 with this run's numbers: met or missed."""
    lines = []

    def goal(text: str, met: bool) -> None:
        lines.append(f"- {'met' if met else '**missed**'}: {text}")

    b = results["burst"]
    base, store = b["baseline"], b["Stopwire /api/chat (store on)"]
    goal(
        f"burst, TTFT p99 with the store ({store['ttft_p99_ms']:.0f} ms) <= the plain relay's "
        f"({base['ttft_p99_ms']:.0f} ms)",
        store["ttft_p99_ms"] <= base["ttft_p99_ms"],
    )
    goal(
        f"burst, delay per token p99 with the store ({store['token_p99_ms']:.1f} ms) within "
        f"5 ms of the plain relay's ({base['token_p99_ms']:.1f} ms)",
        store["token_p99_ms"] <= base["token_p99_ms"] + 5,
    )
    goal(
        f"burst, every stream's text is the provider's ({sum(s['mismatched'] for s in b.values())}"
        " differ)",
        all(s["mismatched"] == 0 and s["incomplete"] == 0 for s in b.values()),
    )
    loads = {(x.streams, x.target): x.stats() for x in results["loads"]}
    widest = max(streams for streams, _ in loads)
    ours, theirs = loads[(widest, "Stopwire")], loads[(widest, "baseline")]
    goal(
        f"CPU per relayed token ({widest} streams, store off: {ours['cpu_us_per_token']:.0f} µs) "
        f"<= the plain relay's ({theirs['cpu_us_per_token']:.0f} µs)",
        ours["cpu_us_per_token"] <= theirs["cpu_us_per_token"],
    )
    goal(
        f"CPU per relayed token in the burst, store on ({store['cpu_us_per_token']:.0f} µs) "
        f"<= the plain relay's ({base['cpu_us_per_token']:.0f} µs)",
        store["cpu_us_per_token"] <= base["cpu_us_per_token"],
    )
    top = {name: capacity.best(results["capacity"], name) for name in ("Stopwire", "baseline")}
    rate = {name: step.tokens_per_s if step else 0.0 for name, step in top.items()}
    goal(
        f"highest token rate within 20 ms added p99 ({rate['Stopwire']:.0f} tokens/s) >= the "
        f"plain relay's ({rate['baseline']:.0f})",
        rate["Stopwire"] >= rate["baseline"],
    )
    rss = {a.system: a.rss_per_stream_kib for a in results["aborts"]}
    goal(
        f"memory per open stream ({rss['Stopwire']:.1f} KiB) <= the plain relay's "
        f"({rss['baseline']:.1f} KiB)",
        rss["Stopwire"] <= rss["baseline"],
    )
    paced = {
        a.system: Row("abort", "fin", a.system, a.samples).stats() for a in results["paced_aborts"]
    }
    row, floor, nginx = paced["Stopwire"], paced["no proxy"], paced["nginx"]
    streams = config.paced_abort_streams
    goal(
        f"{streams} streams at 20 ms/token aborted at once: stop p99 ({ms(row['p99_ms'])} ms) "
        f"<= 10 ms (nginx: {ms(nginx['p99_ms'])} ms; no proxy: {ms(floor['p99_ms'])} ms)",
        row["measured"] == row["trials"] and row["p99_ms"] is not None and row["p99_ms"] <= 10,
    )
    goal(
        f"... and zero provider tokens after any stop ({row['tokens_after_total']} sent after "
        f"the client's close, by the provider's clock; nginx: {nginx['tokens_after_total']}; "
        f"no proxy: {floor['tokens_after_total']})",
        row["tokens_after_total"] == 0,
    )
    s = store_cost.summary(results["store"])
    extra = (s["store on"]["cpu_us_per_token"] / s["store off"]["cpu_us_per_token"] - 1) * 100
    goal(f"store on vs off: {extra:+.1f}% CPU per token (<= 10%)", extra <= 10)
    single = {(r.scenario, r.close, r.system): r.stats() for r in results["rows"] if not r.parallel}
    for scenario in (PACED, *SINGLE):
        worst, floor = (
            worst_p99([single[(scenario.title, how, system)] for how in CLOSES])
            for system in ("Stopwire", "no proxy")
        )
        goal(
            f"stop latency p99, a single stream, {scenario.title}: {ms(worst)} ms (<= 2 ms; "
            f"no proxy: {ms(floor)} ms)",
            worst is not None and worst <= 2,
        )
    return "\n".join(lines)


def worst_p99(rows: list[dict]) -> float | None:
    """The largest p99 of some rows; None when one of them measured nothing."""
    values = [row["p99_ms"] for row in rows]
    return None if None in values else max(values)


def to_json(results: dict, info: dict, load: dict, config: Config) -> dict:
    """Everything as JSON, with the raw stop-latency samples."""
    return {
        "machine": info,
        "load_average": load,
        "config": asdict(config),
        "stop_latency": [
            {"scenario": r.scenario, "close": r.close, "system": r.system, "parallel": r.parallel}
            | r.stats()
            | {"latencies_ms": r.latencies()}
            for r in results["rows"]
        ],
        "mass_abort": [
            {
                "system": a.system,
                "streams": a.streams,
                "all_closed_ms": a.all_closed_ms,
                "rss_per_stream_kib": a.rss_per_stream_kib,
                "stats_before": a.before,
                "stats_after": a.after,
                "leaks": a.leaks(),
                **Row("abort", "fin", a.system, a.samples).stats(),
            }
            for a in results["aborts"]
        ],
        "relay_cost": [load.stats() for load in results["loads"]],
        "capacity": [asdict(step) | {"within": step.within} for step in results["capacity"]],
        "store_cost": store_cost.summary(results["store"]),
        "burst": results["burst"],
        "paced_abort": [
            {
                "system": a.system,
                "streams": a.streams,
                "all_closed_ms": a.all_closed_ms,
                **Row("abort", "fin", a.system, a.samples).stats(),
            }
            for a in results["paced_aborts"]
        ],
    }


def main(argv: list[str] | None = None) -> None:
    """Run the suite, print the tables, write markdown, JSON and plots."""
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, about 2 minutes")
    parser.add_argument("--out", type=Path, help="where to write (docs/, or bench/results/quick/)")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    out = args.out or (servers.RESULTS / "quick" if args.quick else servers.ROOT / "docs")
    out.mkdir(parents=True, exist_ok=True)

    began = time.monotonic()
    load_start = os.getloadavg()  # other work on the host skews milliseconds: say so
    loop_start = stop_latency.loop_seconds()
    stolen_before = stop_latency.stolen_seconds()
    results = run(config)
    stolen = stop_latency.stolen_seconds() - stolen_before
    load = {"start": load_start, "end": os.getloadavg()}
    loops = {"start": loop_start, "end": stop_latency.loop_seconds()}
    info = stop_latency.machine()
    header = [
        f"# Stopwire benchmarks ({'quick' if args.quick else 'full'} run)",
        "",
        f"Machine: {stop_latency.machine_line(info)}",
        f"Load average (1, 5, 15 min): {stop_latency.load_line(load['start'])} at start, "
        f"{stop_latency.load_line(load['end'])} at end. "
        f"Run took {time.monotonic() - began:.0f} s.",
        f"Interpreter speed: a 10-million-step loop took {loops['start']:.2f} s at start, "
        f"{loops['end']:.2f} s at end. The hypervisor took {stolen:.1f} s of CPU time "
        "from this machine during the run (steal, all CPUs).",
    ]
    text = markdown(results, header, config)
    print(text)
    (out / "benchmarks.md").write_text(text)
    summary = to_json(results, info, load, config) | {"loop_seconds": loops, "stolen_s": stolen}
    (out / "benchmarks.json").write_text(json.dumps(summary, indent=2))
    for path in report.plots(out, results["rows"], results["loads"]):
        print(f"plot: {path}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
