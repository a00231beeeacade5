"""The processes a benchmark runs: the demo provider, gunicorn servers, and nginx.

Each runs in its own process group (start_new_session) so closing it kills the
whole group: gunicorn's master and its worker, and nothing we did not start.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from bench.client import BENCH_KEY

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


class Process:
    """A child process in a group of its own, with its output in bench/results/."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str] | None = None,
        pipe: bool = False,
        under: list[str] | None = None,
        program: str = sys.executable,
        scratch: str = "",
    ):
        self.scratch = scratch  # a directory of ours, removed on close
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.log = open(RESULTS / f"{name}.log", "w")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [*(under or []), program, *args],  # `under`: a tool that runs it (valgrind)
            cwd=ROOT,
            env={**inherited_env(), **(env or {})},
            stdout=subprocess.PIPE if pipe else self.log,
            stderr=self.log,
            text=True,
            start_new_session=True,
        )

    def close(self) -> None:
        """SIGTERM the group, SIGKILL it if it lingers; then remove the scratch directory."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.log.close()
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def serving_on(self, port: int, timeout: float = 20.0) -> str:
        """Its URL once it accepts on `port`; stopped, and the error raised, if it never does."""
        try:
            wait_for_port(port, self.process, timeout)
        except RuntimeError:
            self.close()
            raise
        return f"http://127.0.0.1:{port}"


class Demo(Process):
    """The demo provider; its records are the provider's own account of each stream."""

    def __init__(self):
        super().__init__(
            "demo", ["-m", "flask_stopwire.demo", "--port", "0", "--record-text"], pipe=True
        )
        self.url = self.process.stdout.readline().strip()  # the first line is its URL
        if not self.url.startswith("http://"):
            self.close()
            raise RuntimeError("the demo provider did not start; see bench/results/demo.log")
        self.base = self.url.removesuffix("/v1")

    def records(self) -> list[dict]:
        """Every stream record the provider kept since the last `clear()`."""
        return requests.get(f"{self.base}/demo/streams", timeout=10).json()["streams"]

    def clear(self) -> None:
        """Forget the records, so each batch polls a short list."""
        requests.delete(f"{self.base}/demo/streams", timeout=10)


class Gunicorn(Process):
    """gunicorn with gevent workers on a free loopback port."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        port: int,
        scratch: str = "",
        under: list[str] | None = None,
    ):
        super().__init__(name, ["-m", "gunicorn", *args], env, under=under, scratch=scratch)
        self.url = self.serving_on(port, 120.0 if under else 20.0)


NGINX_CONF = """\
worker_processes 1;
pid {scratch}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {scratch}/client_body;
    proxy_temp_path {scratch}/proxy;
    fastcgi_temp_path {scratch}/fastcgi;
    uwsgi_temp_path {scratch}/uwsgi;
    scgi_temp_path {scratch}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


class Nginx(Process):
    """Debian's nginx, one worker, relaying every request to `upstream` unbuffered: a relay
    in C with no application, the least a relay hop can add on this machine. Like any
    relay it closes the upstream connection when its client leaves (nginx's default)."""

    def __init__(self, upstream: str):
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.access(binary, os.X_OK):
            raise RuntimeError("nginx is not installed: apt-get install -y nginx")
        port = free_port()
        scratch = tempfile.mkdtemp(prefix="stopwire-bench-nginx-")
        os.chmod(scratch, 0o755)  # run as root, nginx's worker is another user
        conf = Path(scratch) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(scratch=scratch, port=port, upstream=upstream))
        # Its temporary files in the scratch directory (the conf: Debian's build has absolute
        # paths of its own), and its errors in our log.
        args = ["-g", "daemon off;", "-c", str(conf), "-p", f"{scratch}/", "-e", "stderr"]
        super().__init__("nginx", args, program=binary, scratch=scratch)
        self.url = self.serving_on(port)


def stopwire(
    provider_url: str,
    workers: int = 1,
    under: list[str] | None = None,
    config: str = "gunicorn.conf.py",
    **settings: str,
) -> Gunicorn:
    """Stopwire as it ships: `gunicorn -c gunicorn.conf.py`, one worker unless told
    (`config`: a file that wraps it, as bench/timeline_gunicorn.py does).

    Its conversations go to a fresh database of our own, not the instance folder's.
    `settings` are more STOPWIRE_* variables, e.g. WORKER_CONNECTIONS="2000"; `under` a
    tool that runs the server (valgrind).
    """
    port = free_port()
    scratch = tempfile.mkdtemp(prefix="stopwire-bench-")
    env = {
        "STOPWIRE_BIND": f"127.0.0.1:{port}",
        "STOPWIRE_WORKERS": str(workers),
        "STOPWIRE_PROVIDER_URL": provider_url,
        "STOPWIRE_DATABASE": os.path.join(scratch, "stopwire.sqlite3"),
        "STOPWIRE_DEBUG_STATS": "1",  # the pid and leak counters the benchmarks read
        # One identity (bench/client.py sends its key) with no cap on running answers.
        "STOPWIRE_CLIENT_KEYS": f"bench:{BENCH_KEY}",
        "STOPWIRE_MAX_ACTIVE_PER_USER": "0",
        **{f"STOPWIRE_{key}": value for key, value in settings.items()},
    }
    # One log per worker count: the suite runs a one-worker and a two-worker Stopwire.
    name = "stopwire" if workers == 1 else f"stopwire-{workers}w"
    return Gunicorn(name, ["-c", config], env, port, scratch, under)


def baseline(
    provider_url: str, worker_connections: int = 1000, under: list[str] | None = None
) -> Gunicorn:
    """The plain relay under the same gevent worker, one of it (`under`: as `stopwire`)."""
    port = free_port()
    # No control socket: its one default path per user would clash with other instances.
    args = ["-k", "gevent", "-w", "1", "-b", f"127.0.0.1:{port}", "--no-control-socket"]
    # Not Stopwire's gunicorn.conf.py, which gunicorn would read from the cwd by default.
    args += ["-c", "/dev/null"]
    args += ["--worker-connections", str(worker_connections), "bench.baseline_relay:app"]
    return Gunicorn("baseline", args, {"BASELINE_PROVIDER_URL": provider_url}, port, under=under)


@contextlib.contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """A detached git worktree of `revision` in a temporary directory, removed after."""
    with tempfile.TemporaryDirectory(prefix="stopwire-ab-") as scratch:
        tree = Path(scratch) / "base"
        _git("worktree", "add", "--detach", str(tree), revision)
        try:
            yield tree
        finally:
            _git("worktree", "remove", "--force", str(tree))


@contextlib.contextmanager
def running_from(tree: Path) -> Iterator[None]:
    """Servers started in here run in `tree` (their cwd): they import that tree's code."""
    global ROOT
    home, ROOT = ROOT, tree
    try:
        yield
    finally:
        ROOT = home


def _git(*args: str) -> None:
    subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True)


def inherited_env() -> dict[str, str]:
    """Our environment without STOPWIRE_* settings: the bench sets the ones it measures."""
    return {k: v for k, v in os.environ.items() if not k.startswith("STOPWIRE_")}


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    """Wait until something accepts on `port`; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}); see bench/results/")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout}s")
