"""`GET <url_prefix>/debug/stats`: what a worker holds open, for leak tests and benchmarks.

Registered only with `STOPWIRE_DEBUG_STATS` on: it walks the heap (milliseconds of a
blocked event loop) and tells process internals, so it is never on by default.
"""

import gc
import os

import gevent
from flask import Blueprint
from greenlet import greenlet

from flask_stopwire.state import get_stopwire
from flask_stopwire.web.operator import require_operator

debug = Blueprint("stopwire_debug", __name__)
debug.before_request(require_operator)


@debug.get("/debug/stats")
def stats() -> dict[str, int | bool]:
    """The worker's pid, live generations, open file descriptors (those of the store's
    connections apart), live greenlets, the objects frozen out of the collector, and
    whether gevent records each greenlet's spawning tree."""
    stopwire = get_stopwire()
    store_connections = stopwire.store.open_connections()
    return {
        "pid": os.getpid(),
        "live_generations": stopwire.registry.live_count(),
        "open_fds": len(os.listdir("/proc/self/fd")) - store_connections,
        "store_connections": store_connections,
        "greenlets": sum(isinstance(o, greenlet) and bool(o) for o in gc.get_objects()),
        "gc_frozen": gc.get_freeze_count(),
        "greenlet_tree_tracked": bool(gevent.config.track_greenlet_tree),
    }
