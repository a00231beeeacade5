"""In-process route tests, in the style of flaskr's tests/conftest.py: `app` and `client`.

Each app gets a SQLite file and a stop-socket directory of its own, and a provider URL
where a bound but never listening socket refuses connections at once. Settings read
app.config first and the environment after it, so the environment's `STOPWIRE_*`
variables are removed while the apps live.

Apps are per module, not per test: building one compiles ~20 URL rules and migrates a
database (about 40 ms), and the routes only ever read the app. Tests stay independent by
acting as a user of their own (`user`, `client`).
"""

import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from web_support import MODEL, MakeApp, client_as

from app import create_app
from flask_stopwire import get_stopwire


@pytest.fixture(scope="session")
def refused_url() -> Iterator[str]:
    """A provider URL whose port is bound but never listens: connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    sock.close()


@pytest.fixture(scope="module")
def make_app(tmp_path_factory: pytest.TempPathFactory, refused_url: str) -> Iterator[MakeApp]:
    """`create_app` with test settings; keyword arguments are extra config.

    The apps are closed, and the environment given back, when the module is done.
    """
    apps: list[Flask] = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in list(os.environ):
            if name.startswith("STOPWIRE_") or name == "PROMETHEUS_MULTIPROC_DIR":
                monkeypatch.delenv(name)

        def make(**config: Any) -> Flask:
            directory = tmp_path_factory.mktemp("stopwire")
            app = create_app(
                {
                    "TESTING": True,
                    "SECRET_KEY": "test",  # else one is written into the instance folder
                    "STOPWIRE_PROVIDER": "openai",
                    "STOPWIRE_PROVIDER_URL": refused_url,
                    "STOPWIRE_MODEL": MODEL,
                    "STOPWIRE_DATABASE": str(directory / "stopwire.sqlite3"),
                    "STOPWIRE_RUN_DIR": str(directory / "run"),
                    **config,
                }
            )
            apps.append(app)
            return app

        yield make
    for app in apps:
        get_stopwire(app).close()


@pytest.fixture(scope="module")
def app(make_app: MakeApp) -> Flask:
    """The standalone service with the test settings."""
    return make_app()


@pytest.fixture
def user() -> str:
    """A browser identity of this test's own."""
    return f"browser:{uuid.uuid4().hex}"


@pytest.fixture
def client(app: Flask, user: str) -> FlaskClient:
    """A test client whose identity cookie says it is `user`."""
    return client_as(app, user)
