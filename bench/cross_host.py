"""Stop on another host (issue #12): stop request on host B → provider closed for an answer
streaming on host A, next to the same-host stop, idle and under load, in one run.

    .venv/bin/python -m bench.cross_host [--trials 200] [--load 200] [--load-gap 0.2]
                                         [--redis-url redis://127.0.0.1:6379/0]

Two "hosts" are two gunicorn masters (one gevent worker each, their own run directories,
so only Redis connects them), one database file, one Redis, the demo provider. Each
trial opens a stream on A, reads three tokens, and sends `POST .../stop` on a keep-alive
connection to A (same host) or to B (cross host), alternating.

- latency = the provider's `client_closed_at` minus `time.monotonic()` just before the
  stop request was sent (both CLOCK_MONOTONIC on this machine);
- "under load": `--load` more streams live on each host, read and discarded by a thread,
  at `--load-gap` seconds per token.

Prints a markdown table and writes JSON to bench/results/cross_host.json.
"""

import argparse
import json
import os
import selectors
import socket
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.client import HTTPConnection
from urllib.parse import urlsplit

from bench import servers
from bench.client import BENCH_KEY, Stream
from bench.stop_latency import (
    Row,
    Sample,
    load_line,
    machine,
    machine_line,
    new_marker,
    table,
    wait_ended,
)

TRIAL = "[demo ttft=0.02 tokens=400 gap=0.02]"
WARM = 20  # stops of each kind before measuring: pools, imports, Redis connections
GOALS_MS = {"idle": 5.0, "loaded": 25.0}  # cross-host p99


def host(name: str, provider_url: str, redis_url: str, database: str) -> servers.Gunicorn:
    """One "host": gunicorn with one gevent worker and its own run directory."""
    port = servers.free_port()
    env = {
        "STOPWIRE_BIND": f"127.0.0.1:{port}",
        "STOPWIRE_WORKERS": "1",
        "STOPWIRE_PROVIDER_URL": provider_url,
        "STOPWIRE_DATABASE": database,
        "STOPWIRE_REDIS_URL": redis_url,
        "STOPWIRE_DEBUG_STATS": "1",
        "STOPWIRE_CLIENT_KEYS": f"bench:{BENCH_KEY}",
        "STOPWIRE_MAX_ACTIVE_PER_USER": "0",
    }
    return servers.Gunicorn(name, ["-c", "gunicorn.conf.py"], env, port)


class Discard(threading.Thread):
    """Reads every background stream and drops what it reads, so none of them stalls."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.selector = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.running = True
        self.broken = 0  # background streams that ended early: the run says so

    def add(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        with self.lock:
            self.selector.register(sock, selectors.EVENT_READ)

    def run(self) -> None:
        while self.running:
            with self.lock:
                ready = self.selector.select(timeout=0.05) if self.selector.get_map() else []
            if not ready:
                time.sleep(0.01)
            for key, _ in ready:
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    self.broken += 1
                    with self.lock:
                        self.selector.unregister(key.fileobj)

    def close(self) -> None:
        self.running = False
        self.join(2)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()


def load(urls: list[str], streams: int, gap: float, discard: Discard) -> None:
    """`streams` endless streams on each host, handed to the discarding reader."""
    body = f"[demo ttft=0.02 tokens=100000 gap={gap}]"
    for url in urls:
        for _ in range(streams):
            stream = Stream(url, "/api/chat", {"content": f"{new_marker()} load {body}"})
            discard.add(stream.sock)


def stop_on(conn: HTTPConnection, generation_id: str) -> dict:
    """POST the stop on a keep-alive connection; the JSON answer."""
    conn.request(
        "POST",
        f"/api/generations/{generation_id}/stop",
        body=b"{}",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"},
    )
    response = conn.getresponse()
    answer = json.loads(response.read())
    if response.status != 200 or answer.get("status") != "stopped":
        raise RuntimeError(f"stop answered {response.status}: {answer}")
    return answer


def trials(
    a_url: str, stoppers: dict[str, HTTPConnection], demo: servers.Demo, count: int
) -> dict[str, list[Sample]]:
    """`count` stops of each kind, alternating; latencies from the provider's records."""
    stopped: dict[str, list[tuple[str, float]]] = {kind: [] for kind in stoppers}
    for i in range(count * len(stoppers)):
        kind = list(stoppers)[i % len(stoppers)]
        marker = new_marker()
        stream = Stream(a_url, "/api/chat", {"content": f"{marker} {TRIAL}"})
        generation_id = stream.read_meta()["generation_id"]
        stream.read_frames(3, lambda frame: b"event: token" in frame)
        at = time.monotonic()
        stop_on(stoppers[kind], generation_id)
        stream.close("fin")
        stopped[kind].append((marker, at))
    samples: dict[str, list[Sample]] = {}
    for kind, pairs in stopped.items():
        records = wait_ended(demo, {m for m, _ in pairs}, timeout=30.0, poll_s=0.25)
        samples[kind] = [_sample(records[m], at) for m, at in pairs]
    return samples


