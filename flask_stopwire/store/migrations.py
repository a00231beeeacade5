"""The database schema as forward-only migrations; `schema_version` says how far a file is."""

import sqlite3

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
]


def migrate(db: sqlite3.Connection) -> int:
    """Apply the migrations this database lacks, each in its own transaction."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    for number, script in enumerate(MIGRATIONS, start=1):
        db.execute("BEGIN IMMEDIATE")  # one worker migrates; the others wait, then skip
        try:
            row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            if (row[0] or 0) < number:
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return len(MIGRATIONS)
