"""A final save that fails on a real filesystem: the client is told, the answer stays
claimed by its live worker, the save is retried until it lands, and no other worker
takes the answer for lost.

The database lives on a small tmpfs (tests/store/disk.py) and every fault is real: the
disk full (a filler file written until ENOSPC), the filesystem read-only, the database
locked by another connection for longer than the busy timeout. Two recorders on two
connections play two workers: `ours` streams the answer, `theirs` sweeps with a short
`lost_after_s`. Beats are driven by the test, in the order that would hurt.
"""

import gc
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
import requests

from flask_stopwire.providers.base import Delta, Message, Usage
from flask_stopwire.providers.openai import OpenAIProvider
from flask_stopwire.relay.generation import Generation, Outcome, RelaySettings
from flask_stopwire.store import recording
from flask_stopwire.store import sqlite as sqlite_store
from flask_stopwire.store.recording import Recorder
from flask_stopwire.store.sqlite import SqliteStore
from tests.store.disk import Tmpfs

FLUSH_S = 0.1  # how often the test beats each recorder, as its loop would
LOST_AFTER_S = 0.5  # their sweep's patience: the faults last longer
FAULT_S = 1.5
BUSY_TIMEOUT_MS = 200
USER = "key:t"


class Fault:
    """A real fault of the database's filesystem, on until `off()`."""

    error = ""  # the SQLite error every write meets while it lasts

    def __init__(self, disk: Tmpfs, stores: list[SqliteStore]):
        self.disk = disk
        self.stores = stores
        self.database = stores[0].path

    def on(self) -> None:
        raise NotImplementedError

    def off(self) -> None:
        raise NotImplementedError

    def reader_uri(self) -> str:
        """How the test reads the database while the fault lasts."""
        return f"file:{self.database}?mode=ro"


class DiskFull(Fault):
    """A filler file took every free block of the tmpfs."""

    error = "SQLITE_FULL"

    def on(self) -> None:
        self.disk.fill()

    def off(self) -> None:
        self.disk.free()


class ReadOnly(Fault):
    """The tmpfs remounted read-only.

    Linux refuses that (EBUSY) while SQLite holds its files open for writing, so the
    workers' connections are closed first: what a worker then meets is its connection
    opening again on a read-only filesystem.
    """

    error = "SQLITE_CANTOPEN"

    def on(self) -> None:
        for store in self.stores:
            store.close()
        self.disk.remount("ro")

    def off(self) -> None:
        self.disk.remount("rw")

    def reader_uri(self) -> str:
        return f"file:{self.database}?immutable=1"  # nobody can write meanwhile


class Locked(Fault):
    """Another connection holds the write lock longer than the busy timeout."""

    error = "SQLITE_BUSY"
    holder: sqlite3.Connection | None = None

    def on(self) -> None:
        self.holder = sqlite3.connect(self.database, isolation_level=None)
        self.holder.execute("BEGIN EXCLUSIVE")

    def off(self) -> None:
        if self.holder is not None:
            self.holder.execute("ROLLBACK")
            self.holder.close()
            self.holder = None


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Tmpfs]:
    """A 2 MB tmpfs for the database, unmounted after the test."""
    tmpfs = Tmpfs(tmp_path / "disk")
    yield tmpfs
    tmpfs.close()


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries every 50-200 ms, and a busy timeout the lock outlasts."""
    monkeypatch.setattr(recording, "RETRY_FIRST_S", 0.05)
    monkeypatch.setattr(recording, "RETRY_MAX_S", 0.2)
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", BUSY_TIMEOUT_MS)


@pytest.fixture
def stores(disk: Tmpfs) -> Iterator[list[SqliteStore]]:
    """Two workers' stores on the tmpfs: each its own connection on its own thread."""
    database = str(disk.path / "stopwire.sqlite3")
    pair = [SqliteStore(database), SqliteStore(database)]
    yield pair
    for store in pair:
        store.close()


@pytest.fixture
def ours(stores: list[SqliteStore]) -> Iterator[Recorder]:
    """The worker that streams the answer and must save it."""
    recorder = Recorder(stores[0], flush_s=FLUSH_S, lost_after_s=60)
    yield recorder
    _kill_retries(recorder)


