"""Every setting, declared once with its type, range and default, validated from any source.

A setting is read from `app.config` first, then from the `STOPWIRE_*` environment,
then its default. Values from the environment are strings and are parsed; values set
in code must already have the right type. Either way a bad value stops the start with
a `SettingError` naming the setting.
"""

import importlib.util
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from limits import parse_many

from flask_stopwire.providers import PROVIDERS

PREFIX = "STOPWIRE_"

Check = Callable[[str, Any], Any]


class SettingError(ValueError):
    """A setting has a value Stopwire cannot run with."""


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise SettingError(f"{name} must be a string, got {value!r}")
    return value


def _positive(kind: type) -> Check:
    def check(name: str, value: Any) -> int | float:
        if isinstance(value, str):
            try:
                value = kind(value)
            except ValueError:
                raise SettingError(f"{name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingError(f"{name} must be a number, got {value!r}")
        if kind is int and value != int(value):
            raise SettingError(f"{name} must be a whole number, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise SettingError(f"{name} must be a positive number, got {value!r}")
        return kind(value)

    return check


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    words = {"1": True, "true": True, "yes": True, "on": True}
    words.update({"0": False, "false": False, "no": False, "off": False, "": False})
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    raise SettingError(f"{name} must be true or false, got {value!r}")


def _provider(name: str, value: Any) -> str:
    if value not in PROVIDERS:
        choices = ", ".join(sorted(PROVIDERS))
        raise SettingError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _keys(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple) or not all(isinstance(k, str) for k in value):
        raise SettingError(f"{name} must be a comma-separated string or a list of strings")
    return tuple(k.strip() for k in value if k.strip())


def _rate(name: str, value: Any) -> str:
    value = _text(name, value)
    if value.strip():
        try:
            parse_many(value)
        except ValueError:
            raise SettingError(f"{name} must read like 30/minute, got {value!r}") from None
    return value.strip()


def _database(name: str, value: Any) -> str:
    """A SQLite path, or a postgresql:// URL (which needs psycopg installed)."""
    value = _text(name, value).strip()
    scheme, sep, _ = value.partition("://")
    if not sep:
        return value
    if scheme.lower() not in ("postgresql", "postgres"):
        raise SettingError(
            f"{name} must be a SQLite file path or a postgresql:// URL, got a {scheme}:// URL"
        )
    try:
        urlsplit(value).port  # noqa: B018 (a bad port raises)
    except ValueError as exc:
        raise SettingError(f"{name} is not a valid postgresql:// URL: {exc}") from None
    if importlib.util.find_spec("psycopg") is None:
        raise SettingError(
            f"{name} is a postgresql:// URL, which needs psycopg: "
            "pip install 'Flask-Stopwire[postgres]'"
        )
    return value


def _count(name: str, value: Any) -> int:
    """A whole number, 0 included (0 turns a cap off)."""
    if isinstance(value, str) and value.strip() == "0":
        return 0
    if value == 0 and not isinstance(value, bool):
        return 0
    return _positive(int)(name, value)


def _redis_url(name: str, value: Any) -> str:
    value = _text(name, value).strip()
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise SettingError(f"{name} must be a redis://, rediss:// or unix:// URL, got {value!r}")
    return value


def _setting(default: Any, check: Check, doc: str) -> Any:
    return field(default=default, metadata={"check": check, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Stopwire's settings; `STOPWIRE_<FIELD NAME>` in app.config or the environment."""

    provider: str = _setting("demo", _provider, "demo, openai, anthropic or ollama")
    provider_url: str = _setting("", _text, "the provider's base URL; empty: its default")
    demo_url: str = _setting("", _text, "the demo model's URL (set by flask_stopwire.gunicorn)")
    api_key: str = _setting("", _text, "the provider's key; never sent to clients or logged")
    model: str = _setting("", _text, "the model name sent to the provider; empty: its default")
    heartbeat_s: float = _setting(15.0, _positive(float), "keepalive interval while silent")
    connect_timeout_s: float = _setting(10.0, _positive(float), "provider connect timeout")
    # Reasoning models can think quietly for minutes: an idle limit, not a deadline.
    read_timeout_s: float = _setting(300.0, _positive(float), "provider idle limit")
    max_body_bytes: int = _setting(1024 * 1024, _positive(int), "largest request body")
    client_keys: tuple[str, ...] = _setting((), _keys, "Bearer keys required on /v1")
    # One pooled connection per live stream.
    pool_size: int = _setting(1000, _positive(int), "pooled provider connections per worker")
    database: str = _setting(
        "", _database, "SQLite file or postgresql:// URL; empty: SQLite in the instance folder"
    )
    flush_s: float = _setting(1.0, _positive(float), "partial answers are saved this often")
    lost_after_s: float = _setting(5.0, _positive(float), "a worker silent this long is lost")
    run_dir: str = _setting("", _text, "where one host's workers keep their stop sockets")
    redis_url: str = _setting("", _redis_url, "Redis carrying stops between hosts; empty: off")
    secret_key: str = _setting(
        "", _text, "signs browser identity cookies; empty: kept in instance/"
    )
    max_active_per_user: int = _setting(
        3, _count, "answers one identity may run at once; 0: no cap"
    )
    rate_limit: str = _setting("", _rate, "requests per identity, e.g. 30/minute; empty: off")
    max_resume_grace_s: float = _setting(
        30.0, _positive(float), "the longest resume_grace_s a request may ask for"
    )
    attach_timeout_s: float = _setting(
        10.0, _positive(float), "a generation nobody views this long is dropped"
    )
    metrics_token: str = _setting("", _text, "Bearer token for /metrics; empty: loopback only")
    debug_stats: bool = _setting(False, _flag, "serve <url_prefix>/debug/stats (tests)")

    @classmethod
    def load(
        cls, config: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> "Settings":
        """Validated settings from `config`, then `environ` (default: os.environ)."""
        environ = os.environ if environ is None else environ
        values = {}
        for setting in fields(cls):
            name = key(setting.name)
            if name in config:
                values[setting.name] = setting.metadata["check"](name, config[name])
            elif name in environ:
                values[setting.name] = setting.metadata["check"](name, environ[name])
        return cls(**values)


def key(field_name: str) -> str:
    """The config key and environment variable of a Settings field."""
    return PREFIX + field_name.upper()


def documented() -> list[tuple[str, Any, str]]:
    """(variable, default, meaning) of every setting, for docs and tests."""
    return [(key(f.name), f.default, f.metadata["doc"]) for f in fields(Settings)]
