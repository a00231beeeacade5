"""The store and its migrations, on a real SQLite file and a real PostgreSQL database.

Every test taking `st` (or `db`) runs on both; those taking `db_path` are SQLite's own.
"""

import contextlib
import functools
import json
import os
import sqlite3
import threading
import time
from datetime import UTC, datetime
from typing import Any

import gevent
import gevent.event
import pytest

from flask_stopwire.store import migrations
from flask_stopwire.store import sql as store
from flask_stopwire.store import sqlite as sqlite_store
from flask_stopwire.store.sql import SqlStore
from flask_stopwire.store.sqlite import BUSY_TIMEOUT_MS, SqliteStore, connect
from tests.relay.transport import wait_until
from tests.store.databases import Database, db, empty_postgres_url, postgres_url

__all__ = ["db", "empty_postgres_url", "postgres_url"]  # fixtures


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "stopwire.sqlite3")


@pytest.fixture
def st(db: Database) -> SqlStore:
    return db.store()


USER = "user:alice"
OTHER = "user:bob"


def by_generation(st: SqlStore, generation_id: str) -> dict | None:
    """USER's saved answer written by `generation_id`, as amend_stop returns it."""
    for conversation in st.list_conversations(USER, 100):
        for found in st.get_conversation(USER, conversation["id"])["messages"]:
            if found["generation_id"] == generation_id:
                found.pop("versions")
                return found
    return None


def raw(path: str) -> sqlite3.Connection:
    """A second connection to a SQLite file, to inspect what the store wrote."""
    db = sqlite3.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row
    return db


def live(n: int = 1, owner: str = "worker_a", model: str = "demo-model") -> dict:
    return {"generation_id": f"gen_{n}", "owner": owner, "model": model}


def finished(st: SqlStore, message_id: str, **fields) -> None:
    st.finish_answer(
        message_id,
        {"content": "Done.", "status": "complete", "reason": None, "usage": None, **fields},
    )


def answer_row(db: Database, message_id: str) -> Any:
    return db.raw().execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()


def message(st: SqlStore, conversation_id: str, message_id: str) -> dict:
    conversation = st.get_conversation(USER, conversation_id)
    return next(m for m in conversation["messages"] if m["id"] == message_id)


# -- migrations ------------------------------------------------------------------------


def test_migrate_creates_the_schema_and_records_each_version(db_path):
    db = connect(db_path)
    tables = {
        r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    }
    assert tables == {
        "schema_version",
        "conversations",
        "messages",
        "message_versions",
        "rate_limits",
        "running_generations",
        "pending_generations",
    }
    versions = [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, len(migrations.MIGRATIONS) + 1))


def test_migrate_returns_the_number_of_migrations(db_path):
    db = connect(db_path)
    assert migrations.migrate(db) == len(migrations.MIGRATIONS) == 6


def test_conversations_have_one_index_and_listing_them_reads_it(db_path):
    """Every turn writes each index of its conversation, so none may be there for nothing:
    listing an identity's conversations, newest first, page after page, reads the one."""
    db = connect(db_path)
    indexes = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'conversations' "
        "AND sql IS NOT NULL"  # not the primary key's own
    ).fetchall()
    assert [r[0] for r in indexes] == ["conversations_by_user"]
    listed: list[str] = []
    db.set_trace_callback(listed.append)
    store._list_conversations(db, USER, 20, None)
    store._list_conversations(db, USER, 20, ("2026-12-01T00:00:00", "conv_x"))
    db.set_trace_callback(None)
    assert len(listed) == 2
    for query in listed:
        plan = " ".join(r[-1] for r in db.execute(f"EXPLAIN QUERY PLAN {query}"))
        assert "USING INDEX conversations_by_user" in plan and "TEMP B-TREE" not in plan, plan


def test_workers_opening_a_new_file_at_once_all_connect(tmp_path):
    """Workers booting together race to switch a new file to WAL; SQLite refuses the
    loser at once ("database is locked", about one round in fifteen before the retry)."""
    for round_ in range(100):
        path = str(tmp_path / f"new-{round_}.sqlite3")
        errors: list[Exception] = []

        def open_it(path: str = path, errors: list[Exception] = errors) -> None:
            try:
                connect(path).close()
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [], (round_, errors)


def test_connect_twice_on_one_file_does_not_rerun_migrations(db_path):
    first = connect(db_path)
    first.execute(
        "INSERT INTO conversations (id, title, created_at, updated_at) VALUES ('c', 't', 'x', 'x')"
    )
    second = connect(db_path)  # another worker process opening the same file
    third = connect(db_path)
    rows = second.execute("SELECT version, COUNT(*) FROM schema_version GROUP BY version")
    assert [tuple(r) for r in rows] == [(n, 1) for n in range(1, len(migrations.MIGRATIONS) + 1)]
    assert [tuple(r) for r in third.execute("SELECT id FROM conversations")] == [("c",)]
    first.close()
    second.close()
    third.close()


def test_a_new_migration_is_applied_on_top_of_an_existing_file(db_path, monkeypatch):
    connect(db_path).close()
    monkeypatch.setattr(
        migrations, "MIGRATIONS", [*migrations.MIGRATIONS, "CREATE TABLE extra (x INTEGER)"]
    )
    db = connect(db_path)
    versions = [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, len(migrations.MIGRATIONS) + 1))
    assert db.execute("SELECT COUNT(*) FROM extra").fetchone()[0] == 0


def test_a_failing_migration_is_rolled_back_whole(db_path, monkeypatch):
    connect(db_path).close()
    broken = "CREATE TABLE half (x INTEGER); INSERT INTO no_such_table VALUES (1)"
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, broken])
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        connect(db_path)
    db = raw(db_path)
    versions = [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, len(migrations.MIGRATIONS)))  # all but the broken one
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchone() is None


