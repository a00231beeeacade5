"""Stops that are not a single client leaving: an explicit stop request, and a mass abort.

Explicit stop (2 workers): a stream is opened on a keep-alive connection whose worker
is known (`GET /api/debug/stats` on it first), and `POST /api/generations/<id>/stop` is sent
on a connection pinned to the same worker or to the other one. Latency = the provider's
`client_closed_at` minus the moment just before the stop request was sent.

Mass abort (1 worker): many streams open at once, every client closes at the same
moment; the time until the provider saw the last of them go, the worker's resident
memory per open stream, and what the worker holds before and after (`/api/debug/stats`).
"""

import json
import socket
import time
import uuid
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPException
from urllib.parse import urlsplit

import requests

from bench import servers
from bench.client import BENCH_KEY, Stream, get_json
from bench.relay_cost import rss_bytes
from bench.stop_latency import BATCH_POLL_S, POLL_S, Sample, System, new_marker, wait_ended

Pinned = HTTPConnection  # a keep-alive connection known to sit on one worker
EXPLICIT = "[demo ttft=0.02 tokens=400 gap=0.02]"
ABORT = "[demo ttft=0.02 tokens=1000 gap=0.5]"  # slow, so 1,000 streams cost the demo little
PACED_ABORT = "[demo ttft=0.02 tokens=1000 gap=0.02]"  # issue #14: tokens flowing when they go
SETTLE_S = 1.0  # after an abort, let the worker finish its bookkeeping before we count
WARM_ABORT = 20
NEVER_CLOSED_S = 60.0  # a provider stream still open this long after its client left: never
ABORT_WARM_S = 2.0  # four token gaps: every stream has started and sent a token
READ_TIMEOUT_S = 10.0


# -- explicit stop -----------------------------------------------------------------------


def get_pid(conn: HTTPConnection) -> int:
    """The worker behind a keep-alive connection."""
    conn.request("GET", "/api/debug/stats")
    return json.loads(conn.getresponse().read())["pid"]


def pinned(url: str, pids: set[int], batch: int = 16, rounds: int = 20) -> dict[int, Pinned]:
    """A keep-alive connection to each worker in `pids`.

    Connections opened one after another mostly land on the same worker; a batch held
    open at once spreads over both, so we open batches and keep one per worker.
    """
    parts = urlsplit(url)
    found: dict[int, Pinned] = {}
    for _ in range(rounds):
        conns = [HTTPConnection(parts.hostname, parts.port, timeout=10) for _ in range(batch)]
        for conn in conns:
            conn.connect()
        for conn in conns:
            pid = get_pid(conn)
            if pid in pids and pid not in found:
                found[pid] = conn
            else:
                conn.close()
        if set(found) == pids:
            return found
    raise RuntimeError(f"reached only workers {set(found)} of {pids}")


def still_on(conn: Pinned, pid: int) -> bool:
    """Whether the connection is open and still served by `pid`."""
    try:
        return get_pid(conn) == pid
    except (HTTPException, OSError):
        return False


def worker_pids(url: str, workers: int) -> set[int]:
    """The pids of all workers, from a batch of connections held open at once."""
    parts = urlsplit(url)
    for _ in range(20):
        conns = [HTTPConnection(parts.hostname, parts.port, timeout=10) for _ in range(16)]
        for conn in conns:
            conn.connect()
        pids = {get_pid(conn) for conn in conns}
        for conn in conns:
            conn.close()
        if len(pids) == workers:
            return pids
    raise RuntimeError(f"saw only workers {pids}")


def explicit_stops(url: str, demo: servers.Demo, trials: int) -> dict[str, list[Sample]]:
    """`trials` stop requests landing on the stream's own worker and as many on the other."""
    pids = worker_pids(url, 2)
    conns = pinned(url, pids)
    samples: dict[str, list[Sample]] = {"same worker": [], "other worker": []}
    demo.clear()
    try:
        for i in range(trials * 2):
            where = "same worker" if i % 2 == 0 else "other worker"
            samples[where].append(one_stop(url, demo, conns, where))
    finally:
        for conn in conns.values():
            conn.close()
    return samples


