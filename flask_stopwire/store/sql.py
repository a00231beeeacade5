"""The store interface and its SQL, once for SQLite and PostgreSQL.

`SqlStore` holds every public method; a subclass says only how a call reaches a
connection (`_run`): SQLite on a thread of its own, PostgreSQL on the calling greenlet
with a cooperative driver. The statements below are written once, with `?` parameters,
and run unchanged on both, except for the few places a `Dialect` names: how a write
transaction begins, how a conversation is locked for a new turn, a lock per limit key,
and how a JSON field is set.

Timestamps are ISO 8601 UTC strings for people; `heartbeat_at` is epoch seconds
because workers compare it with their own clock to find owners that died.
"""

import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

TITLE_CHARS = 60


class Conflict(Exception):
    """The conversation already has a generation streaming."""


def new_id(prefix: str) -> str:
    """An unguessable id: 128 random bits."""
    return f"{prefix}_{secrets.token_urlsafe(16)}"


def now_iso() -> str:
    """Now as the store writes it: ISO 8601, UTC, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Dialect:
    """What differs between the two databases; everything else is shared SQL."""

    name: str
    begin: str  # a write transaction whose checks and writes agree
    lock_row: str  # appended to the SELECT that finds a conversation for a new turn
    lock_key: str  # a statement taking a transaction lock on one key; "" if BEGIN did
    lock_migrations: str  # the same for the one migrator at a time
    set_signal: str  # the receipt JSON with its signal set to 'user_stop'
    types: tuple[tuple[str, str], ...] = ()  # DDL type words rewritten for this database

    def ddl(self, script: str) -> str:
        """A migration's script in this database's types."""
        for word, replacement in self.types:
            script = re.sub(rf"\b{word}\b", replacement, script)
        return script


# One writer at a time: BEGIN IMMEDIATE takes the file's write lock up front.
SQLITE = Dialect(
    name="sqlite",
    begin="BEGIN IMMEDIATE",
    lock_row="",
    lock_key="",
    lock_migrations="",
    set_signal="json_set(receipt, '$.signal', 'user_stop')",
)

# Many writers: a new turn locks its conversation's row, a slot claim its key, so two
# hosts cannot both pass a check and then both write. REAL is 4 bytes in PostgreSQL
# (epoch seconds need 8); "C" collation orders ids and timestamps bytewise, as SQLite does.
POSTGRES = Dialect(
    name="postgresql",
    begin="BEGIN",
    lock_row=" FOR UPDATE",
    # Advisory locks held until COMMIT; the first key is Stopwire's lock class.
    lock_key="SELECT pg_advisory_xact_lock(1398230530, hashtext(?))",
    lock_migrations="SELECT pg_advisory_xact_lock(1398230531, 0)",
    set_signal="jsonb_set(receipt::jsonb, '{signal}', '\"user_stop\"')::text",
    types=(("REAL", "DOUBLE PRECISION"), ("TEXT", 'TEXT COLLATE "C"')),
)


def dialect_of(db: Any) -> Dialect:
    """The dialect of a connection: a PostgreSQL one says so, a sqlite3 one cannot."""
    return getattr(db, "dialect", SQLITE)


class Transaction:
    """The dialect's BEGIN ... COMMIT, rolled back on any error."""

    def __init__(self, db: Any):
        self.db = db

    def __enter__(self) -> Any:
        self.db.execute(dialect_of(self.db).begin)
        return self.db

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


