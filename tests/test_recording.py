"""The Recorder: live answers flushed to a real store, then finished (SQLite and PostgreSQL)."""

import logging
import time

import pytest
import requests

from flask_stopwire.providers.base import Delta, Message, Usage
from flask_stopwire.providers.openai import OpenAIProvider
from flask_stopwire.relay.generation import Generation, Outcome, RelaySettings
from flask_stopwire.store.recording import LiveAnswer, Recorder
from flask_stopwire.store.sql import SqlStore
from tests.store.databases import Database, db, postgres_url

__all__ = ["db", "postgres_url"]  # fixtures

PROMPT = "What does Stop stop?"
USER = "user:alice"
USAGE = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6, "estimated": False}
UPSTREAM_ERROR = {"type": "provider_unavailable", "message": "HTTP 503"}


def new_generation(generation_id: str = "gen_1") -> Generation:
    """A real Generation that is never run: the tests play its pump and its stops."""
    return Generation(
        OpenAIProvider("http://127.0.0.1:9/v1", "", "demo"),
        [Message("user", PROMPT)],
        requests.Session(),
        RelaySettings(heartbeat_s=15, connect_timeout_s=1, read_timeout_s=1),
        generation_id=generation_id,
    )


def receive(generation: Generation, *texts: str) -> None:
    """Text arriving from the provider, taken as the pump takes it."""
    for text in texts:
        generation._take(Delta(text=text))


def complete(generation: Generation) -> None:
    """The provider's usage and final event, as the pump takes them."""
    generation._take(Delta(usage=Usage(USAGE["prompt_tokens"], USAGE["completion_tokens"])))
    generation._decide(Outcome("complete"))


@pytest.fixture
def st(db: Database) -> SqlStore:
    return db.store()


@pytest.fixture
def recorder(st):
    recorder = Recorder(st, flush_s=3600, lost_after_s=60)
    recorder.owner = "worker_test"  # what start() would pick, without its beating greenlet
    return recorder


def begin(st: SqlStore, n: int = 1, owner: str = "worker_test") -> dict:
    return st.begin_turn(
        USER, None, f"Question {n}", {"generation_id": f"gen_{n}", "owner": owner, "model": "demo"}
    )


def answer(st: SqlStore, ids: dict) -> dict:
    messages = st.get_conversation(USER, ids["conversation_id"])["messages"]
    return next(m for m in messages if m["id"] == ids["message_id"])


def tamper(st: SqlStore, ids: dict, text: str) -> None:
    """Overwrite the saved text behind the recorder's back, to see whether it writes again."""
    st.heartbeat([], [(ids["message_id"], text)], 60)


def age(db: Database, message_id: str, seconds: float) -> None:
    db.execute(
        "UPDATE messages SET heartbeat_at = ? WHERE id = ?", (time.time() - seconds, message_id)
    )


# -- beat ------------------------------------------------------------------------------


def test_beat_flushes_the_text(st, recorder):
    ids = begin(st)
    generation = new_generation()
    recorder.track(generation, ids["message_id"])
    receive(generation, "Hello", ", wor")
    assert recorder.beat() == 0
    saved = answer(st, ids)
    assert (saved["content"], saved["status"]) == ("Hello, wor", "streaming")


def test_beat_writes_only_changed_text(st, recorder):
    ids = begin(st)
    generation = new_generation()
    recorder.track(generation, ids["message_id"])
    receive(generation, "Hello")
    recorder.beat()
    tamper(st, ids, "tampered")
    recorder.beat()  # nothing new: nothing written
    assert answer(st, ids)["content"] == "tampered"
    receive(generation, ", world")
    recorder.beat()
    assert answer(st, ids)["content"] == "Hello, world"


def test_beat_writes_nothing_before_any_text(st, recorder):
    ids = begin(st)
    recorder.track(new_generation(), ids["message_id"])
    tamper(st, ids, "tampered")
    recorder.beat()
    assert answer(st, ids)["content"] == "tampered"


