"""The Recorder: live answers flushed to a real SqliteStore, then finished."""

import logging
import sqlite3
import time

import pytest

from flask_stopwire.store.recording import LiveAnswer, Recorder
from flask_stopwire.store.sqlite import SqliteStore

USAGE = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6, "estimated": True}
RECEIPT = {"signal": "user_stop", "stop_to_close_ms": 0.5, "tokens_after_stop": 0}


class FakeGeneration:
    """What the Recorder reads from a Generation, and nothing else."""

    def __init__(self, generation_id: str = "gen_1"):
        self.id = generation_id
        self.received = ""
        self.seen_chars: int | None = None
        self.outcome = {"status": "complete", "reason": None, "usage": USAGE}

    def text(self) -> str:
        return self.received

    def kept_text(self) -> str:
        return self.received if self.seen_chars is None else self.received[: self.seen_chars]

    def summary(self) -> dict:
        return {"generation_id": self.id, **self.outcome}


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "stopwire.sqlite3")


@pytest.fixture
def st(db_path):
    return SqliteStore(db_path)


@pytest.fixture
def recorder(st):
    recorder = Recorder(st, flush_s=3600, lost_after_s=60)
    recorder.owner = "worker_test"  # what start() would pick, without its beating greenlet
    return recorder


def begin(st: SqliteStore, n: int = 1, owner: str = "worker_test") -> dict:
    return st.begin_turn(
        None, f"Question {n}", {"generation_id": f"gen_{n}", "owner": owner, "model": "demo"}
    )


def answer(st: SqliteStore, ids: dict) -> dict:
    messages = st.get_conversation(ids["conversation_id"])["messages"]
    return next(m for m in messages if m["id"] == ids["message_id"])


def tamper(st: SqliteStore, ids: dict, text: str) -> None:
    """Overwrite the saved text behind the recorder's back, to see whether it writes again."""
    st.heartbeat("worker_other", [(ids["message_id"], text)], 60)


def age(path: str, message_id: str, seconds: float) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "UPDATE messages SET heartbeat_at = ? WHERE id = ?", (time.time() - seconds, message_id)
    )
    db.close()


# -- beat ------------------------------------------------------------------------------


def test_beat_flushes_the_text(st, recorder):
    ids = begin(st)
    generation = FakeGeneration()
    recorder.track(generation, ids["message_id"])
    generation.received = "Hello, wor"
    assert recorder.beat() == 0
    saved = answer(st, ids)
    assert (saved["content"], saved["status"]) == ("Hello, wor", "streaming")


def test_beat_writes_only_changed_text(st, recorder):
    ids = begin(st)
    generation = FakeGeneration()
    recorder.track(generation, ids["message_id"])
    generation.received = "Hello"
    recorder.beat()
    tamper(st, ids, "tampered")
    recorder.beat()  # nothing new: nothing written
    assert answer(st, ids)["content"] == "tampered"
    generation.received = "Hello, world"
    recorder.beat()
    assert answer(st, ids)["content"] == "Hello, world"


def test_beat_writes_nothing_before_any_text(st, recorder):
    ids = begin(st)
    recorder.track(FakeGeneration(), ids["message_id"])
    tamper(st, ids, "tampered")
    recorder.beat()
    assert answer(st, ids)["content"] == "tampered"


def test_beat_flushes_every_live_answer(st, recorder):
    first, second = begin(st, 1), begin(st, 2)
    g1, g2 = FakeGeneration("gen_1"), FakeGeneration("gen_2")
    recorder.track(g1, first["message_id"])
    recorder.track(g2, second["message_id"])
    g1.received, g2.received = "one", "two"
    recorder.beat()
    assert (answer(st, first)["content"], answer(st, second)["content"]) == ("one", "two")
    tamper(st, first, "x")
    tamper(st, second, "y")
    g2.received = "two, three"
    recorder.beat()
    assert (answer(st, first)["content"], answer(st, second)["content"]) == ("x", "two, three")


def test_beat_flushes_a_continuation_with_its_prefix(st, recorder):
    ids = begin(st)
    generation = FakeGeneration()
    recorder.track(generation, ids["message_id"], prefix="Once upon")
    generation.received = " a time"
    recorder.beat()
    assert answer(st, ids)["content"] == "Once upon a time"


def test_beat_renews_the_recorders_claim(st, recorder, db_path):
    ids = begin(st, owner="worker_test")
    recorder.track(FakeGeneration(), ids["message_id"])
    age(db_path, ids["message_id"], 120)
    assert recorder.beat() == 0
    assert answer(st, ids)["status"] == "streaming"
    # renewed: another worker's sweep now finds it fresh
    assert st.heartbeat("worker_other", [], 60) == 0