class SqlStore:
    """The store interface; every public method is safe to call from any greenlet."""

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Release this process's connections."""
        raise NotImplementedError

    def open_connections(self) -> int:
        """How many database connections this process holds open (a pool grows to its
        size under load and keeps them: not a leak)."""
        raise NotImplementedError

    # -- conversations ----------------------------------------------------------------

    # Every method that reads or changes a conversation takes the `user_id` that owns
    # it: another user's conversation behaves exactly like one that does not exist.

    def list_conversations(
        self, user_id: str, limit: int, before: tuple[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Newest first (by last activity); `before` is the (updated_at, id) of the last seen."""
        return self._run(_list_conversations, user_id, limit, before)

    def get_conversation(self, user_id: str, conversation_id: str) -> dict[str, Any] | None:
        """The conversation with its messages (and their earlier versions), or None."""
        return self._run(_get_conversation, user_id, conversation_id)

    def delete_conversation(self, user_id: str, conversation_id: str) -> bool:
        """Delete it and its messages; False if there was none."""
        return self._run(_delete_conversation, user_id, conversation_id)

    # -- a generation's life ------------------------------------------------------------

    def begin_turn(
        self,
        user_id: str,
        conversation_id: str | None,
        content: str,
        live: dict,
        pending: tuple[dict, float] | None = None,
    ) -> dict:
        """Save the user's message and an empty `streaming` answer, atomically, and return
        their ids with the conversation's messages as they now stand.

        Creates the conversation when `conversation_id` is None. Raises KeyError for
        an unknown conversation, Conflict when one of its answers is still streaming.
        With `pending` (a request and how long it waits) the answer waits for a worker
        to take it (`take_pending`), claimed by nobody until then: its heartbeat is
        set to when it expires, so no sweep takes it for lost before.
        """
        return self._run(_begin_turn, user_id, conversation_id, content, live, pending)

    def add_pending(
        self, generation_id: str, user_id: str, message_id: str | None, request: dict, ttl_s: float
    ) -> None:
        """Keep a generation's request until a worker takes it, for at most `ttl_s`."""
        self._run(_add_pending, generation_id, user_id, message_id, request, ttl_s)

    def take_pending(self, user_id: str, generation_id: str, owner: str) -> dict | None:
        """Take `user_id`'s pending generation to run it (its answer becomes `streaming`,
        claimed by `owner`); None when there is none, another worker took it, or it
        expired."""
        return self._run(_take_pending, user_id, generation_id, owner)

    def drop_pending(self, user_id: str, generation_id: str) -> dict[str, Any] | None:
        """Stop a generation nobody viewed yet: the provider was never asked, its answer
        is saved empty, stopped by the user. Returns that answer ({} when it has none),
        or None when there was no such pending generation."""
        return self._run(_drop_pending, user_id, generation_id)

    def find_answer(self, user_id: str, generation_id: str) -> dict[str, Any] | None:
        """The answer `user_id`'s generation writes or wrote, or None."""
        return self._run(_find_answer, user_id, generation_id)

    def restart_answer(
        self, user_id: str, conversation_id: str, message_id: str, keep: bool, live: dict
    ) -> dict:
        """Mark an existing answer `streaming` again: `keep` its text (continue) or
        move it to the message's versions and start empty (regenerate).

        A continue's `live["base_chars"]` says how much of the kept text the new
        generation extends (default: all of it)."""
        return self._run(_restart_answer, user_id, conversation_id, message_id, keep, live)

    def heartbeat(
        self,
        claims: Iterable[str],
        texts: Iterable[tuple[str, str]],
        stale_s: float,
        slots: Iterable[str] = (),
        sweep: bool = True,
    ) -> int:
        """Flush partial texts, renew the claim on the answers a worker still tracks
        (`claims`, message ids) and on its running generations' slots (`slots`,
        generation ids), and mark streaming answers nobody claimed for `stale_s`
        `interrupted` (`worker_lost`).

        Returns how many lost answers were marked. With `sweep` False those answers
        are only rewritten as they are, and counted: a write that shows the database
        takes writes again, while their owners are given time to renew their claims."""
        return self._run(_heartbeat, list(claims), list(texts), stale_s, list(slots), sweep)

    def finish_answer(self, message_id: str, fields: dict[str, Any]) -> None:
        """Store the final text, status, reason, usage and receipt in one transaction."""
        self._run(_finish_answer, message_id, fields)

    def amend_stop(
        self, user_id: str, generation_id: str, seen_chars: int | None
    ) -> dict[str, Any] | None:
        """A user's stop that arrived after its disconnect was seen: record it as the
        user's, cut to what they saw. Returns the message's final state, or None."""
        return self._run(_amend_stop, user_id, generation_id, seen_chars)

    # -- limits shared by the workers ----------------------------------------------------

    def hit(self, key: str, window_s: float, amount: int = 1) -> int:
        """Count `amount` hits in `key`'s current window (a new one if it expired)."""
        return self._run(_hit, key, window_s, amount)

    def hits(self, key: str) -> tuple[int, float]:
        """Hits in `key`'s current window and when it expires (0 and now if none)."""
        return self._run(_hits, key)

    def clear_hits(self, key: str) -> None:
        """Forget `key`'s window."""
        self._run(_clear_hits, key)

    def claim_slot(self, limit_key: str, generation_id: str, cap: int, stale_s: float) -> bool:
        """Take one of `limit_key`'s `cap` running-generation slots; False if all are taken.

        Slots whose worker stopped renewing them for `stale_s` are freed first."""
        return self._run(_claim_slot, limit_key, generation_id, cap, stale_s)

    def release_slot(self, generation_id: str) -> None:
        """Give a finished generation's slot back."""
        self._run(_release_slot, generation_id)


NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "estimated": True}

MESSAGE_COLUMNS = (
    "id, conversation_id, role, content, status, reason, model, usage, receipt, "
    "generation_id, created_at, updated_at"
)


def _message(row: Any) -> dict[str, Any]:
    message = dict(row)
    for key in ("usage", "receipt"):
        message[key] = json.loads(message[key]) if message.get(key) else None
    return message


def _list_conversations(db, user_id, limit, before):
    if before is None:
        rows = db.execute(
            "SELECT id, title, created_at, updated_at FROM conversations WHERE user_id = ? "
            "ORDER BY updated_at DESC, id DESC LIMIT ?",
            (user_id, limit),
        )
    else:
        rows = db.execute(
            "SELECT id, title, created_at, updated_at FROM conversations WHERE user_id = ? "
            "AND (updated_at, id) < (?, ?) ORDER BY updated_at DESC, id DESC LIMIT ?",
            (user_id, *before, limit),
        )
    return [dict(row) for row in rows]


def _get_conversation(db, user_id, conversation_id):
    row = db.execute(
        "SELECT id, title, created_at, updated_at FROM conversations WHERE id = ? AND user_id = ?",
        (conversation_id, user_id),
    ).fetchone()
    if row is None:
        return None
    messages = _messages(db, conversation_id)
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


def _messages(db, conversation_id):
    return [
        _message(r)
        for r in db.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY seq",
            (conversation_id,),
        )
    ]