def _sample(record: dict, at: float) -> Sample:
    closed = record["client_closed_at"]
    latency = None if closed is None else (closed - at) * 1000
    return Sample(latency, sum(t > at for t in record["token_times"]), record["ended"])


def connect(url: str) -> HTTPConnection:
    """A keep-alive connection to a one-worker host."""
    parts = urlsplit(url)
    conn = HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.connect()
    return conn


def main(argv: list[str] | None = None) -> None:
    """Run both scenarios and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="stops of each kind per row")
    parser.add_argument("--load", type=int, default=200, help="live streams per host")
    parser.add_argument("--load-gap", type=float, default=0.2, help="seconds per load token")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)

    scratch = tempfile.mkdtemp(prefix="stopwire-cross-host-")
    database = os.path.join(scratch, "stopwire.sqlite3")
    demo = servers.Demo()
    a = host("cross-host-a", demo.url, args.redis_url, database)
    b = host("cross-host-b", demo.url, args.redis_url, database)
    discard = Discard()
    discard.start()
    rows: list[Row] = []
    loads = {}
    try:
        stoppers = {"same host": connect(a.url), "other host": connect(b.url)}
        demo.clear()
        trials(a.url, stoppers, demo, WARM)
        for scenario in ("idle", "loaded"):
            if scenario == "loaded":
                load([a.url, b.url], args.load, args.load_gap, discard)
                time.sleep(2.0)  # every load stream has started
            demo.clear()
            title = "idle" if scenario == "idle" else f"{args.load} streams/host"
            for kind, samples in trials(a.url, stoppers, demo, args.trials).items():
                rows.append(Row(title, "request", kind, samples))
            loads[scenario] = os.getloadavg()
        for conn in stoppers.values():
            conn.close()
    finally:
        discard.close()
        b.close()
        a.close()
        demo.close()
    info = machine()
    print(f"\n{machine_line(info)}; redis {args.redis_url}")
    print(f"load average: idle {load_line(loads['idle'])}, loaded {load_line(loads['loaded'])}")
    print(f"load: {args.load} streams per host, {args.load_gap * 1000:.0f} ms per token")
    if discard.broken:
        print(f"{discard.broken} background streams ended early")
    print()
    print(table(rows))
    for row, scenario in ((rows[1], "idle"), (rows[3], "loaded")):
        p99 = row.stats()["p99_ms"]
        verdict = "met" if p99 is not None and p99 <= GOALS_MS[scenario] else "NOT met"
        print(f"goal cross-host p99 <= {GOALS_MS[scenario]:.0f} ms {scenario}: {verdict}")
    out = servers.RESULTS / "cross_host.json"
    out.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(),
                "machine": info,
                "args": vars(args),
                "load_average": loads,
                "rows": [{"scenario": r.scenario, "where": r.system, **r.stats()} for r in rows],
            },
            indent=2,
        )
    )
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