def test_beat_flushes_every_live_answer(st, recorder):
    first, second = begin(st, 1), begin(st, 2)
    g1, g2 = new_generation("gen_1"), new_generation("gen_2")
    recorder.track(g1, first["message_id"])
    recorder.track(g2, second["message_id"])
    receive(g1, "one")
    receive(g2, "two")
    recorder.beat()
    assert (answer(st, first)["content"], answer(st, second)["content"]) == ("one", "two")
    tamper(st, first, "x")
    tamper(st, second, "y")
    receive(g2, ", three")
    recorder.beat()
    assert (answer(st, first)["content"], answer(st, second)["content"]) == ("x", "two, three")


def test_beat_flushes_a_continuation_with_its_prefix(st, recorder):
    ids = begin(st)
    generation = new_generation()
    recorder.track(generation, ids["message_id"], prefix="Once upon")
    receive(generation, " a", " time")
    recorder.beat()
    assert answer(st, ids)["content"] == "Once upon a time"


def test_beat_flushes_everything_received_even_past_a_seen_chars(st, recorder):
    # Live text is all that arrived; only the final save is cut to what the user saw.
    ids = begin(st)
    generation = new_generation()
    recorder.track(generation, ids["message_id"])
    receive(generation, "Hello, world")
    generation.stop("user_stop", seen_chars=5)
    recorder.beat()
    assert answer(st, ids)["content"] == "Hello, world"


def test_beat_renews_the_recorders_claim(st, recorder, db):
    ids = begin(st, owner="worker_test")
    recorder.track(new_generation(), ids["message_id"])
    age(db, ids["message_id"], 120)
    assert recorder.beat() == 0
    assert answer(st, ids)["status"] == "streaming"
    # renewed: another worker's sweep now finds it fresh
    assert st.heartbeat([], [], 60) == 0


def test_beat_marks_lost_answers(st, recorder, db, caplog):
    mine = begin(st, 1, owner="worker_test")
    lost = begin(st, 2, owner="worker_dead")
    recorder.track(new_generation("gen_1"), mine["message_id"])
    age(db, lost["message_id"], 120)
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


def test_finish_writes_the_final_state(st, recorder, db):
    ids = begin(st)
    generation = new_generation()
    recorder.track(generation, ids["message_id"])
    receive(generation, "The whole", " answer.")
    complete(generation)
    recorder.finish(generation)
    saved = answer(st, ids)
    assert {k: saved[k] for k in ("content", "status", "reason", "usage", "receipt")} == {
        "content": "The whole answer.",
        "status": "complete",
        "reason": None,
        "usage": USAGE,
        "receipt": None,
    }
    rows = db.execute("SELECT owner FROM messages WHERE id = ?", (ids["message_id"],))
    assert [tuple(row) for row in rows] == [(None,)]


def test_finish_keeps_what_the_user_saw(st, recorder):
    ids = begin(st)
    generation = new_generation()
    recorder.track(generation, ids["message_id"])
    receive(generation, "Hello, world", " and then some")
    recorder.beat()
    generation.stop("user_stop", seen_chars=12)
    receive(generation, " more")  # arrived after the stop: counted, never kept
    recorder.finish(generation)
    saved = answer(st, ids)
    assert {k: saved[k] for k in ("content", "status", "reason")} == {
        "content": "Hello, world",
        "status": "stopped",
        "reason": "user_stop",
    }
    # No provider socket was open, so the stop closed nothing and took no time.
    assert saved["receipt"] == {
        "signal": "user_stop",
        "stop_to_close_ms": 0.0,
        "tokens_after_stop": 1,
    }


def test_finish_without_seen_chars_keeps_everything_received(st, recorder):
    ids = begin(st)
    generation = new_generation()
    recorder.track(generation, ids["message_id"])
    receive(generation, "Hello, world", " and then some")
    generation.stop("client_disconnect")
    recorder.finish(generation)
    saved = answer(st, ids)
    assert (saved["content"], saved["reason"]) == (
        "Hello, world and then some",
        "client_disconnect",
    )


