"""Both databases for the store's tests: a SQLite file, or a PostgreSQL database of our own.

PostgreSQL is the server on loopback (`STOPWIRE_TEST_POSTGRES`, default the machine's
shared one: trust auth, user postgres). Each test session makes a database with a random
name and drops it at the end; a test that needs an empty schema gets one of its own.
Without a server the PostgreSQL tests skip, except under CI, where they fail.
"""

import contextlib
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_stopwire.store import open_store
from flask_stopwire.store.sql import SqlStore
from tests.store.disk import unavailable

ADMIN_URL = os.environ.get("STOPWIRE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
KINDS = ("sqlite", "postgresql")
TABLES = "conversations, messages, message_versions, rate_limits, running_generations"


def database_url(name: str, admin_url: str = ADMIN_URL) -> str:
    """`admin_url` with its database replaced by `name`."""
    return admin_url.rsplit("/", 1)[0] + "/" + name


def create_database(admin_url: str = ADMIN_URL) -> str:
    """A new, empty database with a random name; its URL."""
    import psycopg

    name = f"stopwire_test_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        unavailable(f"no PostgreSQL at {admin_url}: {exc}")
    return database_url(name, admin_url)


def drop_database(url: str, admin_url: str = ADMIN_URL) -> None:
    """Drop the database at `url`, ending whatever sessions it still has."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Row(tuple):
    """A PostgreSQL row read like a sqlite3.Row: by position or by column name."""

    names: tuple[str, ...] = ()

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self.names.index(key))
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self.names)


def _row_factory(cursor: Any) -> Any:
    names = tuple(column.name for column in cursor.description or ())

    def make(values: Any) -> Row:
        row = Row(values)
        row.names = names
        return row

    return make


class RawPostgres:
    """A second connection that takes `?` parameters, as a raw sqlite3 one does."""

    def __init__(self, url: str):
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True, row_factory=_row_factory)

    def execute(self, sql: str, params: tuple | list = ()) -> Any:
        return self.conn.execute(sql.replace("?", "%s"), params)

    def close(self) -> None:
        self.conn.close()


class Database:
    """One database of either kind: stores on it, and raw connections to inspect it."""

    def __init__(self, kind: str, url: str):
        self.kind = kind
        self.url = url
        self._stores: list[SqlStore] = []
        self._raws: list[Any] = []

    def store(self) -> SqlStore:
        """A new store on this database: another worker, or another host."""
        store = open_store(self.url)
        self._stores.append(store)
        return store

    def raw(self) -> Any:
        """A connection beside the stores', to inspect (or age) what they wrote."""
        if self.kind == "sqlite":
            db = sqlite3.connect(self.url, isolation_level=None)
            db.row_factory = sqlite3.Row
        else:
            db = RawPostgres(self.url)
        self._raws.append(db)
        return db

    def execute(self, sql: str, params: tuple | list = ()) -> list[Any]:
        """Run one statement on a raw connection; its rows (none for a write)."""
        cursor = self.raw().execute(sql, params)
        return cursor.fetchall() if cursor.description else []

    def close(self) -> None:
        for store in self._stores:
            store.close()
        for db in self._raws:
            db.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """This session's PostgreSQL database, migrated; dropped at the end."""
    url = create_database()
    migrated = open_store(url)
    migrated.list_conversations("", 1)
    migrated.close()
    yield url
    drop_database(url)


@pytest.fixture
def empty_postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own, with no schema yet."""
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture(params=KINDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """The test's database, SQLite and then PostgreSQL, empty either way."""
    if request.param == "sqlite":
        database = Database("sqlite", str(tmp_path / "stopwire.sqlite3"))
    else:
        database = Database("postgresql", request.getfixturevalue("postgres_url"))
        database.execute(f"TRUNCATE {TABLES}")
    yield database
    database.close()


class Cluster:
    """A PostgreSQL server of our own on a free port, to stop and start at will.

    Never the shared server: restarting that would break every other test using it.
    initdb refuses root, so as root the cluster runs as the `postgres` user.
    """

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            unavailable("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
        self.bin = found[-1].parent
        # Its own directory in /tmp, since pytest's tmp_path is closed to other users.
        self.root = Path(tempfile.mkdtemp(prefix="stopwire-pg-"))
        self.data = self.root / "pgdata"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def start(self) -> None:
        """Start the server and wait until it takes connections."""
        self._pg(
            "pg_ctl", "-D", str(self.data), "-w", "-l", str(self.root / "server.log"),
            "-o", f"-p {self.port} -k {self.data} -h 127.0.0.1 -F", "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop it at once: open sessions are cut, as by a crash or a failover."""
        self._pg("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")

    def close(self) -> None:
        """Stop the server (if it runs) and delete its files."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _pg(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(
                done.returncode, command, done.stdout, f"{done.stderr}"
            )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
