"""Settings from the STOPWIRE_* environment."""

import pytest

from app.config import DEFAULTS, from_environ


def test_absent_variables_are_left_to_the_defaults():
    assert from_environ({}) == {}
    assert from_environ({"PATH": "/usr/bin", "STOPWIRE_UNKNOWN": "1"}) == {}


def test_strings_pass_through_unchanged():
    environ = {
        "STOPWIRE_PROVIDER": "ollama",
        "STOPWIRE_PROVIDER_URL": "http://127.0.0.1:11434",
        "STOPWIRE_API_KEY": "",
        "STOPWIRE_MODEL": " llama3.2 ",
        "STOPWIRE_RUN_DIR": "/run/stopwire",
    }
    assert from_environ(environ) == environ


def test_numbers_are_parsed_by_the_type_of_their_default():
    found = from_environ(
        {
            "STOPWIRE_HEARTBEAT_S": "2.5",
            "STOPWIRE_CONNECT_TIMEOUT_S": "3",
            "STOPWIRE_READ_TIMEOUT_S": "1e3",
            "STOPWIRE_MAX_BODY_BYTES": "4096",
            "STOPWIRE_POOL_SIZE": " 50 ",
        }
    )
    assert found == {
        "STOPWIRE_HEARTBEAT_S": 2.5,
        "STOPWIRE_CONNECT_TIMEOUT_S": 3.0,
        "STOPWIRE_READ_TIMEOUT_S": 1000.0,
        "STOPWIRE_MAX_BODY_BYTES": 4096,
        "STOPWIRE_POOL_SIZE": 50,
    }
    assert type(found["STOPWIRE_CONNECT_TIMEOUT_S"]) is float
    assert type(found["STOPWIRE_POOL_SIZE"]) is int


def test_default_types():
    numbers = {name: type(value) for name, value in DEFAULTS.items() if not isinstance(value, str)}
    assert numbers == {
        "STOPWIRE_HEARTBEAT_S": float,
        "STOPWIRE_CONNECT_TIMEOUT_S": float,
        "STOPWIRE_READ_TIMEOUT_S": float,
        "STOPWIRE_MAX_BODY_BYTES": int,
        "STOPWIRE_POOL_SIZE": int,
        "STOPWIRE_FLUSH_S": float,
        "STOPWIRE_LOST_AFTER_S": float,
    }


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
def test_non_numbers_are_rejected_by_name(name, raw):
    with pytest.raises(ValueError) as info:
        from_environ({name: raw})
    assert str(info.value) == f"{name} must be a number, got {raw!r}"


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("STOPWIRE_HEARTBEAT_S", "0"),
        ("STOPWIRE_READ_TIMEOUT_S", "-1.5"),
        ("STOPWIRE_POOL_SIZE", "0"),
        ("STOPWIRE_MAX_BODY_BYTES", "-4096"),
    ],
)
def test_non_positive_numbers_are_rejected_by_name(name, raw):
    with pytest.raises(ValueError) as info:
        from_environ({name: raw})
    assert str(info.value) == f"{name} must be a positive number, got {raw!r}"


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_rejected(raw):
    with pytest.raises(ValueError, match="STOPWIRE_HEARTBEAT_S must be a positive number"):
        from_environ({"STOPWIRE_HEARTBEAT_S": raw})


def test_reads_os_environ_by_default(monkeypatch):
    for name in DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STOPWIRE_PROVIDER", "anthropic")
    monkeypatch.setenv("STOPWIRE_POOL_SIZE", "8")
    assert from_environ() == {"STOPWIRE_PROVIDER": "anthropic", "STOPWIRE_POOL_SIZE": 8}
