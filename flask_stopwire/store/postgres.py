"""The store on PostgreSQL, for many hosts: `STOPWIRE_DATABASE=postgresql://...`.

The SQL is `sql.py`'s, unchanged but for its dialect. Calls run on the calling
greenlet: psycopg 3 waits for the server through its `waiting.wait`, which is
cooperative only if psycopg was imported after gevent patched `select` (it chooses at
import; imported before, every query freezes the whole worker). So psycopg is imported
here at first use, in the worker, and the first connection checks the choice.

Each worker keeps its own few connections (`POOL_SIZE`), made after the fork: the pid
is checked on every call, as `SqliteStore` does, so `--preload` shares none. A
connection that broke (the server restarted) is dropped and the next call opens a new
one; the Recorder already retries flushes and final saves, so streams go on.
"""

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from flask_stopwire.store.migrations import migrate
from flask_stopwire.store.sql import POSTGRES, Dialect, SqlStore

POOL_SIZE = 8  # connections per worker; a call waits for a free one
CONNECT_TIMEOUT_S = 5


class PostgresStore(SqlStore):
    """The store interface, on PostgreSQL; every public method is safe to call from any greenlet."""

    def __init__(self, url: str, pool_size: int = POOL_SIZE):
        self.url = url
        self.pool_size = pool_size
        self._pid: int | None = None
        self._idle: list[Any] = []
        self._slots: threading.BoundedSemaphore | None = None
        self._migrated = False
        # Connections a parent process made: never closed here, since closing one would
        # end the parent's session on the socket both share; only forgotten.
        self._inherited: list[Any] = []

    def close(self) -> None:
        """Close this process's idle connections (calls still running keep theirs)."""
        if self._pid != os.getpid():
            return
        while self._idle:
            self._idle.pop().close()

    def open_connections(self) -> int:
        """This process's pooled connections (idle ones; the caller asks between calls)."""
        return len(self._idle) if self._pid == os.getpid() else 0

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._connection() as conn:
            return fn(_Connection(conn), *args)

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        if self._pid != os.getpid():  # first use, or first use after a fork
            self._inherited.extend(self._idle)
            self._pid, self._idle, self._migrated = os.getpid(), [], False
            # Made now, in the worker: threading is gevent's there once it is patched.
            self._slots = threading.BoundedSemaphore(self.pool_size)
        assert self._slots is not None
        with self._slots:
            conn = self._idle.pop() if self._idle else self._connect()
            try:
                yield conn
            finally:
                if _reusable(conn):
                    self._idle.append(conn)
                else:
                    conn.close()

    def _connect(self) -> Any:
        psycopg = _psycopg()
        options: dict[str, Any] = {"autocommit": True, "row_factory": psycopg.rows.dict_row}
        if "connect_timeout" not in self.url:
            options["connect_timeout"] = CONNECT_TIMEOUT_S
        if "application_name" not in self.url:
            options["application_name"] = "stopwire"
        conn = psycopg.connect(self.url, **options)
        try:
            if not self._migrated:
                migrate(_Connection(conn))
                self._migrated = True
        except BaseException:
            conn.close()
            raise
        return conn


def _reusable(conn: Any) -> bool:
    """Back to the pool only if healthy and outside any transaction."""
    from psycopg.pq import TransactionStatus

    if conn.closed or conn.broken:
        return False
    return conn.info.transaction_status == TransactionStatus.IDLE


class _Connection:
    """A psycopg connection that takes sql.py's `?` parameters and names its dialect."""

    dialect: Dialect = POSTGRES

    def __init__(self, conn: Any):
        self.conn = conn

    def execute(self, sql: str, params: tuple | list = ()) -> Any:
        return self.conn.execute(_placeholders(sql), params)

    def executemany(self, sql: str, params: list) -> None:
        with self.conn.cursor() as cursor:
            cursor.executemany(_placeholders(sql), params)


@lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    """`?` to psycopg's `%s` (the store's SQL has no other `?` and no `%`)."""
    return sql.replace("?", "%s")


def _psycopg() -> Any:
    """psycopg, imported now (after gevent patched the worker) and checked to cooperate."""
    import psycopg
    import psycopg.rows

    check_cooperative_wait()
    return psycopg


def check_cooperative_wait() -> None:
    """Raise unless psycopg waits for the server cooperatively in a gevent-patched process.

    Without patching there is no event loop to stall, and psycopg's C wait is right.
    """
    from gevent import monkey
    from psycopg import waiting

    if not monkey.is_module_patched("socket"):
        return
    blocking = getattr(waiting, "wait_c", None)
    if waiting.wait is blocking or not monkey.is_module_patched("select"):
        raise RuntimeError(
            "psycopg was imported before gevent patched this process, so every query "
            f"would block the whole worker (psycopg.waiting.wait is {waiting.wait.__name__}): "
            "do not import psycopg in gunicorn's master or at the top of a module loaded "
            "with --preload; Stopwire imports it in each worker on first use"
        )
