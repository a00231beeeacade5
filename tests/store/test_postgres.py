"""What only the PostgreSQL store has to get right: migrations racing from many workers
and hosts, a cooperative driver under gevent, forks, and a server that restarts.

Everything else it shares with SQLite is tested on both in tests/test_store.py.
"""

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from flask_stopwire.store import migrations
from flask_stopwire.store.postgres import PostgresStore
from tests.store.databases import Cluster, RawPostgres, empty_postgres_url, postgres_url

__all__ = ["empty_postgres_url", "postgres_url"]  # fixtures

USER = "key:t"
LIVE = {"generation_id": "gen_1", "owner": "worker_a", "model": "demo"}
WORKERS = 4


def versions(url: str) -> list[int]:
    raw = RawPostgres(url)
    try:
        return [r[0] for r in raw.execute("SELECT version FROM schema_version ORDER BY version")]
    finally:
        raw.close()


def test_migrations_racing_from_four_workers_run_once(empty_postgres_url):
    # Four workers (two per host, say) start on an empty database at the same instant.
    # Unlocked, they all find version 0 and all create the tables: all but one fail.
    stores = [PostgresStore(empty_postgres_url) for _ in range(WORKERS)]
    start = threading.Barrier(WORKERS)
    errors: list[BaseException] = []

    def boot(store: PostgresStore) -> None:
        start.wait()
        try:
            store.list_conversations(USER, 1)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=boot, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert versions(empty_postgres_url) == list(range(1, len(migrations.MIGRATIONS) + 1))
    ids = stores[0].begin_turn(USER, None, "Hi", LIVE)
    assert stores[3].get_conversation(USER, ids["conversation_id"])["title"] == "Hi"
    for store in stores:
        store.close()


def test_a_failing_migration_is_rolled_back_whole(empty_postgres_url, monkeypatch):
    broken = "CREATE TABLE half (x INTEGER); INSERT INTO no_such_table VALUES (1)"
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, broken])
    store = PostgresStore(empty_postgres_url)
    with pytest.raises(psycopg.errors.UndefinedTable, match="no_such_table"):
        store.list_conversations(USER, 1)
    assert versions(empty_postgres_url) == list(range(1, len(migrations.MIGRATIONS)))
    raw = RawPostgres(empty_postgres_url)
    assert raw.execute("SELECT to_regclass('half')").fetchone()[0] is None
    raw.close()
    monkeypatch.undo()
    assert store.list_conversations(USER, 1) == []  # the next call migrates what is left


def test_the_schema_keeps_epoch_seconds_and_orders_ids_bytewise(postgres_url):
    raw = RawPostgres(postgres_url)
    columns = dict(
        raw.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'messages'"
        ).fetchall()
    )
    assert columns["heartbeat_at"] == "double precision"  # REAL would be 4 bytes
    collation = raw.execute(
        "SELECT collation_name FROM information_schema.columns "
        "WHERE table_name = 'conversations' AND column_name = 'id'"
    ).fetchone()[0]
    assert collation == "C"
    raw.close()


COOPERATIVE = """
import sys, time
{before}
from gevent import monkey
monkey.patch_all()
import gevent
from flask_stopwire.store.postgres import PostgresStore

store = PostgresStore(sys.argv[1])
try:
    store.list_conversations("", 1)
except RuntimeError as exc:
    print("refused:", exc)
    raise SystemExit(0)
ticks = []

def tick():
    while True:
        ticks.append(time.monotonic())
        gevent.sleep(0.05)

ticker = gevent.spawn(tick)
started = time.monotonic()
gevent.joinall([
    gevent.spawn(store._run, lambda db: db.execute("SELECT pg_sleep(0.4)")) for _ in range(5)
])
print("took", time.monotonic() - started, "ticks", len(ticks))
"""


def run_script(before: str, url: str) -> str:
    script = textwrap.dedent(COOPERATIVE.format(before=before))
    done = subprocess.run(
        [sys.executable, "-c", script, url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_queries_wait_cooperatively_in_a_patched_worker(postgres_url):
    # Five queries of 0.4 s on one worker: concurrent (about 0.4 s in all) and the
    # event loop runs meanwhile (a ticker every 50 ms); blocking, 2 s with no ticks.
    out = run_script("", postgres_url)
    took, ticks = float(out.split()[1]), int(out.split()[3])
    assert took < 1.2, out
    assert ticks >= 6, out


def test_psycopg_imported_before_patching_is_refused_at_first_use(postgres_url):
    out = run_script("import psycopg", postgres_url)
    assert out.startswith("refused: psycopg was imported before gevent patched"), out


def test_a_forked_worker_opens_its_own_connections(postgres_url):
    # --preload: the master may have used the store before forking. The child must not
    # use, nor close, the master's connection (closing would end the master's session).
    store = PostgresStore(postgres_url)
    store.list_conversations(USER, 1)
    parent_conn = store._idle[0]
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            store.begin_turn(USER, None, "from the child", LIVE)
            code = 0 if parent_conn not in store._idle else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store._idle == [parent_conn]
    assert [c["title"] for c in store.list_conversations(USER, 5)] == ["from the child"]
    store.close()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    server = Cluster()
    yield server
    server.close()


def test_the_store_comes_back_after_the_server_restarts(cluster):
    store = PostgresStore(cluster.url)
    ids = store.begin_turn(USER, None, "Hi", LIVE)
    cluster.stop()
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        store.heartbeat([ids["message_id"]], [(ids["message_id"], "Hel")], 60)
    assert time.monotonic() - started < 5  # refused at once, not hung
    cluster.start()
    assert store.heartbeat([ids["message_id"]], [(ids["message_id"], "Hello")], 60) == 0
    answer = store.get_conversation(USER, ids["conversation_id"])["messages"][1]
    assert (answer["content"], answer["status"]) == ("Hello", "streaming")
    store.close()


def test_a_postgresql_url_selects_the_store_without_importing_psycopg(postgres_url):
    # --preload: the app is built in gunicorn's master, before gevent patches anything.
    script = textwrap.dedent("""
        import sys
        from flask import Flask
        from flask_stopwire import Stopwire, get_stopwire
        app = Flask(__name__)
        app.config.update(STOPWIRE_DATABASE=sys.argv[1], STOPWIRE_PROVIDER_URL="http://127.0.0.1:9/v1")
        Stopwire(app)
        print(type(get_stopwire(app).store).__name__, "psycopg" in sys.modules)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script, postgres_url], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["PostgresStore", "False"], done.stderr
