"""gunicorn settings for Stopwire: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Every setting reads `STOPWIRE_*` first; gunicorn's own flags (-b, -w, ...) override
this file. Nothing here imports requests or ssl: that would happen before gevent
patches the worker (MonkeyPatchWarning). With the demo provider and no
STOPWIRE_PROVIDER_URL, the master starts the simulated model beside itself.
"""

import os
import shutil
import subprocess
import sys
import tempfile

wsgi_app = "app:create_app()"
worker_class = "gevent"
bind = os.environ.get("STOPWIRE_BIND") or f"127.0.0.1:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("STOPWIRE_WORKERS", "2"))
# Each open stream and each idle keep-alive connection holds one slot.
worker_connections = int(os.environ.get("STOPWIRE_WORKER_CONNECTIONS", "1000"))
timeout = int(os.environ.get("STOPWIRE_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("STOPWIRE_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("STOPWIRE_KEEPALIVE", "5"))
accesslog = os.environ.get("STOPWIRE_ACCESS_LOG") or None
loglevel = os.environ.get("STOPWIRE_LOG_LEVEL", "info")
# gunicorn 27's control socket has one default path per user: several instances on a
# host (tests, blue/green deploys) would fight over it, and Stopwire does not use it.
control_socket_disable = True

_demo: subprocess.Popen | None = None
_own_dirs: list[str] = []


def on_starting(server):
    """Before workers fork: directories they share, and the demo model if needed."""
    global _demo
    for variable, prefix in (
        ("STOPWIRE_RUN_DIR", "stopwire-run-"),
        # prometheus-client's multiprocess mode: every worker writes its metrics here.
        ("PROMETHEUS_MULTIPROC_DIR", "stopwire-metrics-"),
    ):
        if not os.environ.get(variable):
            os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
            _own_dirs.append(os.environ[variable])
    provider = os.environ.get("STOPWIRE_PROVIDER", "demo")
    if provider == "demo" and not os.environ.get("STOPWIRE_PROVIDER_URL"):
        _demo = subprocess.Popen(
            [sys.executable, "-m", "app.demo", "--port", "0", "--exit-with-parent"],
            stdout=subprocess.PIPE,
            text=True,
        )
        url = _demo.stdout.readline().strip()
        if not url:
            raise RuntimeError("the demo provider did not start")
        os.environ["STOPWIRE_PROVIDER_URL"] = url
        server.log.info("demo provider (a simulated model) at %s", url)


def post_worker_init(worker):
    """In each worker, after gevent patched it: interrupt live generations on SIGTERM."""
    from app.shutdown import interrupt_on_sigterm

    stopwire = worker.wsgi.extensions.get("stopwire")
    if stopwire is not None:
        interrupt_on_sigterm(stopwire)


def child_exit(server, worker):
    """A worker's live gauges must not outlive it."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Stop the demo model and remove the directories this master made."""
    if _demo is not None:
        _demo.terminate()
        _demo.wait(5)
    for path in _own_dirs:
        shutil.rmtree(path, ignore_errors=True)
