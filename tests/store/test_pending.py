"""Generations asked for and not yet viewed, on both databases: taken once, or dropped."""

import time

from flask_stopwire.store.sql import SqlStore, new_id
from tests.store.databases import Database, db, empty_postgres_url, postgres_url

__all__ = ["db", "empty_postgres_url", "postgres_url"]  # fixtures

USER = "user:alice"
REQUEST = {"messages": [["user", "Hi"]], "grace_s": 0.0}


def pending_turn(st: SqlStore, generation_id: str, wait_s: float = 10.0) -> dict:
    live = {"generation_id": generation_id, "owner": "worker_a", "model": "m"}
    return st.begin_turn(USER, None, "Hi", live, (REQUEST, wait_s))


def answer(st: SqlStore, turn: dict) -> dict:
    messages = st.get_conversation(USER, turn["conversation_id"])["messages"]
    return next(m for m in messages if m["id"] == turn["message_id"])


def test_a_pending_answer_is_taken_once_and_then_streams(db: Database) -> None:
    st = db.store()
    turn = pending_turn(st, "gen_p1")
    assert answer(st, turn)["status"] == "streaming"  # as far as anyone reading can tell
    assert st.take_pending("user:mallory", "gen_p1", "worker_b") is None  # not theirs
    taken = st.take_pending(USER, "gen_p1", "worker_b")
    # The request, with the ids of the answer it writes (not known before the turn was saved).
    assert taken == {
        **REQUEST,
        "conversation_id": turn["conversation_id"],
        "message_id": turn["message_id"],
    }
    assert st.take_pending(USER, "gen_p1", "worker_c") is None  # taken
    assert st.find_answer(USER, "gen_p1")["id"] == turn["message_id"]
    assert st.find_answer("user:mallory", "gen_p1") is None


def test_a_pending_answer_keeps_its_conversation_busy(db: Database) -> None:
    st = db.store()
    turn = pending_turn(st, "gen_p2")
    live = {"generation_id": "gen_p3", "owner": "worker_a", "model": "m"}
    try:
        st.begin_turn(USER, turn["conversation_id"], "again", live)
    except Exception as exc:  # Conflict
        assert "streaming" in str(exc)
    else:
        raise AssertionError("a second turn started beside a pending answer")


def test_nobody_viewing_in_time_drops_it_without_a_provider_call(db: Database) -> None:
    st = db.store()
    assert st.claim_slot("key", "gen_p4", 1, 60)
    turn = pending_turn(st, "gen_p4", wait_s=0.05)
    time.sleep(0.1)
    assert st.take_pending(USER, "gen_p4", "worker_b") is None
    dropped = answer(st, turn)
    assert (dropped["status"], dropped["reason"], dropped["content"]) == (
        "stopped",
        "client_disconnect",
        "",
    )
    assert st.claim_slot("key", new_id("gen"), 1, 60)  # its slot was freed


def test_no_sweep_takes_an_unviewed_answer_for_lost_before_it_expires(db: Database) -> None:
    st = db.store()
    turn = pending_turn(st, "gen_p7", wait_s=30)
    assert st.heartbeat([], [], stale_s=0.01) == 0
    assert answer(st, turn)["status"] == "streaming"


def test_the_heartbeat_drops_expired_requests_too(db: Database) -> None:
    st = db.store()
    turn = pending_turn(st, "gen_p5", wait_s=0.05)
    st.add_pending("gen_p6", USER, None, REQUEST, 0.05)
    time.sleep(0.1)
    st.heartbeat([], [], stale_s=60)
    assert answer(st, turn)["status"] == "stopped"
    assert st.take_pending(USER, "gen_p6", "worker_b") is None


def test_a_stop_before_anyone_viewed_it_drops_it_as_the_users(db: Database) -> None:
    st = db.store()
    turn = pending_turn(st, "gen_p8")
    dropped = st.drop_pending(USER, "gen_p8")
    assert (dropped["status"], dropped["reason"], dropped["content"]) == (
        "stopped",
        "user_stop",
        "",
    )
    assert dropped["usage"]["completion_tokens"] == 0
    assert answer(st, turn)["status"] == "stopped"
    assert st.take_pending(USER, "gen_p8", "worker_b") is None
    assert st.drop_pending(USER, "gen_p8") is None  # once
    st.add_pending("gen_p9", USER, None, REQUEST, 10)
    assert st.drop_pending("user:mallory", "gen_p9") is None
    assert st.drop_pending(USER, "gen_p9") == {}  # nothing saved: no answer