def test_connection_uses_wal_and_foreign_keys(db_path):
    db = connect(db_path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_MS


def test_store_file_is_in_wal_mode(db_path):
    SqliteStore(db_path).list_conversations(USER, 10)
    assert raw(db_path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_connect_creates_missing_directories(tmp_path):
    path = tmp_path / "a" / "b" / "stopwire.sqlite3"
    connect(str(path)).close()
    assert path.is_file()


# -- begin_turn ------------------------------------------------------------------------


def test_begin_turn_creates_a_conversation(st):
    ids = st.begin_turn(USER, None, "Hello there", live())
    assert set(ids) == {"conversation_id", "user_message_id", "message_id", "messages"}
    assert ids["conversation_id"].startswith("conv_")
    assert ids["user_message_id"].startswith("msg_")
    assert ids["message_id"].startswith("msg_")
    conversation = st.get_conversation(USER, ids["conversation_id"])
    assert conversation["title"] == "Hello there"
    user, answer = conversation["messages"]
    assert {k: user[k] for k in ("id", "role", "content", "status", "generation_id", "model")} == {
        "id": ids["user_message_id"],
        "role": "user",
        "content": "Hello there",
        "status": "complete",
        "generation_id": None,
        "model": None,
    }
    assert {
        k: answer[k] for k in ("id", "role", "content", "status", "generation_id", "model")
    } == {
        "id": ids["message_id"],
        "role": "assistant",
        "content": "",
        "status": "streaming",
        "generation_id": "gen_1",
        "model": "demo-model",
    }
    assert answer["reason"] is None
    assert answer["usage"] is None
    assert answer["receipt"] is None


def test_begin_turn_stores_owner_and_heartbeat(st, db):
    before = time.time()
    ids = st.begin_turn(USER, None, "Hi", live(owner="worker_x"))
    row = answer_row(db, ids["message_id"])
    assert row["owner"] == "worker_x"
    assert before <= row["heartbeat_at"] <= time.time()
    user = answer_row(db, ids["user_message_id"])
    assert user["owner"] is None
    assert user["heartbeat_at"] is None


def test_title_collapses_whitespace(st):
    ids = st.begin_turn(USER, None, "  What\tis\n\n the   capital \r\n of France?  ", live())
    assert (
        st.get_conversation(USER, ids["conversation_id"])["title"]
        == "What is the capital of France?"
    )


def test_title_is_cut_to_sixty_characters(st):
    content = "abcdefghij " * 10
    ids = st.begin_turn(USER, None, content, live())
    title = st.get_conversation(USER, ids["conversation_id"])["title"]
    assert title == "abcdefghij abcdefghij abcdefghij abcdefghij abcdefghij abcde"
    assert len(title) == store.TITLE_CHARS == 60
    # the message itself is saved as typed
    assert st.get_conversation(USER, ids["conversation_id"])["messages"][0]["content"] == content


def test_title_collapses_before_cutting(st):
    ids = st.begin_turn(USER, None, "start" + " " * 100 + "end", live())
    assert st.get_conversation(USER, ids["conversation_id"])["title"] == "start end"


def test_title_of_a_blank_message(st):
    ids = st.begin_turn(USER, None, " \n\t ", live())
    assert st.get_conversation(USER, ids["conversation_id"])["title"] == "New chat"


def test_begin_turn_in_an_unknown_conversation(st):
    with pytest.raises(KeyError):
        st.begin_turn(USER, "conv_nope", "Hi", live())
    assert st.list_conversations(USER, 10) == []


def test_begin_turn_while_an_answer_is_streaming(st):
    ids = st.begin_turn(USER, None, "First", live(1))
    with pytest.raises(store.Conflict):
        st.begin_turn(USER, ids["conversation_id"], "Second", live(2))
    messages = st.get_conversation(USER, ids["conversation_id"])["messages"]
    assert [m["content"] for m in messages] == ["First", ""]


RACE_ROUNDS = 10
RACE_WAIT_S = 0.05


def together(db: Database, calls: list) -> list[tuple[object, BaseException | None]]:
    """Run `calls` at once, as two workers (or hosts) would; each one's value or error.

    SQLite stores run their SQL on threads of their own, so greenlets are enough; a
    PostgreSQL store runs it on the caller, which outside a gevent worker blocks its
    thread, so each call gets a thread of its own.
    """
    outcomes: list[tuple[object, BaseException | None]] = [(None, None)] * len(calls)

    def call(n: int) -> None:
        try:
            outcomes[n] = (calls[n](), None)
        except Exception as exc:
            outcomes[n] = (None, exc)

    if db.kind == "sqlite":
        gevent.joinall([gevent.spawn(call, n) for n in range(len(calls))])
    else:
        threads = [threading.Thread(target=call, args=(n,)) for n in range(len(calls))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return outcomes


def test_concurrent_turns_from_two_workers_one_wins(db, monkeypatch):
    # Two stores are two workers (or two hosts): two connections on one database.
    # Each waits for the other right after finding the conversation idle, so both
    # would go on to write unless the first check keeps the second out until it commits.
    # (A barrier before the transaction instead let the calls overlap in 3% of rounds.)
    stores = [db.store(), db.store()]
    barrier = threading.Barrier(2)
    check_idle = store._check_idle
    checks: list[tuple[object, ...]] = []

    def check_then_wait(*args: object) -> None:
        """Check inside the transaction, then wait (briefly) for the other to check too."""
        checks.append(args)
        check_idle(*args)
        # A timeout means the other worker is kept out of its check: go on alone.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=RACE_WAIT_S)

    first = stores[0].begin_turn(USER, None, "First", live(0))
    cid, answer = first["conversation_id"], first["message_id"]
    monkeypatch.setattr(store, "_check_idle", check_then_wait)
    for round_ in range(1, RACE_ROUNDS + 1):
        finished(stores[round_ % 2], answer)
        barrier.reset()
        outcomes = together(
            db,
            [
                functools.partial(
                    st.begin_turn, USER, cid, f"Turn {round_}.{n}", live(2 * round_ + n)
                )
                for n, st in enumerate(stores)
            ],
        )
        kinds = sorted(type(error).__name__ for _, error in outcomes)
        assert kinds == ["Conflict", "NoneType"], (round_, outcomes)
        answer = next(value for value, error in outcomes if error is None)["message_id"]
        messages = stores[0].get_conversation(USER, cid)["messages"]
        assert len(messages) == 2 * (round_ + 1)
        assert [m["id"] for m in messages if m["status"] == "streaming"] == [answer]
    assert len(checks) == 2 * RACE_ROUNDS  # every call went through the rendezvous


def test_concurrent_slot_claims_never_exceed_the_cap(db):
    # Eight workers (or hosts) claim slots of one key at once, over and over: the count
    # and the insert must act as one, or two claims both see room for one more.
    stores = [db.store() for _ in range(8)]
    for round_ in range(5):
        outcomes = together(
            db,
            [
                functools.partial(st.claim_slot, "key:x", f"gen_{round_}_{n}", 3, 60)
                for n, st in enumerate(stores)
            ],
        )
        assert [value for value, _ in outcomes].count(True) == 3, outcomes
        assert db.execute("SELECT COUNT(*) FROM running_generations")[0][0] == 3
        db.execute("DELETE FROM running_generations")


def test_begin_turn_in_an_existing_conversation_keeps_its_title_and_order(st):
    ids = st.begin_turn(USER, None, "First question", live(1))
    finished(st, ids["message_id"], content="First answer")
    second = st.begin_turn(USER, ids["conversation_id"], "Second question", live(2))
    assert second["conversation_id"] == ids["conversation_id"]
    conversation = st.get_conversation(USER, ids["conversation_id"])
    assert conversation["title"] == "First question"
    assert [(m["role"], m["content"], m["status"]) for m in conversation["messages"]] == [
        ("user", "First question", "complete"),
        ("assistant", "First answer", "complete"),
        ("user", "Second question", "complete"),
        ("assistant", "", "streaming"),
    ]
    assert conversation["messages"][3]["id"] == second["message_id"]


# -- finish_answer ---------------------------------------------------------------------


def test_finish_answer_stores_everything(st, db):
    ids = st.begin_turn(USER, None, "Hi", live())
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8, "estimated": True}
    receipt = {"signal": "user_stop", "stop_to_close_ms": 1.25, "tokens_after_stop": 0}
    st.finish_answer(
        ids["message_id"],
        {
            "content": "Hello wor",
            "status": "stopped",
            "reason": "user_stop",
            "usage": usage,
            "receipt": receipt,
        },
    )
    answer = message(st, ids["conversation_id"], ids["message_id"])
    assert answer["content"] == "Hello wor"
    assert answer["status"] == "stopped"
    assert answer["reason"] == "user_stop"
    assert answer["usage"] == usage
    assert answer["receipt"] == receipt
    row = answer_row(db, ids["message_id"])
    assert json.loads(row["usage"]) == usage
    assert json.loads(row["receipt"]) == receipt
    assert row["owner"] is None


def test_finish_answer_without_receipt_or_usage(st):
    ids = st.begin_turn(USER, None, "Hi", live())
    st.finish_answer(
        ids["message_id"], {"content": "Hello", "status": "complete", "reason": None, "usage": None}
    )
    answer = message(st, ids["conversation_id"], ids["message_id"])
    assert (answer["status"], answer["reason"], answer["usage"], answer["receipt"]) == (
        "complete",
        None,
        None,
        None,
    )


def test_finish_answer_allows_a_new_turn(st):
    ids = st.begin_turn(USER, None, "Hi", live(1))
    finished(st, ids["message_id"], status="error", reason="upstream_error", content="")
    second = st.begin_turn(USER, ids["conversation_id"], "Again", live(2))
    assert message(st, ids["conversation_id"], second["message_id"])["status"] == "streaming"


def test_a_new_chat_costs_one_transaction_and_one_statement(db_path):
    """Every chat through `/api/chat` saves its turn and its end on the event loop: the
    turn is one transaction (no update of the conversation it just inserted), the end
    one statement (a transaction of its own), and so is giving its running slot back."""
    st = SqliteStore(db_path)
    st.begin_turn(USER, None, "warm up", live(1))  # the thread migrates; the loop connects
    statements: list[str] = []
    st._loop_connection().set_trace_callback(statements.append)

    def made() -> list[list[str]]:
        done = [s.split(None, 2)[:2] for s in statements]
        statements.clear()
        return done

    ids = st.begin_turn(USER, None, "Hello", live(2))
    turn = made()
    finished(st, ids["message_id"], content="Hi")
    end = made()
    assert st.claim_slot(USER, "gen_2", 3, 60.0)
    made()
    st.release_slot("gen_2")
    release = made()
    st.close()
    assert release == [["DELETE", "FROM"]]
    assert turn == [
        ["BEGIN", "IMMEDIATE"],
        ["INSERT", "INTO"],  # the conversation
        ["INSERT", "INTO"],  # the question
        ["INSERT", "INTO"],  # the answer, streaming
        ["SELECT", "id,"],  # the history the provider is asked with
        ["COMMIT"],
    ]
    assert end == [["UPDATE", "messages"]]


def test_finish_answer_bumps_message_updated_at(st):
    ids = st.begin_turn(USER, None, "Hi", live())
    started = message(st, ids["conversation_id"], ids["message_id"])["updated_at"]
    time.sleep(0.005)
    finished(st, ids["message_id"])
    assert message(st, ids["conversation_id"], ids["message_id"])["updated_at"] > started


# -- list / get / delete ---------------------------------------------------------------


def set_updated_at(db: Database, stamps: dict[str, str]) -> None:
    db = db.raw()
    for conversation_id, stamp in stamps.items():
        db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (stamp, conversation_id))
    db.close()


def new_conversations(st: SqlStore, n: int) -> list[str]:
    ids = []
    for i in range(n):
        turn = st.begin_turn(USER, None, f"Conversation {i}", live(i))
        finished(st, turn["message_id"])
        ids.append(turn["conversation_id"])
    return ids


def utc_now() -> str:
    """Now in the store's timestamp format (ISO 8601, UTC, milliseconds), by the clock."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_list_is_newest_first_by_updated_at(st, db):
    before = utc_now()
    a, b, c = new_conversations(st, 3)
    after = utc_now()
    set_updated_at(db, {a: "2024-01-02T00:00:00.000Z", b: "2024-01-03T00:00:00.000Z"})
    set_updated_at(db, {c: "2024-01-01T00:00:00.000Z"})
    listed = st.list_conversations(USER, 10)
    assert [x["id"] for x in listed] == [b, a, c]
    created_at = listed[0].pop("created_at")
    assert listed[0] == {
        "id": b,
        "title": "Conversation 1",
        "updated_at": "2024-01-03T00:00:00.000Z",
    }
    assert before <= created_at <= after  # when it was made, not when it was last touched


def test_a_new_turn_moves_a_conversation_to_the_top(st, db):
    a, b = new_conversations(st, 2)
    set_updated_at(db, {a: "2024-01-01T00:00:00.000Z", b: "2024-01-02T00:00:00.000Z"})
    assert [x["id"] for x in st.list_conversations(USER, 10)] == [b, a]
    st.begin_turn(USER, a, "Back again", live(99))
    assert [x["id"] for x in st.list_conversations(USER, 10)] == [a, b]


def test_list_respects_limit(st):
    new_conversations(st, 4)
    assert len(st.list_conversations(USER, 3)) == 3
    assert len(st.list_conversations(USER, 10)) == 4


def test_cursor_pages_through_all_conversations_once(st, db):
    ids = new_conversations(st, 11)
    # several share an updated_at, so the id has to break the tie
    set_updated_at(
        db,
        {cid: f"2024-01-0{1 + i // 4}T00:00:00.000Z" for i, cid in enumerate(ids)},
    )
    everything = st.list_conversations(USER, 100)
    assert len(everything) == 11
    expected = sorted(everything, key=lambda c: (c["updated_at"], c["id"]), reverse=True)
    assert everything == expected
    pages, before = [], None
    for _ in range(10):  # bounded: a cursor that never advances must fail, not hang
        page = st.list_conversations(USER, 3, before)
        if not page:
            break
        pages.append(page)
        before = (page[-1]["updated_at"], page[-1]["id"])
    assert [len(p) for p in pages] == [3, 3, 3, 2]
    assert [c for p in pages for c in p] == everything
    assert sorted(c["id"] for p in pages for c in p) == sorted(ids)


def test_get_unknown_conversation(st):
    assert st.get_conversation(USER, "conv_nope") is None


def test_get_conversation_returns_messages_in_order_with_versions(st):
    ids = st.begin_turn(USER, None, "Q1", live(1))
    finished(st, ids["message_id"], content="A1")
    cid = ids["conversation_id"]
    second = st.begin_turn(USER, cid, "Q2", live(2))
    finished(st, second["message_id"], content="A2")
    conversation = st.get_conversation(USER, cid)
    assert set(conversation) == {"id", "title", "created_at", "updated_at", "messages"}
    assert conversation["id"] == cid
    assert [(m["role"], m["content"]) for m in conversation["messages"]] == [
        ("user", "Q1"),
        ("assistant", "A1"),
        ("user", "Q2"),
        ("assistant", "A2"),
    ]
    assert all(m["versions"] == [] for m in conversation["messages"])
    assert all(m["conversation_id"] == cid for m in conversation["messages"])
    assert set(conversation["messages"][0]) == {
        "id",
        "conversation_id",
        "role",
        "content",
        "status",
        "reason",
        "model",
        "usage",
        "receipt",
        "generation_id",
        "created_at",
        "updated_at",
        "versions",
    }


def test_get_conversation_does_not_mix_conversations(st):
    a = st.begin_turn(USER, None, "In A", live(1))
    b = st.begin_turn(USER, None, "In B", live(2))
    assert [m["content"] for m in st.get_conversation(USER, a["conversation_id"])["messages"]] == [
        "In A",
        "",
    ]
    assert [m["id"] for m in st.get_conversation(USER, b["conversation_id"])["messages"]] == [
        b["user_message_id"],
        b["message_id"],
    ]


def test_delete_conversation_cascades(st, db):
    ids = st.begin_turn(USER, None, "Hi", live(1))
    finished(st, ids["message_id"], content="old")
    st.restart_answer(USER, ids["conversation_id"], ids["message_id"], False, live(2))
    other = st.begin_turn(USER, None, "Keep me", live(3))
    db = db.raw()
    assert db.execute("SELECT COUNT(*) FROM message_versions").fetchone()[0] == 1

    assert st.delete_conversation(USER, ids["conversation_id"]) is True

    assert st.get_conversation(USER, ids["conversation_id"]) is None
    assert [c["id"] for c in st.list_conversations(USER, 10)] == [other["conversation_id"]]
    assert (
        db.execute(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (ids["conversation_id"],)
        ).fetchone()[0]
        == 0
    )
    assert db.execute("SELECT COUNT(*) FROM message_versions").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2


def test_delete_unknown_conversation(st):
    assert st.delete_conversation(USER, "conv_nope") is False


def test_delete_twice(st):
    ids = st.begin_turn(USER, None, "Hi", live())
    assert st.delete_conversation(USER, ids["conversation_id"]) is True
    assert st.delete_conversation(USER, ids["conversation_id"]) is False


# -- restart_answer --------------------------------------------------------------------


def stopped_answer(st: SqlStore, text: str = "Hello wor") -> dict:
    ids = st.begin_turn(USER, None, "Say hello", live(1))
    st.finish_answer(
        ids["message_id"],
        {
            "content": text,
            "status": "stopped",
            "reason": "user_stop",
            "usage": {"prompt_tokens": 2, "completion_tokens": 3},
            "receipt": {"signal": "user_stop", "tokens_after_stop": 1},
        },
    )
    return ids


def test_continue_keeps_the_text(st, db):
    ids = stopped_answer(st)
    before = time.time()
    previous = st.restart_answer(
        USER, ids["conversation_id"], ids["message_id"], True, live(2, "worker_b", "other-model")
    )
    assert previous["content"] == "Hello wor"
    assert previous["status"] == "stopped"
    assert previous["generation_id"] == "gen_1"
    answer = message(st, ids["conversation_id"], ids["message_id"])
    assert {k: answer[k] for k in ("content", "status", "reason", "usage", "receipt")} == {
        "content": "Hello wor",
        "status": "streaming",
        "reason": None,
        "usage": None,
        "receipt": None,
    }
    assert (answer["generation_id"], answer["model"]) == ("gen_2", "other-model")
    assert answer["versions"] == []
    row = answer_row(db, ids["message_id"])
    assert row["owner"] == "worker_b"
    assert row["heartbeat_at"] >= before


def test_regenerate_moves_the_old_answer_into_versions(st):
    ids = stopped_answer(st)
    cid, mid = ids["conversation_id"], ids["message_id"]
    old = message(st, cid, mid)
    st.restart_answer(USER, cid, mid, False, live(2))
    answer = message(st, cid, mid)
    assert (answer["content"], answer["status"], answer["generation_id"]) == (
        "",
        "streaming",
        "gen_2",
    )
    assert answer["versions"] == [
        {
            "content": "Hello wor",
            "status": "stopped",
            "reason": "user_stop",
            "usage": {"prompt_tokens": 2, "completion_tokens": 3},
            "receipt": {"signal": "user_stop", "tokens_after_stop": 1},
            "generation_id": "gen_1",
            "created_at": old["updated_at"],
        }
    ]


def test_regenerate_numbers_versions_in_order(st, db):
    ids = stopped_answer(st, "first")
    cid, mid = ids["conversation_id"], ids["message_id"]
    st.restart_answer(USER, cid, mid, False, live(2))
    finished(st, mid, content="second")
    st.restart_answer(USER, cid, mid, False, live(3))
    st.finish_answer(
        mid, {"content": "", "status": "error", "reason": "upstream_error", "usage": None}
    )
    st.restart_answer(USER, cid, mid, False, live(4))
    rows = db.raw().execute(
        "SELECT version, content, status, generation_id FROM message_versions "
        "WHERE message_id = ? ORDER BY version",
        (mid,),
    )
    assert [tuple(r) for r in rows] == [
        (1, "first", "stopped", "gen_1"),
        (2, "second", "complete", "gen_2"),
        (3, "", "error", "gen_3"),
    ]
    answer = message(st, cid, mid)
    assert [(v["content"], v["generation_id"]) for v in answer["versions"]] == [
        ("first", "gen_1"),
        ("second", "gen_2"),
        ("", "gen_3"),
    ]
    assert (answer["content"], answer["generation_id"]) == ("", "gen_4")


def test_versions_are_numbered_per_message(st, db):
    a = stopped_answer(st, "a")
    b = st.begin_turn(USER, None, "Other", live(10))
    finished(st, b["message_id"], content="b")
    st.restart_answer(USER, a["conversation_id"], a["message_id"], False, live(2))
    st.restart_answer(USER, b["conversation_id"], b["message_id"], False, live(11))
    rows = db.raw().execute("SELECT message_id, version FROM message_versions")
    assert sorted(tuple(r) for r in rows) == sorted([(a["message_id"], 1), (b["message_id"], 1)])


def test_continue_after_continue_adds_no_versions(st):
    ids = stopped_answer(st)
    cid, mid = ids["conversation_id"], ids["message_id"]
    st.restart_answer(USER, cid, mid, True, live(2))
    st.finish_answer(
        mid, {"content": "Hello world", "status": "stopped", "reason": "user_stop", "usage": None}
    )
    st.restart_answer(USER, cid, mid, True, live(3))
    answer = message(st, cid, mid)
    assert (answer["content"], answer["versions"]) == ("Hello world", [])


@pytest.mark.parametrize("keep", [True, False])
def test_restart_while_streaming(st, keep):
    ids = st.begin_turn(USER, None, "Hi", live(1))
    with pytest.raises(store.Conflict):
        st.restart_answer(USER, ids["conversation_id"], ids["message_id"], keep, live(2))
    answer = message(st, ids["conversation_id"], ids["message_id"])
    assert (answer["generation_id"], answer["versions"]) == ("gen_1", [])


@pytest.mark.parametrize("keep", [True, False])
def test_restart_unknown_message(st, keep):
    ids = stopped_answer(st)
    with pytest.raises(LookupError) as caught:
        st.restart_answer(USER, ids["conversation_id"], "msg_nope", keep, live(2))
    assert caught.value.args == ("msg_nope",)


def test_restart_a_message_of_another_conversation(st):
    a = stopped_answer(st)
    b = st.begin_turn(USER, None, "Other", live(10))
    finished(st, b["message_id"])
    with pytest.raises(LookupError):
        st.restart_answer(USER, b["conversation_id"], a["message_id"], False, live(2))
    assert message(st, a["conversation_id"], a["message_id"])["versions"] == []


def test_restart_in_an_unknown_conversation(st):
    ids = stopped_answer(st)
    with pytest.raises(KeyError):
        st.restart_answer(USER, "conv_nope", ids["message_id"], True, live(2))


def test_restart_bumps_the_conversation(st, db):
    ids = stopped_answer(st)
    other = st.begin_turn(USER, None, "Newer", live(5))
    finished(st, other["message_id"])
    set_updated_at(
        db,
        {
            ids["conversation_id"]: "2024-01-01T00:00:00.000Z",
            other["conversation_id"]: "2024-01-02T00:00:00.000Z",
        },
    )
    st.restart_answer(USER, ids["conversation_id"], ids["message_id"], True, live(2))
    assert st.list_conversations(USER, 1)[0]["id"] == ids["conversation_id"]


# -- heartbeat -------------------------------------------------------------------------


def age(db: Database, message_id: str, seconds: float) -> None:
    db = db.raw()
    db.execute(
        "UPDATE messages SET heartbeat_at = ? WHERE id = ?", (time.time() - seconds, message_id)
    )
    db.close()


def heartbeat_at(db: Database, message_id: str) -> float | None:
    return answer_row(db, message_id)["heartbeat_at"]


def test_heartbeat_flushes_text_into_streaming_messages_only(st):
    streaming = st.begin_turn(USER, None, "A", live(1))
    done = st.begin_turn(USER, None, "B", live(2))
    finished(st, done["message_id"], content="final")
    lost = st.heartbeat(
        [],
        [
            (streaming["message_id"], "partial text"),
            (done["message_id"], "late text"),
            (done["user_message_id"], "not a streaming message"),
            ("msg_nope", "nobody"),
        ],
        60,
    )
    assert lost == 0
    assert message(st, streaming["conversation_id"], streaming["message_id"])["content"] == (
        "partial text"
    )
    assert message(st, done["conversation_id"], done["message_id"])["content"] == "final"
    assert message(st, done["conversation_id"], done["user_message_id"])["content"] == "B"


def test_heartbeat_flush_bumps_updated_at(st):
    ids = st.begin_turn(USER, None, "A", live(1))
    started = message(st, ids["conversation_id"], ids["message_id"])["updated_at"]
    time.sleep(0.005)
    st.heartbeat([], [(ids["message_id"], "x")], 60)
    assert message(st, ids["conversation_id"], ids["message_id"])["updated_at"] > started


def test_heartbeat_renews_only_the_claimed_streaming_messages(st, db):
    mine = st.begin_turn(USER, None, "Mine", live(1, "worker_a"))
    theirs = st.begin_turn(USER, None, "Theirs", live(2, "worker_b"))
    mine_done = st.begin_turn(USER, None, "Mine, done", live(3, "worker_a"))
    finished(st, mine_done["message_id"])
    for ids in (mine, theirs, mine_done):
        age(db, ids["message_id"], 30)
    old = {ids["message_id"]: heartbeat_at(db, ids["message_id"]) for ids in (theirs, mine_done)}
    before = time.time()

    assert st.heartbeat([mine["message_id"], mine_done["message_id"]], [], 60) == 0

    assert heartbeat_at(db, mine["message_id"]) >= before
    assert heartbeat_at(db, theirs["message_id"]) == old[theirs["message_id"]]
    assert heartbeat_at(db, mine_done["message_id"]) == old[mine_done["message_id"]]


def test_heartbeat_flushing_a_text_renews_its_claim_only_if_claimed(st, db):
    mine = st.begin_turn(USER, None, "Mine", live(1, "worker_a"))
    theirs = st.begin_turn(USER, None, "Theirs", live(2, "worker_b"))
    for ids in (mine, theirs):
        age(db, ids["message_id"], 30)
    old = heartbeat_at(db, theirs["message_id"])
    before = time.time()

    texts = [(mine["message_id"], "my text"), (theirs["message_id"], "their text")]
    assert st.heartbeat([mine["message_id"]], texts, 60) == 0

    assert heartbeat_at(db, mine["message_id"]) >= before
    assert heartbeat_at(db, theirs["message_id"]) == old
    assert message(st, theirs["conversation_id"], theirs["message_id"])["content"] == "their text"


def test_heartbeat_marks_lost_answers_interrupted(st, db):
    mine = st.begin_turn(USER, None, "Mine", live(1, "worker_a"))
    lost1 = st.begin_turn(USER, None, "Lost 1", live(2, "worker_dead"))
    lost2 = st.begin_turn(USER, None, "Lost 2", live(3, "worker_dead"))
    fresh = st.begin_turn(USER, None, "Fresh", live(4, "worker_b"))
    done = st.begin_turn(USER, None, "Done", live(5, "worker_dead"))
    finished(st, done["message_id"], content="Complete answer")
    st.heartbeat([lost1["message_id"]], [(lost1["message_id"], "half an ans")], 60)
    for ids in (mine, lost1, lost2, done):
        age(db, ids["message_id"], 120)
    age(db, fresh["message_id"], 10)

    assert st.heartbeat([mine["message_id"]], [], 60) == 2

    def state(ids):
        m = message(st, ids["conversation_id"], ids["message_id"])
        return m["status"], m["reason"], m["content"]

    assert state(lost1) == ("interrupted", "worker_lost", "half an ans")
    assert state(lost2) == ("interrupted", "worker_lost", "")
    assert state(mine) == ("streaming", None, "")
    assert state(fresh) == ("streaming", None, "")
    assert state(done) == ("complete", None, "Complete answer")
    # the sweep is done: a second beat finds nothing more
    assert st.heartbeat([mine["message_id"]], [], 60) == 0


def test_a_worker_that_was_presumed_lost_does_not_revive_its_answer(st, db):
    ids = st.begin_turn(USER, None, "Hi", live(1, "worker_slow"))
    claim = [ids["message_id"]]
    st.heartbeat(claim, [(ids["message_id"], "before")], 60)
    age(db, ids["message_id"], 120)
    assert st.heartbeat([], [], 60) == 1
    swept_at = heartbeat_at(db, ids["message_id"])

    assert st.heartbeat(claim, [(ids["message_id"], "before and after")], 60) == 0

    answer = message(st, ids["conversation_id"], ids["message_id"])
    assert (answer["status"], answer["reason"], answer["content"]) == (
        "interrupted",
        "worker_lost",
        "before",
    )
    assert heartbeat_at(db, ids["message_id"]) == swept_at


def test_a_lost_answer_no_longer_blocks_a_new_turn(st, db):
    ids = st.begin_turn(USER, None, "Hi", live(1, "worker_dead"))
    age(db, ids["message_id"], 120)
    assert st.heartbeat([], [], 60) == 1
    second = st.begin_turn(USER, ids["conversation_id"], "Hello?", live(2))
    assert message(st, ids["conversation_id"], second["message_id"])["status"] == "streaming"


def test_heartbeat_never_marks_its_own_answers_lost(st, db):
    ids = st.begin_turn(USER, None, "Hi", live(1, "worker_a"))
    age(db, ids["message_id"], 120)
    claim = [ids["message_id"]]
    assert st.heartbeat(claim, [(ids["message_id"], "still here")], 60) == 0
    answer = message(st, ids["conversation_id"], ids["message_id"])
    assert (answer["status"], answer["content"]) == ("streaming", "still here")


def test_heartbeat_accepts_a_generator(st):
    ids = st.begin_turn(USER, None, "Hi", live(1))
    st.heartbeat([], (pair for pair in [(ids["message_id"], "from a generator")]), 60)
    assert message(st, ids["conversation_id"], ids["message_id"])["content"] == "from a generator"


# -- amend_stop ------------------------------------------------------------------


def ended(st: SqlStore, status: str, reason: str | None, text: str, n: int = 1) -> dict:
    ids = st.begin_turn(USER, None, "Hi", live(n))
    receipt = {"signal": reason, "stop_to_close_ms": 2.5, "tokens_after_stop": 1}
    st.finish_answer(
        ids["message_id"],
        {
            "content": text,
            "status": status,
            "reason": reason,
            "usage": {"prompt_tokens": 1, "completion_tokens": 4},
            "receipt": receipt if status == "stopped" else None,
        },
    )
    return ids


def test_amend_stop_cuts_to_what_the_user_saw(st):
    ended(st, "stopped", "client_disconnect", "Hello, world and more")
    amended = st.amend_stop(USER, "gen_1", 12)
    assert amended["content"] == "Hello, world"
    assert amended["status"] == "stopped"
    assert amended["reason"] == "user_stop"
    assert amended["receipt"] == {
        "signal": "user_stop",
        "stop_to_close_ms": 2.5,
        "tokens_after_stop": 1,
    }
    assert amended["usage"] == {"prompt_tokens": 1, "completion_tokens": 4}
    assert by_generation(st, "gen_1") == amended


def test_amend_stop_without_seen_chars_keeps_everything(st):
    ended(st, "stopped", "client_disconnect", "Hello, world")
    amended = st.amend_stop(USER, "gen_1", None)
    assert (amended["content"], amended["reason"], amended["receipt"]["signal"]) == (
        "Hello, world",
        "user_stop",
        "user_stop",
    )


def test_amend_stop_with_more_seen_than_written_keeps_everything(st):
    ended(st, "stopped", "client_disconnect", "Hello")
    assert st.amend_stop(USER, "gen_1", 500)["content"] == "Hello"


def test_amend_stop_with_nothing_seen(st):
    ended(st, "stopped", "client_disconnect", "Hello")
    assert st.amend_stop(USER, "gen_1", 0)["content"] == ""


def test_amend_stop_counts_characters_not_bytes(st):
    ended(st, "stopped", "client_disconnect", "héllo 👋 wörld")
    assert st.amend_stop(USER, "gen_1", 7)["content"] == "héllo 👋"


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("complete", None),
        ("error", "upstream_error"),
        ("stopped", "user_stop"),
        ("stopped", "shutdown"),
        ("interrupted", "client_disconnect"),
    ],
)
def test_amend_stop_leaves_other_endings_alone(st, status, reason):
    ended(st, status, reason, "Hello, world")
    before = by_generation(st, "gen_1")
    assert st.amend_stop(USER, "gen_1", 3) == before
    assert before["content"] == "Hello, world"
    assert before["reason"] == reason


def test_amend_stop_leaves_a_streaming_answer_alone(st):
    ids = st.begin_turn(USER, None, "Hi", live(1))
    st.heartbeat([], [(ids["message_id"], "partial")], 60)
    amended = st.amend_stop(USER, "gen_1", 2)
    assert (amended["status"], amended["reason"], amended["content"]) == (
        "streaming",
        None,
        "partial",
    )


def test_amend_stop_touches_only_its_generation(st):
    ended(st, "stopped", "client_disconnect", "first", n=1)
    ended(st, "stopped", "client_disconnect", "second", n=2)
    st.amend_stop(USER, "gen_1", 2)
    other = by_generation(st, "gen_2")
    assert (other["content"], other["reason"]) == ("second", "client_disconnect")


def test_amend_stop_unknown_generation(st):
    assert st.amend_stop(USER, "gen_nope", 3) is None


# -- plumbing --------------------------------------------------------------------------


def test_two_stores_share_one_database(db):
    a, b = db.store(), db.store()
    ids = a.begin_turn(USER, None, "Hi", live(1))
    assert b.get_conversation(USER, ids["conversation_id"])["messages"][0]["content"] == "Hi"
    with pytest.raises(store.Conflict):
        b.begin_turn(USER, ids["conversation_id"], "Again", live(2))


def test_new_id():
    first, second = store.new_id("conv"), store.new_id("conv")
    assert first.startswith("conv_")
    assert len(first) == len("conv_") + 22  # 16 bytes, urlsafe base64 without padding
    assert first != second


def test_now_iso_is_utc_with_milliseconds():
    stamp = store.now_iso()
    assert len(stamp) == len("2024-01-01T00:00:00.000Z")
    assert stamp.endswith("Z")
    assert stamp[10] == "T"
    assert stamp[19] == "."


def test_version_1_files_upgrade_keeping_their_rows_owned_by_nobody(db_path, monkeypatch):
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
    db = connect(db_path)
    db.execute(
        "INSERT INTO conversations (id, title, created_at, updated_at) "
        "VALUES ('conv_old', 'Old', 't', 't')"
    )
    db.execute(
        "INSERT INTO messages (id, conversation_id, seq, role, content, status, created_at, "
        "updated_at) VALUES ('msg_old', 'conv_old', 1, 'user', 'hi', 'complete', 't', 't')"
    )
    db.close()
    monkeypatch.undo()
    upgraded = SqliteStore(db_path)
    # Saved before identities existed: kept, and seen by no one.
    assert upgraded.list_conversations(USER, 10) == []
    assert upgraded.get_conversation("", "conv_old")["messages"][0]["content"] == "hi"
    columns = [r[1] for r in raw(db_path).execute("PRAGMA table_info(messages)")]
    assert "base_chars" in columns


def test_a_late_stop_of_a_continuation_cuts_after_the_kept_text(st):
    ids = st.begin_turn(USER, None, "hi", live(1))
    finished(st, ids["message_id"], content="Hello", status="stopped", reason="user_stop")
    st.restart_answer(
        USER, ids["conversation_id"], ids["message_id"], True, {**live(2), "base_chars": 5}
    )
    finished(
        st,
        ids["message_id"],
        content="Hello there, world",
        status="stopped",
        reason="client_disconnect",
    )
    assert st.amend_stop(USER, "gen_2", 6)["content"] == "Hello there"


# -- ownership -------------------------------------------------------------------------


def test_another_users_conversation_behaves_like_an_unknown_one(st):
    ids = stopped_answer(st)
    cid, mid = ids["conversation_id"], ids["message_id"]
    assert st.list_conversations(OTHER, 10) == []
    assert st.get_conversation(OTHER, cid) is None
    assert st.delete_conversation(OTHER, cid) is False
    with pytest.raises(KeyError):
        st.begin_turn(OTHER, cid, "mine now?", live(5))
    with pytest.raises(KeyError):
        st.restart_answer(OTHER, cid, mid, False, live(6))
    # Nothing of it changed for its owner.
    assert [c["id"] for c in st.list_conversations(USER, 10)] == [cid]
    assert len(st.get_conversation(USER, cid)["messages"]) == 2


def test_another_user_cannot_amend_a_stop(st):
    ended(st, "stopped", "client_disconnect", "Hello, world")
    assert st.amend_stop(OTHER, "gen_1", 2) is None
    assert by_generation(st, "gen_1")["reason"] == "client_disconnect"


def test_lists_page_by_owner(st):
    mine = [st.begin_turn(USER, None, f"Q{n}", live(n))["conversation_id"] for n in range(3)]
    theirs = st.begin_turn(OTHER, None, "Theirs", live(9))["conversation_id"]
    first = st.list_conversations(USER, 2)
    rest = st.list_conversations(USER, 2, (first[-1]["updated_at"], first[-1]["id"]))
    assert sorted(c["id"] for c in first + rest) == sorted(mine)
    assert [c["id"] for c in st.list_conversations(OTHER, 10)] == [theirs]


# -- limits shared by the workers ------------------------------------------------------


def test_rate_windows_count_and_expire(st):
    assert st.hits("k") == (0, pytest.approx(time.time(), abs=1))
    assert st.hit("k", 60) == 1
    assert st.hit("k", 60, amount=2) == 3
    hits, expires_at = st.hits("k")
    assert hits == 3 and expires_at == pytest.approx(time.time() + 60, abs=2)
    assert st.hit("short", 0.05) == 1
    time.sleep(0.06)
    assert st.hits("short")[0] == 0
    assert st.hit("short", 60) == 1  # a new window
    st.clear_hits("k")
    assert st.hits("k")[0] == 0


def test_running_slots_are_capped_per_key_and_shared(db):
    a, b = db.store(), db.store()  # two workers
    assert a.claim_slot("key:x", "gen_1", 2, 60)
    assert b.claim_slot("key:x", "gen_2", 2, 60)
    assert not a.claim_slot("key:x", "gen_3", 2, 60)
    assert b.claim_slot("key:y", "gen_4", 2, 60)  # another identity is not affected
    b.release_slot("gen_2")
    assert a.claim_slot("key:x", "gen_3", 2, 60)


def test_a_dead_workers_slots_free_themselves_unless_renewed(st, db):
    assert st.claim_slot("key:x", "gen_1", 1, 60)
    assert st.claim_slot("key:z", "gen_2", 1, 60)
    db = db.raw()
    db.execute("UPDATE running_generations SET heartbeat_at = heartbeat_at - 120")
    db.close()
    st.heartbeat([], [], 60, slots=["gen_2"])  # gen_2's worker still beats
    assert st.claim_slot("key:x", "gen_3", 1, 60)  # gen_1 went stale: freed
    assert not st.claim_slot("key:z", "gen_4", 1, 60)


def test_the_log_starts_over_while_chats_are_saved_on_the_loop(db_path, monkeypatch):
    """The event loop's connection never checkpoints: the thread does, every
    CHECKPOINT_EVERY calls, so the write-ahead log starts over instead of growing with
    every chat; the loop's writes wait for it rather than go to the thread, and nothing
    saved is lost."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 20)
    st = SqliteStore(db_path)
    fill_the_log(st, 1)  # the thread migrates; the loop connects
    on_the_thread = []
    with_db = st._with_db
    monkeypatch.setattr(st, "_with_db", lambda fn, *a: on_the_thread.append(fn) or with_db(fn, *a))
    largest = 0
    for n in range(1, 401):  # ~28 MB of log pages without checkpoints
        fill_the_log(st, 1, first=n)
        largest = max(largest, os.path.getsize(db_path + "-wal"))
        gevent.sleep(0.001)  # a worker does other work between two chats
    assert largest < 4 * 1024 * 1024
    assert on_the_thread == []  # no chat's statements went to the thread
    st.close()  # the last connection: SQLite checkpoints and removes the log
    answers = raw(db_path).execute("SELECT content FROM messages WHERE role = 'assistant'")
    assert [a["content"] for a in answers] == [f"answer {n}" for n in range(401)]


def fill_the_log(st: SqliteStore, chats: int, first: int = 0) -> None:
    for n in range(first, first + chats):
        ids = st.begin_turn(USER, None, f"question {n} " + "words " * 50, live(n))
        finished(st, ids["message_id"], content=f"answer {n}")


def test_readers_that_keep_the_log_from_starting_over_hold_writers_off_briefly(
    db_path, monkeypatch, caplog
):
    """A checkpoint waits for readers, and writers wait for it: for CHECKPOINT_WAIT_MS,
    not the 10 s busy timeout; then it gives up till next time, and says so once the
    log is past WAL_SIZE_LIMIT."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 10**9)
    monkeypatch.setattr(sqlite_store, "WAL_SIZE_LIMIT", 1024 * 1024)
    st = SqliteStore(db_path)
    fill_the_log(st, 20)
    reader = raw(db_path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM messages").fetchone()  # a snapshot held open
    fill_the_log(st, 40, first=20)  # frames the reader's snapshot does not have
    began = time.monotonic()
    st._checkpoint(gevent.event.Event())
    assert time.monotonic() - began < 2
    assert "readers keep it from starting over" in caplog.text
    reader.rollback()
    caplog.clear()
    st._checkpoint(gevent.event.Event())
    assert caplog.text == ""
    fill_the_log(st, 1, first=60)  # the log starts over
    assert raw(db_path).execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1] < 20
    st.close()


def test_a_failed_checkpoint_is_logged_and_chats_go_on(db_path, monkeypatch, caplog):
    def broken(db):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 4)
    monkeypatch.setattr(sqlite_store, "_checkpoint", broken)
    st = SqliteStore(db_path)
    for n in range(6):
        fill_the_log(st, 1, first=n)
        gevent.sleep(0)  # the checkpoint's greenlet runs
    # Before closing: a checkpoint the thread reaches after close() finds no connection
    # and has nothing to log (a busy machine's thread can be that late).
    wait_until(lambda: "checkpointing" in caplog.text, timeout=10)
    st.close()
    assert "checkpointing" in caplog.text and "disk I/O error" in caplog.text
    assert len(raw(db_path).execute("SELECT id FROM conversations").fetchall()) == 6
