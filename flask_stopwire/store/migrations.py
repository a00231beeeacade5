"""The database schema as forward-only migrations; `schema_version` says how far a database is.

The same scripts run on SQLite and PostgreSQL (`Dialect.ddl` rewrites the few type
words that differ). Each migration is one transaction that first makes every other
migrator wait: SQLite's BEGIN IMMEDIATE, or a PostgreSQL advisory lock held until
COMMIT, so many workers on many hosts starting at once apply each migration once.
"""

from typing import Any

from flask_stopwire.store.sql import dialect_of

MIGRATIONS = [
    # 1: conversations, messages, earlier versions of regenerated answers
    """
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX conversations_by_activity ON conversations (updated_at DESC, id DESC);
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL
            CHECK (status IN ('streaming', 'complete', 'stopped', 'error', 'interrupted')),
        reason TEXT,
        model TEXT,
        usage TEXT,
        receipt TEXT,
        generation_id TEXT UNIQUE,
        owner TEXT,
        heartbeat_at REAL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (conversation_id, seq)
    );
    CREATE INDEX messages_streaming ON messages (heartbeat_at) WHERE status = 'streaming';
    CREATE TABLE message_versions (
        message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        content TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        usage TEXT,
        receipt TEXT,
        generation_id TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (message_id, version)
    );
    """,
    # 2: how much of an answer's text came before its current generation (a continue),
    # so a late stop cuts `seen_chars` after it, not from the start
    """
    ALTER TABLE messages ADD COLUMN base_chars INTEGER NOT NULL DEFAULT 0
    """,
    # 3: every conversation has an owner (an identity); conversations saved before
    # identities existed belong to nobody and are seen by no one
    """
    ALTER TABLE conversations ADD COLUMN user_id TEXT NOT NULL DEFAULT '';
    CREATE INDEX conversations_by_user ON conversations (user_id, updated_at DESC, id DESC)
    """,
    # 4: limits shared by every worker of a host: request counts per fixed window
    # (Flask-Limiter's storage) and the generations each identity has running
    """
    CREATE TABLE rate_limits (
        key TEXT PRIMARY KEY,
        hits INTEGER NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE running_generations (
        generation_id TEXT PRIMARY KEY,
        limit_key TEXT NOT NULL,
        heartbeat_at REAL NOT NULL
    );
    CREATE INDEX running_generations_by_key ON running_generations (limit_key)
    """,
    # 5: generations asked for and not yet viewed (the EventSource transport): any
    # worker may take one and run it; nobody within `expires_at`, it is dropped
    """
    CREATE TABLE pending_generations (
        generation_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        message_id TEXT,
        request TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX pending_generations_by_expiry ON pending_generations (expires_at)
    """,
    # 6: every list of conversations is one identity's (3), read through
    # conversations_by_user: the index by activity alone went unread, and every turn wrote it
    """
    DROP INDEX conversations_by_activity
    """,
]


def migrate(db: Any) -> int:
    """Apply the migrations this database lacks, each in its own transaction."""
    dialect = dialect_of(db)
    for number, script in enumerate(MIGRATIONS, start=1):
        db.execute(dialect.begin)  # one worker migrates; the others wait, then skip
        try:
            if dialect.lock_migrations:
                db.execute(dialect.lock_migrations)
            # Inside the lock: PostgreSQL's IF NOT EXISTS is no guard against a racing twin.
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT MAX(version) AS version FROM schema_version").fetchone()
            if (row["version"] or 0) < number:
                for statement in filter(str.strip, dialect.ddl(script).split(";")):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return len(MIGRATIONS)
