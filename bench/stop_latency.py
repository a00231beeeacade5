"""Stop latency (issue #2): how soon the provider's connection closes after the client leaves.

    .venv/bin/python -m bench.stop_latency [--quick] [--trials N] [--crowd N]

Stopwire (`gunicorn -c gunicorn.conf.py`, one gevent worker) and the common pattern
(bench/baseline_relay.py under the same worker) relay the same demo provider, in
one run, beside "no proxy" (the client reads the provider itself: this machine's floor).
A raw-socket client reads a few tokens and closes by FIN or RST.

- stop latency = the provider's `client_closed_at` minus the client's
  `time.monotonic()` just before close (both CLOCK_MONOTONIC on this host);
- tokens after stop = provider `token_times` later than that moment.

Scenarios: tokens every 20 ms; a provider silent for 10 s (the baseline's silent
trials run concurrently, or each would take ten seconds); many streams on one
worker closed at once. Prints a markdown table and writes JSON to bench/results/.
"""

import argparse
import importlib.metadata
import json
import math
import os
import platform
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import servers
from bench.client import CLOSES, Stream, content_body, openai_body

POLL_S = 0.02
BATCH_POLL_S = 0.25  # big batches: poll seldom, the demo must not be busy serializing
STAGGER_S = 0.02


@dataclass(frozen=True)
class Scenario:
    """One way of leaving: what the provider is told to do, and when the client closes."""

    key: str
    title: str
    directive: str
    tokens_before: int  # token frames the client reads before it closes
    pause_s: float = 0.0  # then it waits this long


PACED = Scenario("paced", "20 ms/token", "[demo ttft=0.02 tokens=400 gap=0.02]", 3)
SILENT = Scenario(
    "silent", "provider silent 10 s", "[demo ttft=0.02 tokens=50 gap=0.01 silence=3:10]", 3, 0.2
)
CROWD = Scenario(
    "crowd", "streams at once, 50 ms/token", "[demo ttft=0.02 tokens=1000 gap=0.05]", 1
)


@dataclass(frozen=True)
class System:
    """A relay under test: where to POST, and which SSE frames carry a token."""

    name: str
    url: str
    path: str
    is_token: Callable[[bytes], bool]
    silence_in_parallel: bool = False  # each silent trial lasts the whole silence
    body: Callable[[str], dict] = content_body

    def open(self, content: str) -> Stream:
        """Start one stream (the request is sent; nothing is read yet)."""
        return Stream(self.url, self.path, self.body(content))


def no_proxy(demo: servers.Demo) -> System:
    """The client reads the provider itself: the floor under every relay's stop latency
    on this machine (the client's close, loopback, the provider noticing it)."""
    return System("no proxy", demo.base, "/v1/chat/completions", openai_token, body=openai_body)


def nginx_relay(nginx: servers.Nginx) -> System:
    """The provider through nginx, a relay in C with no application: how soon any relay's
    FIN can follow its client's on this machine, beside the floor with no relay at all."""
    return System("nginx", nginx.url, "/v1/chat/completions", openai_token, body=openai_body)


def stopwire_token(frame: bytes) -> bool:
    """Stopwire frames tokens as `event: token`."""
    return b"event: token" in frame


def openai_token(frame: bytes) -> bool:
    """The baseline relays the provider's OpenAI chunks; a token is a content delta."""
    return frame.startswith(b"data: {") and b'"content"' in frame


@dataclass
class Sample:
    """One trial as the provider saw it; latency is None if it never saw the client leave."""

    latency_ms: float | None
    tokens_after: int
    ended: str


# -- trials ------------------------------------------------------------------------------


def leave(system: System, scenario: Scenario, how: str, marker: str) -> float:
    """Open a stream, read its first tokens, wait, close; returns the close moment."""
    stream = system.open(f"{marker} {scenario.directive}")
    if scenario.tokens_before:  # else leave before the response head (the baseline has none yet)
        stream.read_frames(scenario.tokens_before, system.is_token)
    if scenario.pause_s:
        time.sleep(scenario.pause_s)
    return stream.close(how)


def sequential(
    system: System, demo: servers.Demo, scenario: Scenario, how: str, trials: int
) -> list[Sample]:
    """One trial at a time, each waiting until the provider's stream has ended."""
    demo.clear()
    samples = []
    for _ in range(trials):
        marker = new_marker()
        closed_at = leave(system, scenario, how, marker)
        records = wait_ended(demo, {marker}, timeout=20.0, poll_s=POLL_S)
        samples.append(sample(records[marker], closed_at))
    return samples


def concurrent(
    system: System, demo: servers.Demo, scenario: Scenario, trials: int
) -> dict[str, list[Sample]]:
    """`trials` FIN and `trials` RST trials at once, started STAGGER_S apart.

    For the baseline's silent scenario, where each trial lasts as long as the silence.
    """
    demo.clear()
    plan = [(new_marker(), CLOSES[i % len(CLOSES)]) for i in range(trials * len(CLOSES))]
    closed: dict[str, float] = {}
    errors: list[BaseException] = []

    def one(marker: str, how: str) -> None:
        try:
            closed[marker] = leave(system, scenario, how, marker)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=step) for step in plan]
    for thread in threads:
        thread.start()
        time.sleep(STAGGER_S)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    records = wait_ended(demo, set(closed), timeout=30.0, poll_s=BATCH_POLL_S)
    return {
        how: [sample(records[m], closed[m]) for m, close in plan if close == how] for how in CLOSES
    }