def test_beat_marks_lost_answers(st, recorder, db_path, caplog):
    mine = begin(st, 1, owner="worker_test")
    lost = begin(st, 2, owner="worker_dead")
    recorder.track(FakeGeneration("gen_1"), mine["message_id"])
    age(db_path, lost["message_id"], 120)
    with caplog.at_level(logging.WARNING, logger="flask_stopwire.store.recording"):
        assert recorder.beat() == 1
    saved = answer(st, lost)
    assert (saved["status"], saved["reason"]) == ("interrupted", "worker_lost")
    assert answer(st, mine)["status"] == "streaming"
    assert [r.getMessage() for r in caplog.records] == [
        "marked 1 answers interrupted: their worker was lost"
    ]


def test_beat_with_nothing_to_do(recorder, caplog):
    with caplog.at_level(logging.WARNING, logger="flask_stopwire.store.recording"):
        assert recorder.beat() == 0
    assert caplog.records == []


# -- finish ----------------------------------------------------------------------------


def test_finish_writes_the_final_state(st, recorder, db_path):
    ids = begin(st)
    generation = FakeGeneration()
    recorder.track(generation, ids["message_id"])
    generation.received = "The whole answer."
    recorder.finish(generation)
    saved = answer(st, ids)
    assert {k: saved[k] for k in ("content", "status", "reason", "usage", "receipt")} == {
        "content": "The whole answer.",
        "status": "complete",
        "reason": None,
        "usage": USAGE,
        "receipt": None,
    }
    db = sqlite3.connect(db_path)
    assert db.execute(
        "SELECT owner FROM messages WHERE id = ?", (ids["message_id"],)
    ).fetchone() == (None,)


def test_finish_keeps_what_the_user_saw(st, recorder):
    ids = begin(st)
    generation = FakeGeneration()
    recorder.track(generation, ids["message_id"])
    generation.received = "Hello, world and then some"
    recorder.beat()
    generation.seen_chars = 12
    generation.outcome = {
        "status": "stopped",
        "reason": "user_stop",
        "usage": USAGE,
        "receipt": RECEIPT,
    }
    recorder.finish(generation)
    saved = answer(st, ids)
    assert {k: saved[k] for k in ("content", "status", "reason", "receipt")} == {
        "content": "Hello, world",
        "status": "stopped",
        "reason": "user_stop",
        "receipt": RECEIPT,
    }


def test_finish_a_continuation_saves_prefix_and_text(st, recorder):
    ids = begin(st)
    generation = FakeGeneration()
    recorder.track(generation, ids["message_id"], prefix="Once upon")
    generation.received = " a time, there was"
    generation.seen_chars = 7
    generation.outcome = {"status": "stopped", "reason": "user_stop", "usage": USAGE}
    recorder.finish(generation)
    assert answer(st, ids)["content"] == "Once upon a time"


def test_finish_then_new_turn_is_allowed(st, recorder):
    ids = begin(st)
    generation = FakeGeneration()
    recorder.track(generation, ids["message_id"])
    generation.outcome = {"status": "error", "reason": "upstream_error", "usage": USAGE}
    recorder.finish(generation)
    second = st.begin_turn(
        ids["conversation_id"], "Again", {"generation_id": "gen_2", "owner": "w", "model": "m"}
    )
    assert answer(st, second)["status"] == "streaming"
    saved = answer(st, ids)
    assert (saved["content"], saved["status"], saved["reason"]) == ("", "error", "upstream_error")


def test_finish_of_an_untracked_generation_is_a_noop(st, recorder):
    ids = begin(st)
    generation = FakeGeneration()
    generation.received = "never tracked"
    recorder.finish(generation)
    saved = answer(st, ids)
    assert (saved["content"], saved["status"]) == ("", "streaming")


def test_finish_twice_writes_once(st, recorder):
    ids = begin(st)
    generation = FakeGeneration()
    recorder.track(generation, ids["message_id"])
    generation.received = "first"
    recorder.finish(generation)
    generation.received = "second"
    generation.outcome = {"status": "error", "reason": "internal", "usage": USAGE}
    recorder.finish(generation)
    saved = answer(st, ids)
    assert (saved["content"], saved["status"]) == ("first", "complete")


def test_a_finished_answer_is_no_longer_flushed(st, recorder):
    ids = begin(st)
    generation = FakeGeneration()
    recorder.track(generation, ids["message_id"])
    generation.received = "done"
    recorder.finish(generation)
    generation.received = "done, and more"
    recorder.beat()
    assert answer(st, ids)["content"] == "done"


# -- LiveAnswer / start ----------------------------------------------------------------


def test_live_answer_content():
    generation = FakeGeneration()
    generation.received = "abcdef"
    generation.seen_chars = 2
    live = LiveAnswer("msg_1", generation, prefix="> ")
    assert live.content() == "> abcdef"
    assert live.content(final=True) == "> ab"
    assert live.flushed == ""


def test_start_picks_an_owner_once(st):
    recorder = Recorder(st, flush_s=3600, lost_after_s=60)
    assert recorder.owner == ""
    recorder.start()
    owner = recorder.owner
    assert owner.startswith("worker_")
    recorder.start()
    assert recorder.owner == owner
