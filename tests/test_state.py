"""Per-app state: one `Stopwire()` serving two apps, `init_app` once, `close()`, and what a
host that mounts the extension at a prefix does (and does not) get."""

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_stopwire import Stopwire, get_stopwire
from flask_stopwire.identity import SESSION_KEY
from flask_stopwire.providers.base import Message

USER = "user:tester"
LIVE = {"generation_id": "gen_state", "owner": "worker_test", "model": "m"}


@pytest.fixture(autouse=True)
def hermetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the environment."""
    for name in list(os.environ):
        if name.startswith("STOPWIRE_") or name == "PROMETHEUS_MULTIPROC_DIR":
            monkeypatch.delenv(name)


@pytest.fixture
def apps() -> Iterator[list[Flask]]:
    """Apps a test initialised; their Stopwire state is closed after it."""
    made: list[Flask] = []
    yield made
    for app in made:
        get_stopwire(app).close()


def host_app(tmp_path: Path, name: str, **config: Any) -> Flask:
    """A host's Flask app whose instance folder, database and run dir are under tmp_path."""
    app = Flask(name, instance_path=str(tmp_path / name / "instance"))
    app.config.update(
        SECRET_KEY="test",
        STOPWIRE_PROVIDER="openai",
        STOPWIRE_PROVIDER_URL="http://127.0.0.1:9/v1",
        STOPWIRE_DATABASE=str(tmp_path / name / "stopwire.sqlite3"),
        STOPWIRE_RUN_DIR=str(tmp_path / name / "run"),
        **config,
    )
    return app


def client_as(app: Flask, user: str) -> FlaskClient:
    """A test client presenting `user` in its identity cookie."""
    client = app.test_client()
    with client.session_transaction() as session:
        session[SESSION_KEY] = user
    return client


def titles_in(path: Path) -> list[str]:
    """The conversation titles stored in a SQLite file, read without Stopwire."""
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT title FROM conversations")]


def test_one_stopwire_on_two_apps_keeps_two_providers_and_two_databases(
    tmp_path: Path, apps: list[Flask]
) -> None:
    stopwire = Stopwire(openai_prefix="/v1")
    a = host_app(tmp_path, "a", STOPWIRE_MODEL="model-a")
    b = host_app(tmp_path, "b", STOPWIRE_MODEL="model-b")
    stopwire.init_app(a)
    apps.append(a)
    stopwire.init_app(b)
    apps.append(b)

    state_a, state_b = get_stopwire(a), get_stopwire(b)
    assert state_a is not state_b
    assert (state_a.provider.model, state_b.provider.model) == ("model-a", "model-b")
    for app, model in ((a, "model-a"), (b, "model-b")):
        assert [m["id"] for m in client_as(app, USER).get("/v1/models").get_json()["data"]] == [
            model
        ]
        with app.app_context():  # the accessor without an argument finds the current app
            assert get_stopwire() is get_stopwire(app)

    only_a = state_a.store.begin_turn(USER, None, "only in a", LIVE)["conversation_id"]
    only_b = state_b.store.begin_turn(USER, None, "only in b", LIVE)["conversation_id"]
    assert titles_in(tmp_path / "a" / "stopwire.sqlite3") == ["only in a"]
    assert titles_in(tmp_path / "b" / "stopwire.sqlite3") == ["only in b"]
    for app, mine, theirs in ((a, only_a, only_b), (b, only_b, only_a)):
        client = client_as(app, USER)
        listed = client.get("/api/conversations").get_json()["conversations"]
        assert [c["id"] for c in listed] == [mine]
        assert client.get(f"/api/conversations/{theirs}").status_code == 404


def test_init_app_twice_on_one_app_raises(tmp_path: Path, apps: list[Flask]) -> None:
    app = host_app(tmp_path, "host")
    stopwire = Stopwire()
    stopwire.init_app(app)
    apps.append(app)
    with pytest.raises(RuntimeError, match="already initialised"):
        stopwire.init_app(app)
    with pytest.raises(RuntimeError, match="already initialised"):
        Stopwire(app)


def test_the_accessor_names_a_missing_init_app(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="init_app"):
        get_stopwire(host_app(tmp_path, "bare"))


def test_close_releases_every_resource_and_is_safe_twice(tmp_path: Path) -> None:
    app = host_app(tmp_path, "host")
    stopwire = Stopwire(app)
    state = get_stopwire(app)
    state.start()  # this worker's heartbeat greenlet and stop socket
    state.store.list_conversations(USER, 1)  # the store's thread and connection
    store_thread = state.store._pool.apply(threading.get_native_id)
    generation = state.new_generation([Message("user", "hi")], USER)  # the provider session
    assert generation.session is state._session
    beating = state.recorder._beating
    assert beating is not None and not beating.dead and state.peers.own_path.exists()

    stopwire.close(app)

    assert beating.dead
    assert not state.peers.own_path.exists()
    assert state._session is None
    assert state.store._pool is None and state.store._db is None
    deadline = time.monotonic() + 2
    while Path(f"/proc/self/task/{store_thread}").exists():  # the thread exits on its own
        assert time.monotonic() < deadline, "the store's thread is still running"
        gevent.sleep(0.001)
    state.close()  # twice: nothing left to release, no error
    stopwire.close(app)


def test_a_host_mount_at_a_prefix_opens_nothing_outside_it(
    tmp_path: Path, apps: list[Flask]
) -> None:
    host = host_app(tmp_path, "host")

    @host.get("/")
    def home() -> str:
        return "the host's own page"

    Stopwire(host, url_prefix="/llm")
    apps.append(host)
    client = client_as(host, USER)

    outside = {r.rule for r in host.url_map.iter_rules() if not r.rule.startswith("/llm/")}
    assert outside == {"/", "/static/<path:filename>"}  # the host's own, and Flask's
    for method, path in [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/anything"),
        ("GET", "/metrics"),
        ("GET", "/healthz"),
    ]:
        response = client.open(path, method=method)
        assert response.status_code == 404, path
        assert response.mimetype == "text/html", path  # Flask's own page, not Stopwire's JSON
    assert client.get("/").get_data(as_text=True) == "the host's own page"

    missing = client.get("/llm/nothing")
    assert missing.status_code == 404 and missing.get_json()["error"]["type"] == "not_found"
    listed = client.get("/llm/conversations")
    assert listed.status_code == 200 and listed.get_json()["conversations"] == []
