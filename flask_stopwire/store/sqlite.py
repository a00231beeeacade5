"""Conversations and messages in SQLite, off the event loop.

sqlite3 calls block the OS thread, and under gevent that would stall every stream of
the worker. So each worker runs all of its database work on one thread of its own
(gevent's ThreadPool): the calling greenlet waits cooperatively and the others go on.
One connection on one thread also means no locking inside a worker; between workers,
WAL mode and a busy timeout let readers and the single writer get along.

Timestamps are ISO 8601 UTC strings for people; `heartbeat_at` is epoch seconds
because workers compare it with their own clock to find owners that died.
"""

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from gevent.threadpool import ThreadPool

from flask_stopwire.store.migrations import migrate

BUSY_TIMEOUT_MS = 10_000
TITLE_CHARS = 60


class Conflict(Exception):
    """The conversation already has a generation streaming."""


def new_id(prefix: str) -> str:
    """An unguessable id: 128 random bits."""
    return f"{prefix}_{secrets.token_urlsafe(16)}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SqliteStore:
    """The store interface, on SQLite; every public method is safe to call from any greenlet."""

    def __init__(self, path: str):
        self.path = path
        self._pool: ThreadPool | None = None
        self._pid: int | None = None
        self._db: sqlite3.Connection | None = None

    # -- conversations ----------------------------------------------------------------

    def list_conversations(
        self, limit: int, before: tuple[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Newest first (by last activity); `before` is the (updated_at, id) of the last seen."""
        return self._run(_list_conversations, limit, before)

    def get_conversation(self, conversation_id: str) -> dict[str, Any] | None:
        """The conversation with its messages (and their earlier versions), or None."""
        return self._run(_get_conversation, conversation_id)

    def delete_conversation(self, conversation_id: str) -> bool:
        """Delete it and its messages; False if there was none."""
        return self._run(_delete_conversation, conversation_id)

    # -- a generation's life ------------------------------------------------------------

    def begin_turn(self, conversation_id: str | None, content: str, live: dict) -> dict:
        """Save the user's message and an empty `streaming` answer, atomically.

        Creates the conversation when `conversation_id` is None. Raises KeyError for
        an unknown conversation, Conflict when one of its answers is still streaming.
        """
        return self._run(_begin_turn, conversation_id, content, live)

    def restart_answer(self, conversation_id: str, message_id: str, keep: bool, live: dict) -> dict:
        """Mark an existing answer `streaming` again: `keep` its text (continue) or
        move it to the message's versions and start empty (regenerate).

        A continue's `live["base_chars"]` says how much of the kept text the new
        generation extends (default: all of it)."""
        return self._run(_restart_answer, conversation_id, message_id, keep, live)

    def heartbeat(self, owner: str, texts: Iterable[tuple[str, str]], stale_s: float) -> int:
        """Flush partial texts, renew this owner's claim on its streaming answers, and
        mark answers whose owner stopped beating `interrupted` (`worker_lost`).

        Returns how many lost answers were marked."""
        return self._run(_heartbeat, owner, list(texts), stale_s)

    def finish_answer(self, message_id: str, fields: dict[str, Any]) -> None:
        """Store the final text, status, reason, usage and receipt in one transaction."""
        self._run(_finish_answer, message_id, fields)

    def amend_stop(self, generation_id: str, seen_chars: int | None) -> dict[str, Any] | None:
        """A user's stop that arrived after its disconnect was seen: record it as the
        user's, cut to what they saw. Returns the message's final state, or None."""
        return self._run(_amend_stop, generation_id, seen_chars)

    def message_by_generation(self, generation_id: str) -> dict[str, Any] | None:
        """The answer a generation wrote, or None."""
        return self._run(_message_by_generation, generation_id)

    def close(self) -> None:
        """Close the connection on its own thread, then the thread."""
        if self._pool is None or self._pid != os.getpid():
            return
        if self._db is not None:
            self._pool.apply(self._db.close)
            self._db = None
        self._pool.kill()
        self._pool, self._pid = None, None

    # -- plumbing -----------------------------------------------------------------------

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._pid != os.getpid():  # first use, or first use after a fork
            self._pid, self._db = os.getpid(), None
            self._pool = ThreadPool(1)
        return self._pool.apply(self._with_db, (fn, *args))

    def _with_db(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._db is None:
            self._db = connect(self.path)
        return fn(self._db, *args)


def connect(path: str) -> sqlite3.Connection:
    """A connection in WAL mode with a busy timeout, the schema brought up to date."""
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoints, fast
    db.execute("PRAGMA foreign_keys = ON")
    migrate(db)
    return db


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: take the write lock up front so checks and writes agree."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, *_: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


MESSAGE_COLUMNS = (
    "id, conversation_id, role, content, status, reason, model, usage, receipt, "
    "generation_id, created_at, updated_at"
)


def _message(row: sqlite3.Row) -> dict[str, Any]:
    message = dict(row)
    for key in ("usage", "receipt"):
        message[key] = json.loads(message[key]) if message.get(key) else None
    return message


def _list_conversations(db, limit, before):
    if before is None:
        rows = db.execute(
            "SELECT id, title, created_at, updated_at FROM conversations "
            "ORDER BY updated_at DESC, id DESC LIMIT ?",
            (limit,),
        )
    else:
        rows = db.execute(
            "SELECT id, title, created_at, updated_at FROM conversations "
            "WHERE (updated_at, id) < (?, ?) ORDER BY updated_at DESC, id DESC LIMIT ?",
            (*before, limit),
        )
    return [dict(row) for row in rows]


def _get_conversation(db, conversation_id):
    row = db.execute(
        "SELECT id, title, created_at, updated_at FROM conversations WHERE id = ?",
        (conversation_id,),
    ).fetchone()
    if row is None:
        return None
    messages = [
        _message(r)
        for r in db.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY seq",
            (conversation_id,),
        )
    ]
    versions: dict[str, list] = {}
    for r in db.execute(
        "SELECT v.message_id, v.content, v.status, v.reason, v.usage, v.receipt, "
        "v.generation_id, v.created_at FROM message_versions v "
        "JOIN messages m ON m.id = v.message_id WHERE m.conversation_id = ? "
        "ORDER BY v.message_id, v.version",
        (conversation_id,),
    ):
        version = _message(r)
        versions.setdefault(version.pop("message_id"), []).append(version)
    for message in messages:
        message["versions"] = versions.get(message["id"], [])
    return {**dict(row), "messages": messages}


def _delete_conversation(db, conversation_id):
    with _Transaction(db):
        return db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount > 0


def _begin_turn(db, conversation_id, content, live):
    stamp = now_iso()
    with _Transaction(db):
        if conversation_id is None:
            conversation_id = new_id("conv")
            title = " ".join(content.split())[:TITLE_CHARS].rstrip() or "New chat"
            db.execute(
                "INSERT INTO conversations (id, title, created_at, updated_at) VALUES (?, ?, ?, ?)",
                (conversation_id, title, stamp, stamp),
            )
        else:
            _check_idle(db, conversation_id)
        user_id = _insert_message(db, conversation_id, "user", content, "complete", stamp, {})
        answer_id = _insert_message(db, conversation_id, "assistant", "", "streaming", stamp, live)
        db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (stamp, conversation_id))
    return {"conversation_id": conversation_id, "user_id": user_id, "message_id": answer_id}


def _check_idle(db, conversation_id):
    exists = db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
    if exists is None:
        raise KeyError(conversation_id)
    busy = db.execute(
        "SELECT 1 FROM messages WHERE conversation_id = ? AND status = 'streaming'",
        (conversation_id,),
    ).fetchone()
    if busy is not None:
        raise Conflict("this conversation already has an answer streaming")


def _insert_message(db, conversation_id, role, content, status, stamp, live):
    message_id = new_id("msg")
    db.execute(
        "INSERT INTO messages (id, conversation_id, seq, role, content, status, model, "
        "generation_id, owner, heartbeat_at, created_at, updated_at) "
        "VALUES (?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE conversation_id = ?),"
        " ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message_id,
            conversation_id,
            conversation_id,
            role,
            content,
            status,
            live.get("model"),
            live.get("generation_id"),
            live.get("owner"),
            time.time() if live else None,
            stamp,
            stamp,
        ),
    )
    return message_id


def _restart_answer(db, conversation_id, message_id, keep, live):
    stamp = now_iso()
    with _Transaction(db):
        _check_idle(db, conversation_id)
        row = db.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ? AND conversation_id = ?",
            (message_id, conversation_id),
        ).fetchone()
        if row is None:
            raise LookupError(message_id)
        message = _message(row)
        if not keep:
            db.execute(
                "INSERT INTO message_versions (message_id, version, content, status, reason, "
                "usage, receipt, generation_id, created_at) VALUES (?, (SELECT COALESCE("
                "MAX(version), 0) + 1 FROM message_versions WHERE message_id = ?), ?, ?, ?, ?, ?,"
                " ?, ?)",
                (
                    message_id,
                    message_id,
                    row["content"],
                    row["status"],
                    row["reason"],
                    row["usage"],
                    row["receipt"],
                    row["generation_id"],
                    row["updated_at"],
                ),
            )
        db.execute(
            "UPDATE messages SET content = ?, status = 'streaming', reason = NULL, usage = NULL, "
            "receipt = NULL, model = ?, generation_id = ?, owner = ?, heartbeat_at = ?, "
            "updated_at = ?, base_chars = ? WHERE id = ?",
            (
                message["content"] if keep else "",
                live["model"],
                live["generation_id"],
                live["owner"],
                time.time(),
                stamp,
                live.get("base_chars", len(message["content"])) if keep else 0,
                message_id,
            ),
        )
        db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (stamp, conversation_id))
    return message


def _heartbeat(db, owner, texts, stale_s):
    now = time.time()
    with _Transaction(db):
        db.executemany(
            "UPDATE messages SET content = ?, updated_at = ? WHERE id = ? AND status = 'streaming'",
            [(text, now_iso(), message_id) for message_id, text in texts],
        )
        db.execute(
            "UPDATE messages SET heartbeat_at = ? WHERE owner = ? AND status = 'streaming'",
            (now, owner),
        )
        return db.execute(
            "UPDATE messages SET status = 'interrupted', reason = 'worker_lost', updated_at = ? "
            "WHERE status = 'streaming' AND heartbeat_at < ?",
            (now_iso(), now - stale_s),
        ).rowcount


def _finish_answer(db, message_id, fields):
    with _Transaction(db):
        db.execute(
            "UPDATE messages SET content = ?, status = ?, reason = ?, usage = ?, receipt = ?, "
            "owner = NULL, updated_at = ? WHERE id = ?",
            (
                fields["content"],
                fields["status"],
                fields["reason"],
                json.dumps(fields["usage"]),
                json.dumps(fields["receipt"]) if fields.get("receipt") else None,
                now_iso(),
                message_id,
            ),
        )


def _amend_stop(db, generation_id, seen_chars):
    with _Transaction(db):
        db.execute(
            "UPDATE messages SET reason = 'user_stop', "
            "content = CASE WHEN ? IS NULL THEN content "
            "ELSE substr(content, 1, base_chars + ?) END, "
            "receipt = json_set(receipt, '$.signal', 'user_stop'), updated_at = ? "
            "WHERE generation_id = ? AND status = 'stopped' AND reason = 'client_disconnect'",
            (seen_chars, seen_chars, now_iso(), generation_id),
        )
        return _message_by_generation(db, generation_id)


def _message_by_generation(db, generation_id):
    row = db.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE generation_id = ?", (generation_id,)
    ).fetchone()
    return _message(row) if row else None
