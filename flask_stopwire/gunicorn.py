"""The gunicorn hooks that make Stop honest in production; one line in gunicorn.conf.py:

    from flask_stopwire.gunicorn import *

- On import, in the master before any app loads (so `--preload` is safe): a run
  directory for worker-to-worker stops and prometheus-client's multiprocess
  directory, unless STOPWIRE_RUN_DIR / PROMETHEUS_MULTIPROC_DIR are already set;
  and, unless STOPWIRE_PROVIDER_URL is set, the simulated model beside the master (it
  exits with it) at STOPWIRE_DEMO_URL, which only an app whose provider is `demo`
  uses: a host that configures a real provider in code never sends its key there.
  And gevent stops recording each greenlet's spawning tree (a debugging aid) unless
  GEVENT_TRACK_GREENLET_TREE says otherwise: `_lean_greenlets`.
- `post_worker_init`: each worker starts its heartbeat and stop socket, and SIGTERM
  (a deploy) interrupts its live answers at once instead of at the graceful timeout;
  the objects of the loaded app are frozen out of the garbage collector's full passes.
- `child_exit`: a dead worker's live gauges are dropped. `on_exit`: cleanup.

Nothing here imports requests, ssl or gevent at import time: this module loads with
the config file, before gevent patches the worker.
"""

import gc
import os
import shutil
import subprocess
import sys
import tempfile

__all__ = ["child_exit", "on_exit", "post_worker_init"]

_own_dirs: list[str] = []
_demo: subprocess.Popen | None = None


def _shared_directories() -> None:
    for variable, prefix in (
        ("STOPWIRE_RUN_DIR", "stopwire-run-"),
        # prometheus-client's multiprocess mode: every worker writes its metrics here.
        ("PROMETHEUS_MULTIPROC_DIR", "stopwire-metrics-"),
    ):
        if not os.environ.get(variable):
            os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
            _own_dirs.append(os.environ[variable])


def _lean_greenlets() -> None:
    """Greenlets without their spawning tree, unless the operator asked for it.

    gevent records, for every greenlet, its parent, the parent's locals and the stack
    that spawned it: 3.3 µs and 10 objects for the collector per greenlet, and a chat
    spawns about four while every open stream keeps two alive (docs/token-path-profile.md).
    gevent reads the variable once, at the worker's first greenlet: set here, in the master.
    """
    os.environ.setdefault("GEVENT_TRACK_GREENLET_TREE", "false")


def _demo_provider() -> subprocess.Popen | None:
    if os.environ.get("STOPWIRE_PROVIDER", "demo") != "demo":
        return None
    if os.environ.get("STOPWIRE_PROVIDER_URL") or os.environ.get("STOPWIRE_DEMO_URL"):
        return None
    demo = subprocess.Popen(
        [sys.executable, "-m", "flask_stopwire.demo", "--port", "0", "--exit-with-parent"],
        stdout=subprocess.PIPE,
        text=True,
    )
    url = demo.stdout.readline().strip() if demo.stdout else ""
    if not url:
        raise RuntimeError("the demo provider did not start")
    os.environ["STOPWIRE_DEMO_URL"] = url
    sys.stderr.write(f"flask_stopwire: demo provider (a simulated model) at {url}\n")
    return demo


def post_worker_init(worker) -> None:
    """In each worker, after the fork and gevent's patching: start, and chain SIGTERM."""
    from flask_stopwire.relay.shutdown import interrupt_on_sigterm
    from flask_stopwire.state import process_states

    states = process_states()
    for state in states:
        state.start()
    # What exists now (modules, the app, its state: ~57,000 objects) lives as long as the
    # worker. Out of the collector's way, a full collection, which stops every stream,
    # scans only what requests made: 0.1-3.8 ms instead of 18-33 ms in a worker that had
    # served 1,000 streams and eight bursts (docs/token-path-profile.md).
    gc.freeze()
    if states:
        interrupt_on_sigterm(lambda: sum(state.interrupt_all() for state in process_states()))
    else:
        worker.log.warning("flask_stopwire.gunicorn: no Stopwire app in this worker")


def child_exit(server, worker) -> None:
    """A worker's live gauges must not outlive it."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """Stop the demo model and remove the directories made here."""
    if _demo is not None:
        _demo.terminate()
        _demo.wait(5)
    for path in _own_dirs:
        shutil.rmtree(path, ignore_errors=True)


_shared_directories()
_lean_greenlets()
_demo = _demo_provider()
