"""What SQLAlchemy Core would cost the store, per new chat (issue #12's question).

    .venv/bin/pip install -q -e '.[bench]' && .venv/bin/python -m bench.sql_layer [--turns N]

The write a new chat makes (`begin_turn`: a conversation, the question, the empty answer,
then its messages read back) is run `--turns` times on each
database two ways, alternating blocks: through Stopwire's store (`store/sql.py`, the
drivers' own connections: sqlite3, psycopg 3) and as the same statements through
SQLAlchemy Core (`engine.begin()`, `text()` with bound parameters, its connection pool).
Both run the same SQL on the same schema, in one process without gevent, so the
difference is the layer's own cost per turn. Prints a markdown table.
"""

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import sqlalchemy
from sqlalchemy import text

from flask_stopwire.store.postgres import PostgresStore
from flask_stopwire.store.sql import new_id, now_iso
from flask_stopwire.store.sqlite import SqliteStore

ADMIN_URL = os.environ.get("STOPWIRE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

USER = "user:bench"
LIVE = {"generation_id": "", "owner": "worker_bench", "model": "m"}
BLOCK = 100  # turns per block; the two ways alternate block by block

SQL = [
    "INSERT INTO conversations (id, user_id, title, created_at, updated_at) "
    "VALUES (:cid, :user, :title, :stamp, :stamp)",
    "INSERT INTO messages (id, conversation_id, seq, role, content, status, model, "
    "generation_id, owner, heartbeat_at, created_at, updated_at) VALUES (:qid, :cid, "
    "(SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE conversation_id = :cid), "
    "'user', :content, 'complete', NULL, NULL, NULL, NULL, :stamp, :stamp)",
    "INSERT INTO messages (id, conversation_id, seq, role, content, status, model, "
    "generation_id, owner, heartbeat_at, created_at, updated_at) VALUES (:aid, :cid, "
    "(SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE conversation_id = :cid), "
    "'assistant', '', 'streaming', 'm', :gid, 'worker_bench', :beat, :stamp, :stamp)",
]
READ_BACK = (
    "SELECT id, conversation_id, role, content, status, reason, model, usage, receipt, "
    "generation_id, created_at, updated_at FROM messages WHERE conversation_id = :cid "
    "ORDER BY seq"
)


def stopwire_turn(store) -> Callable[[], object]:
    def turn() -> object:
        return store.begin_turn(
            USER, None, "How do stop buttons work?", {**LIVE, "generation_id": new_id("gen")}
        )

    return turn


def sqlalchemy_turn(engine: sqlalchemy.Engine) -> Callable[[], object]:
    statements = [text(sql) for sql in SQL]
    read_back = text(READ_BACK)

    def turn() -> object:
        cid = new_id("conv")
        params = {
            "cid": cid,
            "user": USER,
            "title": "How do stop buttons work?",
            "stamp": now_iso(),
            "qid": new_id("msg"),
            "aid": new_id("msg"),
            "content": "How do stop buttons work?",
            "gid": new_id("gen"),
            "beat": time.time(),
        }
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(statement, params)
            return conn.execute(read_back, {"cid": cid}).mappings().all()

    return turn


def measure(ways: dict[str, Callable[[], object]], turns: int) -> dict[str, list[float]]:
    """µs per turn of each way, block by block, alternating."""
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for way in ways.values():  # warm up: connections, statement caches
        for _ in range(20):
            way()
    for _ in range(turns // BLOCK):
        for name, way in ways.items():
            started = time.perf_counter()
            for _ in range(BLOCK):
                way()
            samples[name].append((time.perf_counter() - started) / BLOCK * 1e6)
    return samples


def sqlite_ways(directory: Path) -> tuple[dict[str, Callable[[], object]], Callable[[], None]]:
    store = SqliteStore(str(directory / "stopwire.sqlite3"))
    store.list_conversations(USER, 1)  # migrates the schema
    engine = sqlalchemy.create_engine(f"sqlite:///{directory / 'stopwire.sqlite3'}")

    @sqlalchemy.event.listens_for(engine, "connect")
    def same_pragmas(db, _record) -> None:  # as the store's connection on the loop
        for pragma in ("synchronous = NORMAL", "foreign_keys = ON", "wal_autocheckpoint = 0"):
            db.execute(f"PRAGMA {pragma}")

    def close() -> None:
        store.close()
        engine.dispose()

    ways = {"Stopwire store": stopwire_turn(store), "SQLAlchemy Core": sqlalchemy_turn(engine)}
    return ways, close


def scratch_database(command: str, name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"{command} DATABASE {name}")


def postgres_ways() -> tuple[dict[str, Callable[[], object]], Callable[[], None]]:
    name = f"stopwire_bench_{os.getpid()}"
    scratch_database("CREATE", name)
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    store = PostgresStore(url)
    store.list_conversations(USER, 1)  # migrates the schema
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))

    def close() -> None:
        store.close()
        engine.dispose()
        scratch_database("DROP", name)

    ways = {"Stopwire store": stopwire_turn(store), "SQLAlchemy Core": sqlalchemy_turn(engine)}
    return ways, close


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=2000, help="turns per way and database")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for database, make in (
            ("SQLite", lambda: sqlite_ways(Path(scratch))),
            ("PostgreSQL", postgres_ways),
        ):
            ways, close = make()
            try:
                samples = measure(ways, args.turns)
            finally:
                close()
            for name, values in samples.items():
                rows.append((database, name, statistics.median(values), min(values)))
    print(f"SQLAlchemy {sqlalchemy.__version__}; {args.turns} turns per way, blocks of {BLOCK}")
    print("| database | layer | µs per new chat (median of blocks) | best block |")
    print("|---|---|--:|--:|")
    for database, name, median, best in rows:
        print(f"| {database} | {name} | {median:.0f} | {best:.0f} |")


if __name__ == "__main__":
    main()