def _delete_conversation(db, user_id, conversation_id):
    with Transaction(db):
        deleted = db.execute(
            "DELETE FROM conversations WHERE id = ? AND user_id = ?", (conversation_id, user_id)
        )
        return deleted.rowcount > 0


def _begin_turn(db, user_id, conversation_id, content, live, pending):
    stamp = now_iso()
    created = conversation_id is None
    with Transaction(db):
        if created:
            conversation_id = new_id("conv")
            title = " ".join(content.split())[:TITLE_CHARS].rstrip() or "New chat"
            db.execute(
                "INSERT INTO conversations (id, user_id, title, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (conversation_id, user_id, title, stamp, stamp),
            )
        else:
            _check_idle(db, user_id, conversation_id)
        question_id = _insert_message(db, conversation_id, "user", content, "complete", stamp, {})
        if pending is not None:
            live = {**live, "owner": None, "heartbeat_at": time.time() + pending[1]}
        answer_id = _insert_message(db, conversation_id, "assistant", "", "streaming", stamp, live)
        if pending is not None:
            request, ttl_s = pending
            request = {**request, "conversation_id": conversation_id, "message_id": answer_id}
            _insert_pending(db, live["generation_id"], user_id, answer_id, request, ttl_s)
        if not created:  # a new one was inserted with this stamp
            db.execute(
                "UPDATE conversations SET updated_at = ? WHERE id = ?", (stamp, conversation_id)
            )
        messages = _messages(db, conversation_id)
    return {
        "conversation_id": conversation_id,
        "user_message_id": question_id,
        "message_id": answer_id,
        "messages": messages,
    }