def test_finish_with_seen_chars_beyond_the_text_keeps_only_the_text(st, recorder):
    ids = begin(st)
    generation = new_generation()
    recorder.track(generation, ids["message_id"])
    receive(generation, "Hello")
    generation.stop("user_stop", seen_chars=10_000)
    recorder.finish(generation)
    assert answer(st, ids)["content"] == "Hello"


def test_finish_a_continuation_saves_prefix_and_text(st, recorder):
    ids = begin(st)
    generation = new_generation()
    recorder.track(generation, ids["message_id"], prefix="Once upon")
    receive(generation, " a time", ", there was")
    generation.stop("user_stop", seen_chars=7)
    recorder.finish(generation)
    assert answer(st, ids)["content"] == "Once upon a time"


def test_finish_then_new_turn_is_allowed(st, recorder):
    ids = begin(st)
    generation = new_generation()
    recorder.track(generation, ids["message_id"])
    generation._decide(Outcome("error", "upstream_error", UPSTREAM_ERROR))
    recorder.finish(generation)
    second = st.begin_turn(
        USER,
        ids["conversation_id"],
        "Again",
        {"generation_id": "gen_2", "owner": "w", "model": "m"},
    )
    assert answer(st, second)["status"] == "streaming"
    saved = answer(st, ids)
    assert (saved["content"], saved["status"], saved["reason"]) == ("", "error", "upstream_error")


def test_finish_of_an_untracked_generation_is_a_noop(st, recorder):
    ids = begin(st)
    generation = new_generation()
    receive(generation, "never tracked")
    complete(generation)
    recorder.finish(generation)
    saved = answer(st, ids)
    assert (saved["content"], saved["status"]) == ("", "streaming")


def test_finish_twice_writes_once(st, recorder):
    ids = begin(st)
    generation = new_generation()
    recorder.track(generation, ids["message_id"])
    receive(generation, "first")
    complete(generation)
    recorder.finish(generation)
    receive(generation, ", second")
    recorder.finish(generation)
    saved = answer(st, ids)
    assert (saved["content"], saved["status"]) == ("first", "complete")


def test_a_finished_answer_is_no_longer_flushed(st, recorder):
    ids = begin(st)
    generation = new_generation()
    recorder.track(generation, ids["message_id"])
    receive(generation, "done")
    complete(generation)
    recorder.finish(generation)
    receive(generation, ", and more")
    recorder.beat()
    assert answer(st, ids)["content"] == "done"


# -- LiveAnswer / start ----------------------------------------------------------------


def test_live_answer_content():
    generation = new_generation()
    receive(generation, "abc", "def")
    generation.stop("user_stop", seen_chars=2)
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


def test_a_row_this_worker_wrote_but_never_tracked_is_swept(st, recorder, db):
    """The wedge: a turn saved, then its response never iterated (a host hook failed)."""
    ids = begin(st, owner="worker_test")  # written by this worker, never tracked
    age(db, ids["message_id"], 120)
    assert recorder.beat() == 1
    assert (answer(st, ids)["status"], answer(st, ids)["reason"]) == (
        "interrupted",
        "worker_lost",
    )
    # ... and the conversation takes new turns again.
    st.begin_turn(USER, ids["conversation_id"], "Again", {"generation_id": "gen_9"})


def test_beat_renews_the_slots_of_running_generations(st, db):
    recorder = Recorder(st, flush_s=3600, lost_after_s=60, running=lambda: ["gen_live"])
    assert st.claim_slot("key:x", "gen_live", 1, 60)
    db.execute("UPDATE running_generations SET heartbeat_at = heartbeat_at - 120")
    recorder.beat()
    assert not st.claim_slot("key:x", "gen_other", 1, 60)  # still held: renewed
