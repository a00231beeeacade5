"""Settings: declared once, validated whatever their source (app.config or environment)."""

import re
from pathlib import Path

import pytest

from flask_stopwire.settings import SettingError, Settings, documented

ROOT = Path(__file__).resolve().parents[1]


def load(config=None, environ=None) -> Settings:
    return Settings.load(config or {}, environ or {})


def test_nothing_set_gives_the_defaults():
    assert load() == Settings()
    assert Settings().heartbeat_s == 15.0 and Settings().provider == "demo"


def test_config_wins_over_the_environment():
    settings = load({"STOPWIRE_MODEL": "from-config"}, {"STOPWIRE_MODEL": "from-env"})
    assert settings.model == "from-config"
    assert load(environ={"STOPWIRE_MODEL": "from-env"}).model == "from-env"


def test_strings_pass_through_unchanged():
    environ = {
        "STOPWIRE_PROVIDER": "ollama",
        "STOPWIRE_PROVIDER_URL": "http://127.0.0.1:11434",
        "STOPWIRE_MODEL": " llama3.2 ",
        "STOPWIRE_RUN_DIR": "/run/stopwire",
    }
    settings = load(environ=environ)
    assert (settings.provider, settings.provider_url, settings.model, settings.run_dir) == (
        "ollama",
        "http://127.0.0.1:11434",
        " llama3.2 ",
        "/run/stopwire",
    )


def test_environment_numbers_are_parsed_by_the_type_of_their_field():
    settings = load(
        environ={
            "STOPWIRE_HEARTBEAT_S": "2.5",
            "STOPWIRE_CONNECT_TIMEOUT_S": "3",
            "STOPWIRE_READ_TIMEOUT_S": "1e3",
            "STOPWIRE_MAX_BODY_BYTES": "4096",
            "STOPWIRE_POOL_SIZE": " 50 ",
        }
    )
    assert settings.heartbeat_s == 2.5
    assert settings.connect_timeout_s == 3.0 and type(settings.connect_timeout_s) is float
    assert settings.read_timeout_s == 1000.0
    assert settings.max_body_bytes == 4096
    assert settings.pool_size == 50 and type(settings.pool_size) is int


def test_numbers_set_in_code_keep_their_meaning():
    settings = load({"STOPWIRE_HEARTBEAT_S": 2, "STOPWIRE_POOL_SIZE": 8.0})
    assert settings.heartbeat_s == 2.0 and type(settings.heartbeat_s) is float
    assert settings.pool_size == 8 and type(settings.pool_size) is int


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("STOPWIRE_HEARTBEAT_S", "soon"),
        ("STOPWIRE_HEARTBEAT_S", ""),
        ("STOPWIRE_MAX_BODY_BYTES", "1.5"),
        ("STOPWIRE_POOL_SIZE", "1e3"),
        ("STOPWIRE_POOL_SIZE", "ten"),
    ],
)
def test_environment_non_numbers_are_rejected_by_name(name, raw):
    with pytest.raises(SettingError) as info:
        load(environ={name: raw})
    assert str(info.value) == f"{name} must be a number, got {raw!r}"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("STOPWIRE_HEARTBEAT_S", 0, "must be a positive number, got 0"),
        ("STOPWIRE_FLUSH_S", -1, "must be a positive number, got -1"),
        ("STOPWIRE_READ_TIMEOUT_S", "-1.5", "must be a positive number, got -1.5"),
        ("STOPWIRE_POOL_SIZE", "0", "must be a positive number, got 0"),
        ("STOPWIRE_HEARTBEAT_S", float("nan"), "must be a positive number, got nan"),
        ("STOPWIRE_HEARTBEAT_S", "inf", "must be a positive number, got inf"),
        ("STOPWIRE_HEARTBEAT_S", True, "must be a number, got True"),
        ("STOPWIRE_HEARTBEAT_S", None, "must be a number, got None"),
        ("STOPWIRE_POOL_SIZE", 2.5, "must be a whole number, got 2.5"),
        ("STOPWIRE_MODEL", 7, "must be a string, got 7"),
        ("STOPWIRE_PROVIDER", "gpt", "must be one of anthropic, demo, ollama, openai, got 'gpt'"),
        ("STOPWIRE_DEBUG_STATS", "maybe", "must be true or false, got 'maybe'"),
        ("STOPWIRE_CLIENT_KEYS", 5, "must be a comma-separated string or a list of strings"),
    ],
)
def test_bad_values_from_code_or_environment_name_the_setting(name, value, message):
    with pytest.raises(SettingError) as info:
        load({name: value})
    assert str(info.value) == f"{name} {message}"


def test_flags_and_key_lists():
    assert load(environ={"STOPWIRE_DEBUG_STATS": "on"}).debug_stats is True
    assert load(environ={"STOPWIRE_DEBUG_STATS": "0"}).debug_stats is False
    assert load({"STOPWIRE_CLIENT_KEYS": " a, ,b "}).client_keys == ("a", "b")
    assert load({"STOPWIRE_CLIENT_KEYS": ["k1", "k2"]}).client_keys == ("k1", "k2")


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("STOPWIRE_PROVIDER", "anthropic")
    monkeypatch.setenv("STOPWIRE_POOL_SIZE", "8")
    settings = Settings.load({})
    assert (settings.provider, settings.pool_size) == ("anthropic", 8)


def test_every_setting_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    rows = set(re.findall(r"^\| `(STOPWIRE_[A-Z_]+)` \|", readme, flags=re.M))
    assert {name for name, _, _ in documented()} <= rows


def test_the_redis_url_is_off_by_default_and_must_name_redis():
    assert Settings().redis_url == ""
    assert load(environ={"STOPWIRE_REDIS_URL": " redis://10.0.0.5:6379/2 "}).redis_url == (
        "redis://10.0.0.5:6379/2"
    )
    with pytest.raises(SettingError, match="STOPWIRE_REDIS_URL must be a redis://"):
        load(environ={"STOPWIRE_REDIS_URL": "10.0.0.5:6379"})


def test_the_database_is_a_sqlite_path_or_a_postgresql_url(monkeypatch):
    assert load(environ={"STOPWIRE_DATABASE": "/var/lib/chat.sqlite3"}).database == (
        "/var/lib/chat.sqlite3"
    )
    url = "postgresql://stopwire:secret@db.internal:5432/stopwire"
    assert load(environ={"STOPWIRE_DATABASE": f" {url} "}).database == url
    assert load(environ={"STOPWIRE_DATABASE": "postgres://db/x"}).database == "postgres://db/x"
    with pytest.raises(SettingError, match="SQLite file path or a postgresql:// URL, got a mysql"):
        load(environ={"STOPWIRE_DATABASE": "mysql://db/x"})
    with pytest.raises(SettingError, match="not a valid postgresql:// URL") as refused:
        load(environ={"STOPWIRE_DATABASE": "postgresql://u:secret@db:port/x"})
    assert "secret" not in str(refused.value)  # a password never lands in a log
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(
        SettingError, match=r"needs psycopg: pip install 'Flask-Stopwire\[postgres\]'"
    ):
        load(environ={"STOPWIRE_DATABASE": url})
