"""Every setting with its default; `STOPWIRE_*` environment variables override them."""

import math
import os

DEFAULTS: dict[str, str | int | float] = {
    "STOPWIRE_PROVIDER": "demo",
    "STOPWIRE_PROVIDER_URL": "",
    "STOPWIRE_API_KEY": "",
    "STOPWIRE_MODEL": "",
    "STOPWIRE_HEARTBEAT_S": 15.0,
    "STOPWIRE_CONNECT_TIMEOUT_S": 10.0,
    # Reasoning models can think quietly for minutes: an idle limit, not a deadline.
    "STOPWIRE_READ_TIMEOUT_S": 300.0,
    "STOPWIRE_MAX_BODY_BYTES": 1024 * 1024,
    # Comma-separated keys OpenAI-compatible clients must send as Bearer; empty: no check.
    "STOPWIRE_CLIENT_KEYS": "",
    # Upper bound on pooled provider connections per worker (one per live stream).
    "STOPWIRE_POOL_SIZE": 1000,
    # SQLite file; empty means stopwire.sqlite3 in the app's instance folder.
    "STOPWIRE_DATABASE": "",
    # Partial answers are saved at least this often (and at every end).
    "STOPWIRE_FLUSH_S": 1.0,
    # An answer whose worker has not beaten for this long was lost with it.
    "STOPWIRE_LOST_AFTER_S": 5.0,
    # Where workers of one host put the unix sockets that carry stops between them.
    "STOPWIRE_RUN_DIR": "",
}


def from_environ(environ: dict[str, str] | None = None) -> dict[str, str | int | float]:
    """The settings present in the environment, numbers parsed and checked."""
    environ = os.environ if environ is None else environ
    found: dict[str, str | int | float] = {}
    for name, default in DEFAULTS.items():
        if name in environ:
            raw = environ[name]
            found[name] = raw if isinstance(default, str) else _positive(name, raw, type(default))
    return found


def _positive(name: str, raw: str, kind: type) -> int | float:
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {raw!r}")
    return value