def _check_idle(db, user_id, conversation_id):
    # PostgreSQL: the row lock holds a second turn (another host's too) here until this
    # transaction ends; it then sees this one's streaming answer.
    exists = db.execute(
        "SELECT 1 AS found FROM conversations WHERE id = ? AND user_id = ?"
        + dialect_of(db).lock_row,
        (conversation_id, user_id),
    ).fetchone()
    if exists is None:
        raise KeyError(conversation_id)
    busy = db.execute(
        "SELECT 1 AS found FROM messages WHERE conversation_id = ? AND status = 'streaming'",
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
            live.get("heartbeat_at", time.time()) if live else None,
            stamp,
            stamp,
        ),
    )
    return message_id


def _restart_answer(db, user_id, conversation_id, message_id, keep, live):
    stamp = now_iso()
    with Transaction(db):
        _check_idle(db, user_id, conversation_id)
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


def _heartbeat(db, claims, texts, stale_s, slots, sweep):
    now = time.time()
    with Transaction(db):
        if slots:
            db.executemany(
                "UPDATE running_generations SET heartbeat_at = ? WHERE generation_id = ?",
                [(now, generation_id) for generation_id in slots],
            )
        claimed = set(claims)
        if texts:  # a claimed answer's text and claim in one write
            updated_at = now_iso()
            db.executemany(
                "UPDATE messages SET content = ?, updated_at = ?, "
                "heartbeat_at = CASE WHEN ? THEN ? ELSE heartbeat_at END "
                "WHERE id = ? AND status = 'streaming'",
                [(text, updated_at, i in claimed, now, i) for i, text in texts],
            )
            claimed.difference_update(i for i, _ in texts)
        if claimed:
            db.executemany(
                "UPDATE messages SET heartbeat_at = ? WHERE id = ? AND status = 'streaming'",
                [(now, message_id) for message_id in claimed],
            )
        if not sweep:
            # Unchanged, but written: a page that reaches the disk is the proof.
            return db.execute(
                "UPDATE messages SET status = status "
                "WHERE status = 'streaming' AND heartbeat_at < ?",
                (now - stale_s,),
            ).rowcount
        _expire_pending(db, now)
        return db.execute(
            "UPDATE messages SET status = 'interrupted', reason = 'worker_lost', updated_at = ? "
            "WHERE status = 'streaming' AND heartbeat_at < ?",
            (now_iso(), now - stale_s),
        ).rowcount


def _add_pending(db, generation_id, user_id, message_id, request, ttl_s):
    with Transaction(db):
        _insert_pending(db, generation_id, user_id, message_id, request, ttl_s)


def _insert_pending(db, generation_id, user_id, message_id, request, ttl_s):
    db.execute(
        "INSERT INTO pending_generations (generation_id, user_id, message_id, request, "
        "expires_at) VALUES (?, ?, ?, ?, ?)",
        (generation_id, user_id, message_id, json.dumps(request), time.time() + ttl_s),
    )


def _take_pending(db, user_id, generation_id, owner):
    now = time.time()
    with Transaction(db):
        _expire_pending(db, now)
        rows = db.execute(
            "DELETE FROM pending_generations WHERE generation_id = ? AND user_id = ? "
            "RETURNING message_id, request",
            (generation_id, user_id),
        ).fetchall()
        if not rows:
            return None
        row = rows[0]
        if row["message_id"] is not None:
            db.execute(
                "UPDATE messages SET owner = ?, heartbeat_at = ? "
                "WHERE id = ? AND status = 'streaming'",
                (owner, now, row["message_id"]),
            )
        return json.loads(row["request"])


def _expire_pending(db, now):
    """Drop the generations nobody viewed in time: their answers end empty, never
    having asked the provider anything, and their running slots are freed."""
    expired = db.execute(
        "DELETE FROM pending_generations WHERE expires_at < ? RETURNING generation_id, message_id",
        (now,),
    ).fetchall()
    if not expired:
        return
    db.executemany(
        "UPDATE messages SET status = 'stopped', reason = 'client_disconnect', owner = NULL, "
        "usage = ?, updated_at = ? WHERE id = ? AND status = 'streaming'",
        [
            (json.dumps(NO_USAGE), now_iso(), row["message_id"])
            for row in expired
            if row["message_id"]
        ],
    )
    db.executemany(
        "DELETE FROM running_generations WHERE generation_id = ?",
        [(row["generation_id"],) for row in expired],
    )