@pytest.fixture
def theirs(stores: list[SqliteStore]) -> Recorder:
    """Another worker, quick to take silent answers for lost."""
    return Recorder(stores[1], flush_s=FLUSH_S, lost_after_s=LOST_AFTER_S)


@pytest.fixture(params=[DiskFull, ReadOnly, Locked], ids=["disk_full", "read_only", "locked"])
def fault(
    request: pytest.FixtureRequest, disk: Tmpfs, stores: list[SqliteStore]
) -> Iterator[Fault]:
    """Each fault in turn; cleared after the test whatever happened."""
    fault = request.param(disk, stores)
    yield fault
    fault.off()


def new_generation(recorder: Recorder, generation_id: str) -> Generation:
    """A real Generation that is never run: the test plays its pump; its end is saved."""
    return Generation(
        OpenAIProvider("http://127.0.0.1:9/v1", "", "demo"),
        [Message("user", "Tell me")],
        requests.Session(),
        RelaySettings(heartbeat_s=15, connect_timeout_s=1, read_timeout_s=1),
        on_end=recorder.finish,
        generation_id=generation_id,
    )


def begin(store: SqliteStore, generation_id: str) -> dict:
    """A new conversation's turn: the question and an empty `streaming` answer."""
    return store.begin_turn(
        USER, None, "Tell me", {"generation_id": generation_id, "owner": "w", "model": "demo"}
    )


def row(uri: str, message_id: str) -> dict:
    """The answer's row as another process would read it."""
    db = sqlite3.connect(uri, uri=True)
    db.row_factory = sqlite3.Row
    try:
        found = db.execute(
            "SELECT content, status, reason, usage, owner FROM messages WHERE id = ?",
            (message_id,),
        ).fetchone()
        return {**dict(found), "usage": json.loads(found["usage"] or "null")}
    finally:
        db.close()


