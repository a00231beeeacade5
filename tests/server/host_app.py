"""Someone else's Flask app that mounts Stopwire under its own prefix (see test_mount.py)."""

import os

from flask import Flask

from flask_stopwire import Stopwire

app = Flask(__name__)
app.config["STOPWIRE_PROVIDER_URL"] = os.environ["UPSTREAM_URL"]
stopwire = Stopwire(url_prefix="/llm")
stopwire.init_app(app)  # the app-factory style; Stopwire(app, url_prefix=...) works too


@app.get("/")
def home() -> str:
    return "the host app's own page"


@app.get("/whoami")
def whoami() -> dict[str, int]:
    return {"pid": os.getpid()}
