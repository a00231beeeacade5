"""Where a mass abort's milliseconds go: the worker's own timeline beside the provider's.

    .venv/bin/python -m bench.timeline [--rounds 4] [--streams 200]

The paced abort of the suite's section h (streams at 20 ms/token read a token each, then
every client closes, FIN, in one loop), on a Stopwire worker that records its loop
(bench/timeline_recorder.py). Per round, every time from the first client's close:

- the stop latency the suite measures (the provider saw its client leave), p50 and p99,
  and the provider's tokens sent after the clients left;
- when the worker sent its first and last FIN to the provider, in how many batches of
  departures, and the median wall time between two FINs of one batch (the serial work
  a departure costs the loop);
- what held the loop from 20 ms before the first close to the provider's last close: its
  stalls (a 1 ms timer run more than 3 ms late), each with the shares of it the loop's
  thread spent on a core and queued for one (the rest it was blocked, or the hypervisor
  had the core), and the garbage collector's passes;
- the CPU time the hypervisor took from the whole machine during the round (its two
  seconds of streaming included): `steal` in /proc/stat, in 10 ms ticks.

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
from bench.stop_latency import Row, System, ms
from bench.suite import raise_fd_limit

BEFORE_S = 0.02  # what held the loop this long before the first close counts too


@dataclass(frozen=True)
class Mark:
    """One record of the worker's timeline (bench/timeline_recorder.py): `value` is a
    batch's departures, a collection's generation or a stall's share on a core (%),
    `queued` a stall's share queued for a core (%)."""

    kind: str
    began: float
    ended: float
    value: int
    queued: int = 0


@dataclass(frozen=True)
class Round:
    """One abort, as the provider and the worker saw it; times in ms from the first close."""

    stats: dict
    clients_closed: float
    provider_last_close: float
    fins: int
    first_fin: float | None
    last_fin: float | None
    batches: list[int]
    between_fins_us: float | None
    held: str
    stolen_ms: float


class Timeline:
    """The file the worker appends to, read a whole line at a time as it grows."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0

    def read(self) -> list[Mark]:
        """The records appended since the last read (a line still being written waits)."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as timeline:
            timeline.seek(self._offset)
            text = timeline.read()
        whole = text[: text.rfind(b"\n") + 1]
        self._offset += len(whole)
        return [_mark(*line.split()) for line in whole.decode().splitlines()]


def _mark(kind: str, began: str, ended: str, *values: str) -> Mark:
    return Mark(kind, float(began), float(ended), *map(int, values))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.timeline", description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.streams < 1:
        parser.error("--rounds and --streams must be at least 1")
    raise_fd_limit()
    print(f"# {args.streams} streams at 20 ms/token closed at once, one worker, ", end="")
    print(f"{args.rounds} rounds\n")
    print(stop_latency.machine_line(stop_latency.machine()) + "\n")
    print(table(run(args.rounds, args.streams)))


def run(rounds: int, streams: int) -> list[Round]:
    """Each round, the provider's account and the worker's, on one clock."""
    with tempfile.TemporaryDirectory(prefix="stopwire-timeline-") as scratch:
        timeline = Timeline(Path(scratch) / "timeline")
        demo = servers.Demo()
        worker = None
        try:
            os.environ["BENCH_TIMELINE"] = str(timeline.path)  # for the worker, which inherits it
            try:
                worker = servers.stopwire(demo.url, config="bench/timeline_gunicorn.py")
            finally:
                os.environ.pop("BENCH_TIMELINE", None)
            system = System("Stopwire", worker.url, "/api/chat", stop_latency.stopwire_token)
            stop_latency.warm_up(system, demo)
            return [one_round(system, demo, streams, timeline) for _ in range(rounds)]
        finally:
            if worker is not None:
                worker.close()
            demo.close()


def one_round(system: System, demo: servers.Demo, streams: int, timeline: Timeline) -> Round:
    timeline.read()  # what came before this round
    stolen = stop_latency.stolen_seconds()
    closed, records, _ = stops.abort_all(system, demo, streams, None, stops.PACED_ABORT)
    stolen = stop_latency.stolen_seconds() - stolen
    time.sleep(0.5)  # two flushes of the recorder
    samples = [stops.sample_of(records[m], closed[m]) for m in closed]
    first = min(closed.values())
    # A stream the relay never closed has no close: the timeline runs to now, then.
    last = max(r["client_closed_at"] or time.monotonic() for r in records.values())
    marks = [m for m in timeline.read() if m.ended > first - BEFORE_S and m.began < last]
    fins = sorted(m.began for m in marks if m.kind == "fin" and m.began >= first)
    batches = [m for m in marks if m.kind == "served" and m.began >= first]
    return Round(
        stats=Row("abort", "fin", system.name, samples).stats(),
        clients_closed=(max(closed.values()) - first) * 1000,
        provider_last_close=(last - first) * 1000,
        fins=len(fins),
        first_fin=(fins[0] - first) * 1000 if fins else None,
        last_fin=(fins[-1] - first) * 1000 if fins else None,
        batches=[m.value for m in batches],
        between_fins_us=between_fins(fins, batches),
        held=held([m for m in marks if m.kind in ("stall", "gc")], first),
        stolen_ms=stolen * 1000,
    )


def between_fins(fins: list[float], batches: list[Mark]) -> float | None:
    """The median time between two FINs sent while serving one batch of departures, µs."""
    gaps = [
        (later - earlier) * 1e6
        for batch in batches
        for earlier, later in itertools.pairwise(
            [f for f in fins if batch.began <= f <= batch.ended]
        )
    ]
    return statistics.median(gaps) if gaps else None


def held(marks: list[Mark], first: float) -> str:
    """Stalls and collections in order: `stall -5.0..+8.7 (57% on a core, 30% queued)`."""
    words = [
        f"gc{m.value} {_span(m, first)}"
        if m.kind == "gc"
        else f"stall {_span(m, first)} ({m.value}% on a core, {m.queued}% queued)"
        for m in sorted(marks, key=lambda m: m.began)
    ]
    return ", ".join(words) or "nothing"


def _span(mark: Mark, first: float) -> str:
    return f"{(mark.began - first) * 1000:+.1f}..{(mark.ended - first) * 1000:+.1f}"


def table(rounds: list[Round]) -> str:
    lines = [
        "| round | stop p50 / p99 ms | tokens after | clients closed within ms "
        "| FINs sent from / to ms | departures served, per batch | between FINs µs "
        "| provider's last close ms | what held the loop (from the first close, ms) "
        "| taken by the hypervisor in the round ms |",
        "|--:|--:|--:|--:|--:|---|--:|--:|---|--:|",
    ]
    for number, one in enumerate(rounds, start=1):
        stats = one.stats
        lines.append(
            f"| {number} | {ms(stats['p50_ms'])} / {ms(stats['p99_ms'])} "
            f"| {stats['tokens_after_total']} | {one.clients_closed:.1f} "
            f"| {ms(one.first_fin)} / {ms(one.last_fin)} "
            f"| {one.fins} FINs; {sum(one.batches)} in {' + '.join(map(str, one.batches)) or '-'} "
            f"| {ms(one.between_fins_us)} | {ms(one.provider_last_close)} | {one.held} "
            f"| {one.stolen_ms:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
