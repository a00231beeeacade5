"""The host's own routes, and two the test asks which worker and which code answered."""

import os
import sys

from flask import Blueprint

import app
import flask_stopwire

pages = Blueprint("pages", __name__)


@pages.get("/")
def home() -> str:
    """The host's own page."""
    return "the host's own page"


@pages.get("/whoami")
def whoami() -> dict[str, int]:
    """The pid of the worker holding this connection."""
    return {"pid": os.getpid()}


@pages.get("/modules")
def modules() -> dict[str, str]:
    """Where this worker loaded the host's package, the extension and the gunicorn hooks from."""
    return {
        "app": app.__file__ or "",
        "flask_stopwire": flask_stopwire.__file__ or "",
        # Imported by gunicorn.conf.py in the master, inherited by the forked worker.
        "hooks": getattr(sys.modules.get("flask_stopwire.gunicorn"), "__file__", ""),
    }