def _drop_pending(db, user_id, generation_id):
    with Transaction(db):
        rows = db.execute(
            "DELETE FROM pending_generations WHERE generation_id = ? AND user_id = ? "
            "RETURNING message_id",
            (generation_id, user_id),
        ).fetchall()
        if not rows:
            return None
        db.execute("DELETE FROM running_generations WHERE generation_id = ?", (generation_id,))
        message_id = rows[0]["message_id"]
        if message_id is None:
            return {}
        db.execute(
            "UPDATE messages SET status = 'stopped', reason = 'user_stop', owner = NULL, "
            "usage = ?, updated_at = ? WHERE id = ? AND status = 'streaming'",
            (json.dumps(NO_USAGE), now_iso(), message_id),
        )
        return _find_answer(db, user_id, generation_id)


def _find_answer(db, user_id, generation_id):
    row = db.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE generation_id = ? AND conversation_id IN "
        "(SELECT id FROM conversations WHERE user_id = ?)",
        (generation_id, user_id),
    ).fetchone()
    return _message(row) if row else None


def _finish_answer(db, message_id, fields):
    # One statement: a transaction of its own on our autocommit connections.
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


def _amend_stop(db, user_id, generation_id, seen_chars):
    owned = (
        "conversation_id IN (SELECT id FROM conversations WHERE user_id = ?) AND generation_id = ?"
    )
    # Characters, not bytes, in both databases; nothing seen past the kept text of a continue.
    content = "content" if seen_chars is None else "substr(content, 1, base_chars + ?)"
    cut = () if seen_chars is None else (seen_chars,)
    with Transaction(db):
        db.execute(
            f"UPDATE messages SET reason = 'user_stop', content = {content}, "
            f"receipt = {dialect_of(db).set_signal}, updated_at = ? "
            f"WHERE {owned} AND status = 'stopped' AND reason = 'client_disconnect'",
            (*cut, now_iso(), user_id, generation_id),
        )
        row = db.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE {owned}", (user_id, generation_id)
        ).fetchone()
        return _message(row) if row else None


def _hit(db, key, window_s, amount):
    now = time.time()
    with Transaction(db):
        db.execute(
            "INSERT INTO rate_limits (key, hits, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET hits = CASE WHEN rate_limits.expires_at <= ? "
            "THEN excluded.hits ELSE rate_limits.hits + excluded.hits END, "
            "expires_at = CASE WHEN rate_limits.expires_at <= ? "
            "THEN excluded.expires_at ELSE rate_limits.expires_at END",
            (key, amount, now + window_s, now, now),
        )
        return db.execute("SELECT hits FROM rate_limits WHERE key = ?", (key,)).fetchone()["hits"]


def _hits(db, key):
    now = time.time()
    row = db.execute(
        "SELECT hits, expires_at FROM rate_limits WHERE key = ? AND expires_at > ?", (key, now)
    ).fetchone()
    return (row["hits"], row["expires_at"]) if row else (0, now)


def _clear_hits(db, key):
    with Transaction(db):
        db.execute("DELETE FROM rate_limits WHERE key = ?", (key,))


def _claim_slot(db, limit_key, generation_id, cap, stale_s):
    now = time.time()
    with Transaction(db):
        if dialect_of(db).lock_key:  # count and insert as one, across hosts
            db.execute(dialect_of(db).lock_key, (limit_key,))
        db.execute("DELETE FROM running_generations WHERE heartbeat_at < ?", (now - stale_s,))
        running = db.execute(
            "SELECT COUNT(*) AS running FROM running_generations WHERE limit_key = ?",
            (limit_key,),
        ).fetchone()["running"]
        if running >= cap:
            return False
        db.execute(
            "INSERT INTO running_generations (generation_id, limit_key, heartbeat_at) "
            "VALUES (?, ?, ?)",
            (generation_id, limit_key, now),
        )
        return True


def _release_slot(db, generation_id):
    # One statement: a transaction of its own on our autocommit connections.
    db.execute("DELETE FROM running_generations WHERE generation_id = ?", (generation_id,))
