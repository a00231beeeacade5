"""Conversations and messages: the store, its migrations and the live-answer recorder.

`open_store` picks the database from `STOPWIRE_DATABASE`: a `postgresql://` URL is
PostgreSQL (many hosts), anything else a SQLite file (one host, the default).
"""

import sqlite3
import sys

from flask_stopwire.store.sql import SqlStore

POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_postgres_url(database: str) -> bool:
    """Whether `database` names a PostgreSQL server rather than a SQLite file."""
    return database.partition("://")[0].lower() in POSTGRES_SCHEMES and "://" in database


def open_store(database: str) -> SqlStore:
    """The store for `database` (a postgresql:// URL or a SQLite path); connects at first use."""
    if is_postgres_url(database):
        from flask_stopwire.store.postgres import PostgresStore

        return PostgresStore(database)
    from flask_stopwire.store.sqlite import SqliteStore

    return SqliteStore(database)


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` is the database being out of reach or refusing writes (locked, full,
    read-only, a server down): the client should retry, nothing it sent was wrong."""
    if isinstance(exc, sqlite3.OperationalError):
        return True
    psycopg = sys.modules.get("psycopg")  # loaded only when PostgreSQL is in use
    return psycopg is not None and isinstance(exc, psycopg.OperationalError)
