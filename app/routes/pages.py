"""The browser-facing pages and the health check."""

import gc
import os

from flask import Blueprint, current_app
from greenlet import greenlet

pages = Blueprint("pages", __name__)

NOTICE = """<!doctype html>
<html lang="en"><meta charset="utf-8"><title>Stopwire</title>
<h1>Stopwire</h1>
<p>The chat page is on its way. The API is live: <code>POST /api/chat</code> streams an
answer as server-sent events, <code>POST /api/generations/&lt;id&gt;/stop</code> stops it.</p>
</html>
"""


@pages.get("/")
def index() -> tuple[str, int, dict[str, str]]:
    """A short notice until the chat page lands."""
    return NOTICE, 200, {"Content-Type": "text/html; charset=utf-8"}


@pages.get("/healthz")
def healthz() -> dict[str, object]:
    """Liveness of the worker that answered, with what it holds open (to spot leaks)."""
    stopwire = current_app.extensions["stopwire"]
    return {
        "status": "ok",
        "pid": os.getpid(),
        "live_generations": stopwire.registry.live_count(),
        "open_fds": len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None,
        # A walk of the heap: a few milliseconds, worth it to prove nothing leaks.
        "greenlets": sum(isinstance(o, greenlet) and bool(o) for o in gc.get_objects()),
    }