def one_stop(url: str, demo: servers.Demo, conns: dict[int, Pinned], where: str) -> Sample:
    """Open a stream, read a few tokens, stop it by request, read the provider's record."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    holder = get_json(sock, parts.netloc, "/api/debug/stats")["pid"]
    marker = new_marker()
    stream = Stream(url, "/api/chat", {"content": f"{marker} {EXPLICIT}"}, sock=sock)
    meta = stream.read_meta()
    stream.read_frames(3, lambda frame: b"event: token" in frame)
    stopper = holder if where == "same worker" else next(p for p in conns if p != holder)
    if not still_on(conns[stopper], stopper):  # it idled out, or reconnected elsewhere
        for conn in conns.values():
            conn.close()
        conns.update(pinned(url, set(conns)))
    stopped_at = time.monotonic()
    conns[stopper].request(
        "POST",
        f"/api/generations/{meta['generation_id']}/stop",
        body=b"{}",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"},
    )
    conns[stopper].getresponse().read()
    stream.close("fin")
    record = wait_ended(demo, {marker}, timeout=20.0, poll_s=POLL_S)[marker]
    closed = record["client_closed_at"]
    latency = None if closed is None else (closed - stopped_at) * 1000
    return Sample(latency, sum(t > stopped_at for t in record["token_times"]), record["ended"])


# -- mass abort --------------------------------------------------------------------------


@dataclass
class Abort:
    """One mass abort: per-stream latencies, time to the last close, memory and leaks."""

    system: str
    streams: int
    samples: list[Sample]
    all_closed_ms: float | None
    rss_per_stream_kib: float | None
    before: dict | None  # /api/debug/stats before the streams opened, None for the baseline
    after: dict | None

    def leaks(self) -> dict | None:
        """What the worker holds after the abort minus before it (0 everywhere = no leak)."""
        if self.before is None or self.after is None:
            return None
        keys = ("open_fds", "greenlets", "live_generations")
        return {k: self.after[k] - self.before[k] for k in keys}


def health(url: str) -> dict:
    """The worker's /api/debug/stats over a fresh connection (closed at once)."""
    return requests.get(
        f"{url}/api/debug/stats", timeout=10, headers={"Connection": "close"}
    ).json()


def settled(url: str, timeout: float = 10.0) -> dict:
    """The stats once two readings SETTLE_S apart agree: finished streams may still be saving."""
    previous = health(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(SETTLE_S)
        current = health(url)
        if current == previous and current["live_generations"] == 0:
            break
        previous = current
    return previous


def mass_abort(
    system: System,
    demo: servers.Demo,
    streams: int,
    pid: int | None,
    stats: bool,
    directive: str = ABORT,
) -> Abort:
    """Open `streams` streams, read a token from each, close them all at once, then count.

    `pid`: the relay's worker, whose memory is read; None for no proxy.

    A small abort goes first: it empties the provider connection pool that earlier
    sections filled, so "before" and "after" compare like with like.
    """
    if stats:
        abort_all(system, demo, WARM_ABORT, left_open_is_a_result=False)
        before = settled(system.url)
    else:
        before = None
    rss_before = rss_bytes(pid) if pid else 0
    closed, records, rss_open = abort_all(system, demo, streams, pid, directive)
    samples = [sample_of(records[m], closed[m]) for m in closed]
    ends = [r["client_closed_at"] for r in records.values()]
    all_closed = None if None in ends else (max(ends) - min(closed.values())) * 1000
    after = settled(system.url) if stats else None
    per_stream = (rss_open - rss_before) / streams / 1024 if pid else None
    return Abort(system.name, streams, samples, all_closed, per_stream, before, after)


def abort_all(
    system: System,
    demo: servers.Demo,
    streams: int,
    pid: int | None = None,
    directive: str = ABORT,
    left_open_is_a_result: bool = True,
) -> tuple[dict[str, float], dict[str, dict], int]:
    """Open, read a token from each, close all: close moments, provider records, open RSS.

    Provider streams the relay has not closed `NEVER_CLOSED_S` after their clients left
    are reported and counted (their latency None), or, when they would spoil what comes
    next (`left_open_is_a_result` False: the warm-up of a leak count), stop the run."""
    demo.clear()
    markers = [f"bench-{uuid.uuid4().hex[:16]}" for _ in range(streams)]
    opened = [system.open(f"{marker} {directive}") for marker in markers]
    time.sleep(ABORT_WARM_S)  # every stream has started: reading them adds no waits
    late = 0
    for stream in opened:
        stream.sock.settimeout(READ_TIMEOUT_S)
        try:
            stream.read_frames(1, system.is_token)
        except (TimeoutError, EOFError):
            late += 1  # closed with the others; counted so the table can say so
    if late:
        print(f"{system.name}: {late} of {streams} streams had no token after the warm-up")
    rss_open = rss_bytes(pid) if pid else 0
    closed = {marker: stream.close("fin") for marker, stream in zip(markers, opened, strict=True)}
    try:
        records = wait_ended(
            demo,
            set(closed),
            NEVER_CLOSED_S,
            BATCH_POLL_S,
            left_open_is_a_result=left_open_is_a_result,
        )
    except TimeoutError as exc:
        raise TimeoutError(f"{system.name}, {streams} streams closed at once: {exc}") from None
    never = sum(r["client_closed_at"] is None for r in records.values())  # as the table counts
    if never:
        print(
            f"{system.name}: {never} of {streams} provider streams never saw their client leave "
            f"(still open {NEVER_CLOSED_S:.0f} s after, or ended on their own)"
        )
    return closed, records, rss_open


def sample_of(record: dict, closed_at: float) -> Sample:
    """Latency and wasted tokens of one aborted stream."""
    closed = record["client_closed_at"]
    latency = None if closed is None else (closed - closed_at) * 1000
    return Sample(latency, sum(t > closed_at for t in record["token_times"]), record["ended"])
