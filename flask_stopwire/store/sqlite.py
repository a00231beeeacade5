"""The store on SQLite, off the event loop: the embedded default.

sqlite3 calls block the OS thread, and under gevent that would stall every stream of
the worker. So each worker runs all of its database work on one thread of its own
(gevent's ThreadPool): the calling greenlet waits cooperatively and the others go on.
One connection on one thread also means no locking inside a worker; between workers,
WAL mode and a busy timeout let readers and the single writer get along.

Except the few calls every new chat makes (save the turn, save the end, slots, rate
counts): their SQLite work takes microseconds, less than the hop to the thread and
back, and on a busy worker that thread fights the event loop for the GIL. They run on
the loop, on a second connection that never waits for a lock (busy timeout 0) and
never checkpoints (a checkpoint writes the database file and syncs it: milliseconds
with every stream of the worker stopped); when another connection holds the write lock
they go to the thread, whose connection waits as before. The once-a-second heartbeat
runs on the loop too: it takes milliseconds for hundreds of answers, but on the loop
nothing else runs between the recorder's snapshot and its write (an answer saved and
restarted in between would get the old text), and on the thread it measured no better
(docs/token-path-profile.md).

So the thread checkpoints, every `CHECKPOINT_EVERY` calls on the loop; without it the
write-ahead log would grow by every chat's pages for as long as the worker runs.
"""

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
from gevent.threadpool import ThreadPool

from flask_stopwire.store.migrations import migrate
from flask_stopwire.store.sql import Conflict, SqlStore, new_id, now_iso

__all__ = ["BUSY_TIMEOUT_MS", "Conflict", "SqliteStore", "connect", "new_id", "now_iso"]

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
# Calls on the loop between two checkpoints: a chat's turn and end add ~70 KB of pages to
# the log, so ~3.5 MB (SQLite's own default checkpoints every 4 MB).
CHECKPOINT_EVERY = 100
# A checkpoint holds writers off while it waits for readers to move on: this long at most
# (then it tries again next time), and says so once readers have kept the log past this.
CHECKPOINT_WAIT_MS = 50
WAL_SIZE_LIMIT = 64 * 1024 * 1024

# The statements behind these take microseconds: run on the event loop (see above).
ON_LOOP = frozenset(
    {"_begin_turn", "_restart_answer", "_finish_answer", "_claim_slot", "_release_slot"}
    | {"_heartbeat", "_add_pending", "_take_pending", "_drop_pending", "_find_answer"}
    | {"_hit", "_hits", "_clear_hits"}
)