def crowd(system: System, demo: servers.Demo, streams: int, how: str) -> list[Sample]:
    """Open `streams` streams on the one worker, read a token from each, close all at once."""
    demo.clear()
    markers = [new_marker() for _ in range(streams)]
    opened = [system.open(f"{marker} {CROWD.directive}") for marker in markers]
    for stream in opened:
        stream.read_frames(CROWD.tokens_before, system.is_token)
    closed = {marker: stream.close(how) for marker, stream in zip(markers, opened, strict=True)}
    records = wait_ended(demo, set(closed), timeout=30.0, poll_s=BATCH_POLL_S)
    return [sample(records[m], closed[m]) for m in markers]


def warm_up(system: System, demo: servers.Demo) -> None:
    """One complete stream first: imports, pools and the worker's first request are paid here."""
    stream = system.open("warm-up [demo ttft=0 tokens=3 gap=0]")
    stream.read_to_end()
    stream.close("fin")
    demo.clear()


def new_marker() -> str:
    """Unique text for one trial, to find its record among the provider's."""
    return f"bench-{uuid.uuid4().hex[:16]}"


def wait_ended(
    demo: servers.Demo,
    markers: set[str],
    timeout: float,
    poll_s: float,
    left_open_is_a_result: bool = False,
) -> dict[str, dict]:
    """The provider's record for each marker, once every one of those streams has ended.

    `left_open_is_a_result`: after `timeout`, the records as they are, streams still open
    included (a relay that never closed some), as long as every stream has one."""
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(poll_s)
        found = {r["prompt"].split()[0]: r for r in demo.records()}
        records = {m: found[m] for m in markers if m in found}
        ended = all(r["ended"] != "streaming" for r in records.values())
        if len(records) == len(markers) and ended:
            return records
        if time.monotonic() > deadline:
            if left_open_is_a_result and len(records) == len(markers):
                return records
            streaming = sorted(m for m, r in records.items() if r["ended"] == "streaming")
            raise TimeoutError(
                f"after {timeout:.0f} s, {len(markers) - len(records)} of {len(markers)} streams "
                f"had no record at the provider and {len(streaming)} were still streaming "
                f"there ({', '.join(streaming[:5])})"
            )


def sample(record: dict, closed_at: float) -> Sample:
    """Latency and wasted tokens of one trial, from the provider's record."""
    closed_by_provider = record["client_closed_at"]
    latency = None if closed_by_provider is None else (closed_by_provider - closed_at) * 1000
    tokens_after = sum(t > closed_at for t in record["token_times"])
    return Sample(latency, tokens_after, record["ended"])


# -- report ------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a scenario, a way of closing, a system."""

    scenario: str
    close: str
    system: str
    samples: list[Sample]
    parallel: bool = False  # the trials ran at the same time, not one after another

    def latencies(self) -> list[float]:
        """Latencies of the trials where the provider saw the client leave."""
        return sorted(s.latency_ms for s in self.samples if s.latency_ms is not None)

    def stats(self) -> dict:
        """p50/p99/max in ms (nearest rank) and tokens produced after the stop."""
        values = self.latencies()
        wasted = [s.tokens_after for s in self.samples]
        return {
            "trials": len(self.samples),
            "measured": len(values),
            "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99),
            "max_ms": values[-1] if values else None,
            "tokens_after_total": sum(wasted),
            "tokens_after_max": max(wasted, default=0),
        }


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of sorted values: a value that was actually measured."""
    if not values:
        return None
    return values[max(0, math.ceil(pct / 100 * len(values)) - 1)]


def table(rows: list[Row]) -> str:
    """The markdown table; the ratio column sits on each baseline row."""
    lines = [
        "| scenario | close | system | trials | p50 ms | p99 ms | max ms "
        "| tokens after stop (total / max) | p99 baseline / Stopwire |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    p99 = {(r.scenario, r.close, r.system, r.parallel): r.stats()["p99_ms"] for r in rows}
    for row in rows:
        s = row.stats()
        trials = str(s["trials"])
        if s["measured"] != s["trials"]:
            trials += f" ({s['trials'] - s['measured']} not closed)"
        if row.parallel:
            trials += " in parallel"
        ratio = ""
        ours = p99.get((row.scenario, row.close, "Stopwire", row.parallel))
        if row.system == "baseline" and ours and s["p99_ms"] is not None:
            ratio = f"{s['p99_ms'] / ours:.0f}x"
        cells = [row.scenario, row.close.upper(), row.system, trials]
        cells += [ms(s["p50_ms"]), ms(s["p99_ms"]), ms(s["max_ms"])]
        cells += [f"{s['tokens_after_total']} / {s['tokens_after_max']}", ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ms(value: float | None) -> str:
    """Milliseconds for the table: two decimals when small, none when large."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {
        name: importlib.metadata.version(name)
        for name in ("gunicorn", "gevent", "flask", "requests", "urllib3")
    }
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        **versions,
    }