def streaming_rows(database: str) -> int:
    """How many answers in the database are still `streaming`."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM messages WHERE status = 'streaming'").fetchone()[0]
    finally:
        db.close()


def beat_for(seconds: float, *recorders: Recorder) -> list[list[int | str]]:
    """Each recorder beats every FLUSH_S for `seconds`; what each beat gave: the count
    it marked lost, or the SQLite error it failed with."""
    outcomes: list[list[int | str]] = [[] for _ in recorders]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for recorder, seen in zip(recorders, outcomes, strict=True):
            try:
                seen.append(recorder.beat())
            except sqlite3.Error as exc:
                seen.append(exc.sqlite_errorname)
        gevent.sleep(FLUSH_S)
    return outcomes


def wait_status(uri: str, message_id: str, timeout: float = 10.0) -> dict:
    """The row once it is no longer streaming (the retry has landed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        saved = row(uri, message_id)
        if saved["status"] != "streaming":
            return saved
        gevent.sleep(0.05)
    raise AssertionError(f"still streaming after {timeout}s: {saved}")


def _kill_retries(recorder: Recorder) -> None:
    """A retry that outlives a failed test must not write into the next one."""
    retries = [
        g
        for g in gc.get_objects()
        if isinstance(g, gevent.Greenlet)
        and getattr(getattr(g, "_run", None), "__self__", None) is recorder
    ]
    gevent.killall(retries, timeout=5)


def test_a_failed_final_save_is_told_and_retried_until_it_lands(
    fault: Fault, ours: Recorder, theirs: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    turn = begin(ours.store, "gen_1")
    generation = new_generation(ours, "gen_1")
    ours.track(generation, turn["message_id"])
    generation._take(Delta(text="Hello,"))
    assert ours.beat() == 0  # flushed, claimed
    assert theirs.beat() == 0

    fault.on()
    generation._take(Delta(text=" world."))
    generation._take(Delta(usage=Usage(4, 2)))
    generation._decide(Outcome("complete"))
    generation._settle()  # as the pump does, before any viewer hears the end
    done = generation.summary()
    assert (done["status"], done.get("saved")) == ("complete", False)
    assert generation.saved is False

    # While the fault lasts nobody writes: our renewals fail, and so does their sweep.
    ours_beats, their_beats = beat_for(FAULT_S, ours, theirs)
    assert set(ours_beats) == {fault.error}
    assert fault.error in their_beats and set(their_beats) <= {fault.error, 0}
    during = row(fault.reader_uri(), turn["message_id"])
    assert (during["content"], during["status"], during["reason"]) == ("Hello,", "streaming", None)
    assert any("failed again" in r.getMessage() for r in caplog.records), "retried once at most"

    fault.off()
    assert theirs.beat() == 0  # the first sweep after the fault, before we could beat
    ours_beats, their_beats = beat_for(2 * LOST_AFTER_S, ours, theirs)
    assert set(their_beats) == {0} and set(ours_beats) == {0}
    uri = f"file:{ours.store.path}?mode=ro"
    saved = wait_status(uri, turn["message_id"])
    assert saved == {
        "content": "Hello, world.",
        "status": "complete",
        "reason": None,
        "usage": done["usage"],  # what the client was told
        "owner": None,
    }
    assert done["usage"]["completion_tokens"] == 2
    assert streaming_rows(ours.store.path) == 0


def test_after_a_fault_the_sweep_waits_for_live_workers_to_beat(
    fault: Fault, ours: Recorder, theirs: Recorder
) -> None:
    mine = begin(ours.store, "gen_1")
    dead = begin(ours.store, "gen_2")  # its worker died before tracking it: nobody beats
    generation = new_generation(ours, "gen_1")
    ours.track(generation, mine["message_id"])
    generation._take(Delta(text="Still streaming"))
    assert ours.beat() == 0

    fault.on()
    ours_beats, their_beats = beat_for(FAULT_S, ours, theirs)
    assert set(ours_beats) == {fault.error} and fault.error in their_beats
    fault.off()
    cleared = time.monotonic()

    # Both claims are stale now. Their first beat after the fault spares both: ours
    # because we beat again, the dead one only once we all had the time to.
    assert theirs.beat() == 0
    swept_at = None
    while swept_at is None and time.monotonic() < cleared + 10:
        assert ours.beat() == 0
        if theirs.beat():
            swept_at = time.monotonic()
        gevent.sleep(FLUSH_S)
    assert swept_at is not None, "the dead worker's answer was never swept"
    assert swept_at - cleared >= LOST_AFTER_S
    uri = f"file:{ours.store.path}?mode=ro"
    assert row(uri, mine["message_id"])["status"] == "streaming"
    lost = row(uri, dead["message_id"])
    assert (lost["status"], lost["reason"]) == ("interrupted", "worker_lost")


def test_a_lock_within_the_busy_timeout_does_not_cost_a_live_answer(
    ours: Recorder, theirs: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 10_000)  # waits, never fails
    mine = begin(ours.store, "gen_1")
    ours.track(new_generation(ours, "gen_1"), mine["message_id"])
    assert ours.beat() == 0
    assert theirs.beat() == 0

    holder = sqlite3.connect(ours.store.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    waiting = [gevent.spawn(ours.beat), gevent.spawn(theirs.beat)]
    gevent.sleep(FAULT_S)  # both beats wait for the lock, longer than their patience
    holder.execute("ROLLBACK")
    holder.close()
    assert [g.get(timeout=10) for g in waiting] == [0, 0]

    assert theirs.beat() == 0  # before our next beat renews the claim
    uri = f"file:{ours.store.path}?mode=ro"
    assert row(uri, mine["message_id"])["status"] == "streaming"


def test_a_connection_that_cannot_open_is_closed_at_once(
    disk: Tmpfs, stores: list[SqliteStore]
) -> None:
    turn = begin(stores[0], "gen_1")
    fault = ReadOnly(disk, stores)
    fault.on()
    gc.disable()  # a leaked connection must show, not be collected by chance
    try:
        for _ in range(3):
            with pytest.raises(sqlite3.OperationalError, match="unable to open"):
                stores[0].heartbeat([turn["message_id"]], [], 60)
        assert disk.open_here() == []
    finally:
        gc.enable()
        fault.off()
