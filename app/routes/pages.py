"""The browser-facing pages and the health check."""

import gc
import os

from flask import Blueprint, Response, current_app
from greenlet import greenlet

pages = Blueprint("pages", __name__)

# The page loads only its own files and talks only to its own origin: even if
# model output ever reached the DOM as markup, no inline script could run.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@pages.get("/")
def index() -> Response:
    """The chat page (plain HTML, CSS and ES modules from app/static)."""
    response = current_app.send_static_file("index.html")
    response.headers.update(PAGE_HEADERS)
    return response


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
