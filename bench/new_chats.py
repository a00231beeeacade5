"""200 new chats at once, on SQLite and on PostgreSQL: time to first token, p50/p99.

Each new chat writes a conversation, the user's message and an empty answer before the
provider is called, so a slower store shows as a later first token. Also the cost of
one store call of each kind (in this process, no HTTP), which is what the relay pays.

    .venv/bin/python -m bench.new_chats [--chats 200] [--rounds 3]

PostgreSQL is `STOPWIRE_BENCH_POSTGRES` (default: the server on 127.0.0.1:5432, user
postgres); the benchmark makes a database of its own there and drops it after.
"""

import argparse
import json
import os
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bench.client import Stream
from bench.servers import RESULTS, Demo, stopwire
from flask_stopwire.store import open_store

ADMIN_URL = os.environ.get("STOPWIRE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
PROMPT = "[demo ttft=0.05 tokens=20 gap=0.02]"  # 50 ms to the first token at the provider


@contextmanager
def database(kind: str) -> Iterator[str]:
    """A fresh database of `kind`: its STOPWIRE_DATABASE value, removed afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="stopwire-bench-") as scratch:
            yield os.path.join(scratch, "stopwire.sqlite3")
        return
    import psycopg

    name = f"stopwire_bench_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def burst(url: str, chats: int) -> tuple[list[float], int]:
    """`chats` new chats sent at the same instant; their times to first token (s), errors."""
    start = threading.Barrier(chats)
    ttfts: list[float] = []
    errors = [0]

    def chat(n: int) -> None:
        start.wait()
        began = time.monotonic()
        try:
            stream = Stream(url, "/api/chat", {"content": f"chat {n} {PROMPT}"})
            stream.read_frames(1, lambda frame: b"event: token" in frame)
            ttfts.append(time.monotonic() - began)
            stream.read_to_end()
            stream.close("fin")
        except Exception:
            errors[0] += 1

    threads = [threading.Thread(target=chat, args=(n,)) for n in range(chats)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ttfts, errors[0]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def store_costs(url: str, calls: int = 300) -> dict[str, float]:
    """Median microseconds of one begin_turn, heartbeat (5 answers) and finish_answer."""
    store = open_store(url)
    live = {"generation_id": "", "owner": "worker_bench", "model": "demo"}
    store.list_conversations("", 1)  # connect and migrate outside the timing
    timings: dict[str, list[float]] = {"begin_turn": [], "heartbeat": [], "finish_answer": []}

    def timed(name: str, call: Callable[[], object]) -> object:
        began = time.perf_counter()
        value = call()
        timings[name].append((time.perf_counter() - began) * 1e6)
        return value

    for n in range(calls):
        turn = timed(
            "begin_turn",
            lambda n=n: store.begin_turn(
                "key:bench", None, "hi", {**live, "generation_id": f"g{n}"}
            ),
        )
        answer = turn["message_id"]
        texts = [(answer, "Some partial text " * 20)] * 5
        timed("heartbeat", lambda a=answer, t=texts: store.heartbeat([a] * 5, t, 60))
        final = {"content": "Done.", "status": "complete", "reason": None, "usage": None}
        timed("finish_answer", lambda a=answer, f=final: store.finish_answer(a, f))
    store.close()
    return {name: statistics.median(values) for name, values in timings.items()}


def main(argv: list[str] | None = None) -> None:
    """Run both databases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    demo = Demo()
    results: dict[str, dict] = {}
    try:
        for kind in ("sqlite", "postgresql"):
            with database(kind) as url:
                server = stopwire(
                    demo.url, workers=args.workers, DATABASE=url, WORKER_CONNECTIONS="2000"
                )
                try:
                    burst(server.url, 10)  # warm: connections, migrations, imports
                    ttfts: list[float] = []
                    errors = 0
                    for _ in range(args.rounds):
                        demo.clear()
                        got, failed = burst(server.url, args.chats)
                        ttfts += got
                        errors += failed
                finally:
                    server.close()
                results[kind] = {
                    "chats": len(ttfts) + errors,
                    "errors": errors,
                    "ttft_p50_ms": 1000 * percentile(ttfts, 0.5),
                    "ttft_p99_ms": 1000 * percentile(ttfts, 0.99),
                    "ttft_max_ms": 1000 * max(ttfts),
                    "store_us": store_costs(url),
                }
    finally:
        demo.close()
    (RESULTS / "new_chats.json").write_text(json.dumps(results, indent=2))
    print(table(results, args))


def table(results: dict[str, dict], args: argparse.Namespace) -> str:
    """The printed table: first tokens, then the store's own cost per call."""
    lines = [
        f"{args.chats} new chats at once x {args.rounds} rounds, {args.workers} gevent workers, "
        "demo provider 50 ms to its first token",
        "",
        "| database | chats | errors | TTFT p50 | TTFT p99 | max | begin_turn | heartbeat (5) "
        "| finish_answer |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for kind, r in results.items():
        us = r["store_us"]
        lines.append(
            f"| {kind} | {r['chats']} | {r['errors']} | {r['ttft_p50_ms']:.0f} ms "
            f"| {r['ttft_p99_ms']:.0f} ms | {r['ttft_max_ms']:.0f} ms "
            f"| {us['begin_turn']:.0f} µs | {us['heartbeat']:.0f} µs "
            f"| {us['finish_answer']:.0f} µs |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
