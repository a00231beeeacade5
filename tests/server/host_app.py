"""Someone else's Flask app that mounts Stopwire under its own prefix (see test_mount.py)."""

import os

from flask import Flask, request

from flask_stopwire import Stopwire


def signed_in_user() -> str | None:
    """The host's own auth, reduced to a bearer token naming the user (None: not signed in)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme == "Bearer" and token else None


app = Flask(__name__)
app.config["STOPWIRE_PROVIDER_URL"] = os.environ["UPSTREAM_URL"]
stopwire = Stopwire(url_prefix="/llm", identity=signed_in_user)
stopwire.init_app(app)  # the app-factory style; Stopwire(app, url_prefix=...) works too


@app.get("/")
def home() -> str:
    return "the host app's own page"


@app.get("/whoami")
def whoami() -> dict[str, int]:
    return {"pid": os.getpid()}