class SqliteStore(SqlStore):
    """The store interface, on SQLite; every public method is safe to call from any greenlet."""

    def __init__(self, path: str):
        self.path = path
        self._pool: ThreadPool | None = None
        self._pid: int | None = None
        self._db: sqlite3.Connection | None = None
        self._loop_db: sqlite3.Connection | None = None
        self._loop_calls = 0  # since the last checkpoint was asked for
        self._checkpoint_done: gevent.event.Event | None = None  # while one is under way

    def open_connections(self) -> int:
        """The DB thread's connection and the event loop's, once opened."""
        if self._pid != os.getpid():
            return 0
        return (self._db is not None) + (self._loop_db is not None)

    def close(self) -> None:
        """Close the connections (the thread's on its own thread), then the thread."""
        if self._pool is None or self._pid != os.getpid():
            return
        if self._loop_db is not None:
            self._loop_db.close()
            self._loop_db = None
        if self._db is not None:
            db, self._db = self._db, None  # a checkpoint queued meanwhile finds it gone
            self._pool.apply(db.close)
        self._pool.kill()
        self._pool, self._pid = None, None

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._pid != os.getpid():  # first use, or first use after a fork
            self._pid, self._db, self._loop_db = os.getpid(), None, None
            self._pool = ThreadPool(1)
        while self._db is not None and fn.__name__ in ON_LOOP:  # the thread migrated the schema
            try:
                result = fn(self._loop_connection(), *args)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                if self._loop_db is not None and self._loop_db.in_transaction:
                    self._loop_db.rollback()
                if self._checkpoint_done is None:
                    break  # another connection's lock: the thread's connection waits for it
                self._checkpoint_done.wait()  # our own checkpoint's: milliseconds
            else:
                self._checkpoint_in_a_while()
                return result
        outcome = self._pool.apply(self._with_db, (fn, *args))
        if isinstance(outcome, _Raised):
            # Raised here, in the caller's greenlet: an expected KeyError or Conflict
            # raised on the DB thread would otherwise print gevent's traceback.
            raise outcome.exception
        return outcome

    def _checkpoint_in_a_while(self) -> None:
        """Every CHECKPOINT_EVERY calls on the loop, a checkpoint on the thread, in a
        greenlet of its own: nobody waits for it, nor for the thread to be free."""
        self._loop_calls += 1
        if self._loop_calls >= CHECKPOINT_EVERY and self._checkpoint_done is None:
            self._loop_calls = 0
            self._checkpoint_done = gevent.event.Event()
            gevent.spawn(self._checkpoint, self._checkpoint_done)

    def _checkpoint(self, done: gevent.event.Event) -> None:
        """Copy the log into the database on the thread and start the log over.

        Passively first, beside the loop's writes; then, for what they added meanwhile,
        `RESTART`, which holds writers off while it copies and syncs (milliseconds) and
        leaves the log to start over: a passive checkpoint alone never catches up with
        writes that go on. The loop's writes that find it busy wait for it here (`_run`)
        instead of going to the thread, where they would queue for the GIL.
        """
        try:
            if self._pool is not None:
                outcome = self._pool.apply(self._checkpoint_on_thread)
                if outcome is not None:
                    log.warning("checkpointing %s: %s", self.path, outcome)
        finally:
            self._checkpoint_done = None
            done.set()

    def _checkpoint_on_thread(self) -> str | None:
        """What went wrong, if anything. A connection closed meanwhile is not reopened."""
        if self._db is None:
            return None
        try:
            return _checkpoint(self._db)
        except sqlite3.Error as exc:
            return f"failed: {exc}"

    def _loop_connection(self) -> sqlite3.Connection:
        if self._loop_db is None:
            db = sqlite3.connect(self.path, timeout=0, isolation_level=None)
            try:
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA synchronous = NORMAL")
                db.execute("PRAGMA foreign_keys = ON")
                db.execute("PRAGMA wal_autocheckpoint = 0")  # the thread checkpoints
            except BaseException:
                db.close()
                raise
            self._loop_db = db
        return self._loop_db

    def _with_db(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            if self._db is None:
                self._db = connect(self.path)
            return fn(self._db, *args)
        except Exception as exc:
            return _Raised(exc)


def _checkpoint(db: sqlite3.Connection) -> str | None:
    """A passive checkpoint, then a restarting one; what went wrong, if anything."""
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    db.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")  # how long writers wait
    try:
        busy, frames, _ = db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
    finally:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if busy and frames * db.execute("PRAGMA page_size").fetchone()[0] > WAL_SIZE_LIMIT:
        return f"the log is past {WAL_SIZE_LIMIT} bytes and readers keep it from starting over"
    return None


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """Another connection holds the lock (SQLITE_BUSY or SQLITE_LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


class _Raised:
    """An exception raised on the DB thread, carried back to the caller."""

    def __init__(self, exception: Exception):
        self.exception = exception


def connect(path: str) -> sqlite3.Connection:
    """A connection in WAL mode with a busy timeout, the schema brought up to date."""
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        db.row_factory = sqlite3.Row
        _prepare(db)
    except BaseException:
        # Closed now, not when a garbage collection gets to the traceback: a read-only
        # or full disk fails every retry here, and each would keep the file open.
        db.close()
        raise
    return db


def _prepare(db: sqlite3.Connection) -> None:
    """WAL mode and the schema. Workers booting together on a new file race to switch it
    to WAL, and SQLite refuses the loser at once ("database is locked") instead of
    waiting its busy timeout: it tries again until that timeout has passed."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoints, fast
    db.execute("PRAGMA foreign_keys = ON")
    migrate(db)