def machine_line(info: dict) -> str:
    """The machine as one header line."""
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['os']}, Python {info['python']}, "
        f"gunicorn {info['gunicorn']}, gevent {info['gevent']} "
        f"(Flask {info['flask']}, requests {info['requests']}, urllib3 {info['urllib3']})"
    )


def loop_seconds() -> float:
    """How long this interpreter takes for a 10-million-step empty loop: this workplace's
    machines have run it in 0.15 to 0.83 s, and every CPU figure moved with it."""
    began = time.perf_counter()
    for _ in range(10_000_000):
        pass
    return time.perf_counter() - began


def stolen_seconds() -> float:
    """CPU time the hypervisor has taken from this virtual machine since it booted, all
    CPUs together (`steal` in /proc/stat): time a busy process waited without any
    process of ours running, and so in any latency measured meanwhile."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def load_line(load: tuple[float, float, float]) -> str:
    """A load average as three numbers."""
    return " ".join(f"{x:.2f}" for x in load)


# -- the run -----------------------------------------------------------------------------


def measure(systems: list[System], demo: servers.Demo, trials: int, streams: int) -> list[Row]:
    """Every scenario for every system, in table order."""
    rows = []
    for how in CLOSES:
        for system in systems:
            samples = sequential(system, demo, PACED, how, trials)
            rows.append(Row(PACED.title, how, system.name, samples))
    silent = {}
    for system in systems:
        if system.silence_in_parallel:
            silent[system.name] = concurrent(system, demo, SILENT, trials)
        else:
            silent[system.name] = {
                how: sequential(system, demo, SILENT, how, trials) for how in CLOSES
            }
    for how in CLOSES:
        for system in systems:
            samples = silent[system.name][how]
            rows.append(Row(SILENT.title, how, system.name, samples, system.silence_in_parallel))
    crowd_title = f"{streams} {CROWD.title}"
    for system in systems:
        rows.append(Row(crowd_title, "fin", system.name, crowd(system, demo, streams, "fin")))
    return rows


def main(argv: list[str] | None = None) -> None:
    """Start the provider and both relays, measure, print, save, and stop what we started."""
    parser = argparse.ArgumentParser(prog="python -m bench.stop_latency", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (< 60 s)")
    parser.add_argument("--trials", type=int, help="trials per scenario, close and system")
    parser.add_argument("--crowd", type=int, help="streams open at once in the last scenario")
    args = parser.parse_args(argv)
    trials = args.trials or (5 if args.quick else 100)
    streams = args.crowd or (20 if args.quick else 200)

    started = time.monotonic()
    load_before = os.getloadavg()  # other work on the host skews milliseconds: say so
    demo = servers.Demo()
    relays: list[servers.Gunicorn] = []
    try:
        relays.append(servers.stopwire(demo.url))
        relays.append(servers.baseline(demo.url))
        systems = [
            System("Stopwire", relays[0].url, "/api/chat", stopwire_token),
            System("baseline", relays[1].url, "/chat", openai_token, silence_in_parallel=True),
            no_proxy(demo),
        ]
        for system in systems:
            warm_up(system, demo)
        rows = measure(systems, demo, trials, streams)
    finally:
        for process in [*relays, demo]:
            process.close()

    info = machine()
    print(f"# Stop latency ({'quick' if args.quick else 'full'} run)\n")
    print(f"Machine: {machine_line(info)}")
    load = {"start": load_before, "end": os.getloadavg()}
    print(f"Load average (1, 5, 15 min): {load_line(load['start'])} at start, ", end="")
    print(f"{load_line(load['end'])} at end\n")
    print(table(rows))
    print("\nstop latency: the provider saw its client close, minus the client's close;")
    print(f"p99 is nearest-rank. Run took {time.monotonic() - started:.0f} s.")
    path = save(info, load, rows, args.quick, trials, streams)
    print(f"JSON: {path.relative_to(servers.ROOT)}")


def save(info: dict, load: dict, rows: list[Row], quick: bool, trials: int, streams: int) -> Path:
    """Write everything, raw samples included, to bench/results/stop_latency-<time>.json."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = servers.RESULTS / f"stop_latency-{stamp}.json"
    report = {
        "machine": info,
        "load_average": load,
        "quick": quick,
        "trials": trials,
        "crowd_streams": streams,
        "scenarios": {s.key: asdict(s) for s in (PACED, SILENT, CROWD)},
        "rows": [
            {
                "scenario": r.scenario,
                "close": r.close,
                "system": r.system,
                **r.stats(),
                "samples": [asdict(s) for s in r.samples],
            }
            for r in rows
        ],
    }
    path.write_text(json.dumps(report, indent=2))
    return path


if __name__ == "__main__":
    main()
