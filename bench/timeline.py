"""Where a mass abort's milliseconds go: the worker's own timeline beside the provider's.

    .venv/bin/python -m bench.timeline [--rounds 4] [--streams 200]

The paced abort of the suite's section h (streams at 20 ms/token read a token each, then
every client closes, FIN, in one loop), on a Stopwire worker that records its loop
(bench/timeline_recorder.py). Per round, every time from the first client's close:

- the stop latency the suite measures (the provider saw its client leave), p50 and p99,
  and the provider's tokens sent after the clients left;
- when the worker sent its first and last FIN to the provider, in how many batches of
  departures, and the median time between two FINs of one batch (the serial work a
  departure costs the loop);
- what held the loop from 20 ms before the first close to the provider's last close: its
  stalls (a 1 ms timer run more than 3 ms late), each with the share of it the worker was
  on the CPU (the rest it waited for a core), and the garbage collector's passes.

It measures one worker on this machine, the demo provider and this client sharing its
cores: a probe to explain one run's tail, not a benchmark of its own.
"""

import argparse
import itertools
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import servers, stop_latency, stops
from bench.stop_latency import Row, System
from bench.suite import raise_fd_limit

BEFORE_S = 0.02  # what held the loop this long before the first close counts too


@dataclass(frozen=True)
class Mark:
    """One record of the worker's timeline (bench/timeline_recorder.py)."""

    kind: str
    began: float
    ended: float
    number: int


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.timeline", description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args(argv)
    raise_fd_limit()
    print(f"# {args.streams} streams at 20 ms/token closed at once, one worker, ", end="")
    print(f"{args.rounds} rounds\n")
    print(stop_latency.machine_line(stop_latency.machine()) + "\n")
    print(table(run(args.rounds, args.streams)))


def run(rounds: int, streams: int) -> list[dict]:
    """Each round's row: the provider's account and the worker's, on one clock."""
    with tempfile.TemporaryDirectory(prefix="stopwire-timeline-") as scratch:
        path = Path(scratch) / "timeline"
        os.environ["BENCH_TIMELINE"] = str(path)  # inherited by the worker only we start
        demo = servers.Demo()
        try:
            worker = servers.stopwire(demo.url, config="bench/timeline_gunicorn.py")
        except BaseException:
            demo.close()
            raise
        try:
            system = System("Stopwire", worker.url, "/api/chat", stop_latency.stopwire_token)
            stop_latency.warm_up(system, demo)
            return [one_round(system, demo, streams, path) for _ in range(rounds)]
        finally:
            worker.close()
            demo.close()
            os.environ.pop("BENCH_TIMELINE", None)


def one_round(system: System, demo: servers.Demo, streams: int, path: Path) -> dict:
    closed, records, _ = stops.abort_all(system, demo, streams, None, stops.PACED_ABORT)
    time.sleep(0.5)  # two flushes of the recorder
    samples = [stops.sample_of(records[m], closed[m]) for m in closed]
    first = min(closed.values())
    # A stream the relay never closed has no close: the timeline runs to now, then.
    last = max(r["client_closed_at"] or time.monotonic() for r in records.values())
    marks = [m for m in read(path) if m.ended > first - BEFORE_S and m.began < last]
    return {
        "stats": Row("abort", "fin", system.name, samples).stats(),
        "clients closed": (max(closed.values()) - first) * 1000,
        "provider last close": (last - first) * 1000,
        **worker_side([m for m in marks if m.began >= first], first),
        "held": [m for m in marks if m.kind in ("stall", "gc")],
        "first": first,
    }


def read(path: Path) -> list[Mark]:
    """Every record the worker appended so far (and then forget them)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    path.unlink()
    return [Mark(k, float(b), float(e), int(n)) for k, b, e, n in (line.split() for line in lines)]


def worker_side(marks: list[Mark], first: float) -> dict:
    """When the FINs went out, in how many batches, and the time between two of a batch."""
    fins = sorted(m.began for m in marks if m.kind == "fin")
    batches = [m for m in marks if m.kind == "served"]
    gaps = [
        (b - a) * 1e6
        for batch in batches
        for a, b in itertools.pairwise([f for f in fins if batch.began <= f <= batch.ended])
    ]
    return {
        "fins": len(fins),
        "first fin": (fins[0] - first) * 1000 if fins else None,
        "last fin": (fins[-1] - first) * 1000 if fins else None,
        "batches": [m.number for m in batches],
        "between fins": statistics.median(gaps) if gaps else None,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| round | stop p50 / p99 ms | tokens after | clients closed within ms "
        "| FINs sent from / to ms | departures served, per batch | between FINs µs "
        "| provider's last close ms | what held the loop (from the first close, ms) |",
        "|--:|--:|--:|--:|--:|---|--:|--:|---|",
    ]
    for number, row in enumerate(rows, start=1):
        stats = row["stats"]
        lines.append(
            f"| {number} | {_ms(stats['p50_ms'], 2)} / {_ms(stats['p99_ms'], 2)} "
            f"| {stats['tokens_after_total']} | {row['clients closed']:.1f} "
            f"| {_ms(row['first fin'])} / {_ms(row['last fin'])} "
            f"| {row['fins']} in {' + '.join(map(str, row['batches'])) or 'none'} "
            f"| {_ms(row['between fins'])} | {row['provider last close']:.1f} "
            f"| {held(row['held'], row['first'])} |"
        )
    return "\n".join(lines)


def held(marks: list[Mark], first: float) -> str:
    """Stalls (with the share the worker was on the CPU) and collections, in order:
    `stall +1.0..+9.8 (80% on CPU)`, `gc2 +3.1..+6.5`."""
    words = [
        f"gc{m.number} {_span(m, first)}"
        if m.kind == "gc"
        else f"stall {_span(m, first)} ({m.number}% on CPU)"
        for m in sorted(marks, key=lambda m: m.began)
    ]
    return ", ".join(words) or "nothing"


def _span(mark: Mark, first: float) -> str:
    return f"{(mark.began - first) * 1000:+.1f}..{(mark.ended - first) * 1000:+.1f}"


def _ms(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
