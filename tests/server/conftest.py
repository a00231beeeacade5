"""Real processes on loopback: the demo provider and gunicorn with gevent workers."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from wire import TEST_KEY

from tests.store.databases import RawPostgres, create_database, drop_database

ROOT = Path(__file__).resolve().parents[2]
# The database every Server a test builds itself uses unless told:
# `STOPWIRE_TEST_DATABASE=postgresql pytest tests/server` runs the whole server suite on
# PostgreSQL (and `=sqlite` only on SQLite, the quick local run).
DEFAULT_DATABASE = os.environ.get("STOPWIRE_TEST_DATABASE", "sqlite")
# The databases the shared `server` fixture runs on: both, unless one is asked for.
SERVER_DATABASES = (
    (DEFAULT_DATABASE,) if "STOPWIRE_TEST_DATABASE" in os.environ else ("sqlite", "postgresql")
)


class Upstream:
    """The demo provider in its own process; it records when each client left."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flask_stopwire.demo", "--port", "0", "--record-text", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.url = self.process.stdout.readline().strip()
        assert self.url.startswith("http://"), "the demo provider did not start"
        self.base = self.url.removesuffix("/v1")

    def streams(self, prompt: str | None = None) -> list[dict]:
        """The provider's records, optionally only those whose prompt contains `prompt`."""
        records = requests.get(f"{self.base}/demo/streams", timeout=5).json()["streams"]
        return [r for r in records if prompt is None or prompt in r["prompt"]]

    def record(self, prompt: str, timeout: float = 5.0) -> dict:
        """The one record for `prompt`, once the provider has seen the request."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.streams(prompt)
            if found:
                assert len(found) == 1, found
                return found[0]
            time.sleep(0.01)
        raise AssertionError(f"the provider never saw {prompt!r}")

    def ended(self, prompt: str, timeout: float = 5.0) -> dict:
        """The record for `prompt` once its stream has ended, however it ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.record(prompt, timeout)
            if record["ended"] != "streaming":
                return record
            time.sleep(0.01)
        raise AssertionError(f"the provider is still streaming {prompt!r}: {record}")

    def close(self) -> None:
        stop_process_group(self.process)


class Server:
    """`gunicorn -c gunicorn.conf.py` with gevent workers, on a free loopback port."""

    def __init__(
        self,
        upstream_url: str,
        workers: int = 1,
        host_app: str = "",
        port: int = 0,
        database: str = "",
        **settings: str,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.kind = database or DEFAULT_DATABASE
        if self.kind == "postgresql":  # a database of its own, dropped on close
            self.database: str | Path = create_database()
        else:
            self.database = Path(tempfile.mkdtemp(prefix="stopwire-test-")) / "stopwire.sqlite3"
        env = {
            **os.environ,
            "STOPWIRE_BIND": f"127.0.0.1:{self.port}",
            "STOPWIRE_WORKERS": str(workers),
            "STOPWIRE_PROVIDER_URL": upstream_url,
            "STOPWIRE_GRACEFUL_TIMEOUT": "5",
            "UPSTREAM_URL": upstream_url,
            "STOPWIRE_DATABASE": str(self.database),
            "PYTHONPATH": str(ROOT),
            "STOPWIRE_DEBUG_STATS": "1",
            # Every test request carries this key (wire.AUTH); caps are tested on their own.
            "STOPWIRE_CLIENT_KEYS": f"tester:{TEST_KEY}",
            "STOPWIRE_MAX_ACTIVE_PER_USER": "0",
            **settings,
        }
        env.pop("STOPWIRE_RUN_DIR", None)
        if host_app:  # someone else's app, with plain gunicorn flags and no config file
            command = ["-k", "gevent", "-w", str(workers), "-b", env["STOPWIRE_BIND"], host_app]
            cwd, health = Path(__file__).parent, "/whoami"
        else:
            command, cwd, health = ["-c", "gunicorn.conf.py"], ROOT, "/api/debug/stats"
        self.log_path = ROOT / ".pytest_cache" / f"gunicorn-{self.port}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *command],
            cwd=cwd,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port(self.port, self.process)
        self.wait_workers(workers, health)

    def wait_workers(self, count: int, health: str, timeout: float = 15.0) -> None:
        """Wait until `count` distinct workers answer (each booted and serving)."""
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < count and time.monotonic() < deadline:
            with requests.Session() as fresh:  # a new connection may land on another worker
                seen.add(fresh.get(f"{self.url}{health}", timeout=5).json()["pid"])
        assert len(seen) >= count, f"only workers {seen} answered"

    def output(self) -> str:
        """Everything gunicorn and the app logged so far."""
        return self.log_path.read_text()

    def query(self, sql: str, params: tuple = ()) -> list[dict]:
        """Rows of one statement (`?` parameters) on the server's database, as dicts."""
        if self.kind == "postgresql":
            raw = RawPostgres(str(self.database))
            try:
                cursor = raw.execute(sql, params)
                return [dict(zip(row.keys(), row, strict=True)) for row in cursor.fetchall()]
            finally:
                raw.close()
        with sqlite3.connect(self.database) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute(sql, params).fetchall()]

    def close(self) -> None:
        stop_process_group(self.process)
        self.log.close()
        if self.kind == "postgresql":
            drop_database(str(self.database))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout}s")


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the group we started, SIGKILL it if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


@pytest.fixture(scope="session")
def upstream():
    """One demo provider for the session: 20 ms per token, 40 ms to the first."""
    (ROOT / ".pytest_cache").mkdir(exist_ok=True)
    server = Upstream("--gap", "0.02", "--ttft", "0.04", "--tokens", "60")
    yield server
    server.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test on the module's `server` runs once per database (one server each): the
    module's `DATABASES`, else both, unless STOPWIRE_TEST_DATABASE names one."""
    if "database" not in metafunc.fixturenames:
        return
    if any("database" in m.args[0] for m in metafunc.definition.iter_markers("parametrize")):
        return  # the test names its databases itself
    kinds = getattr(metafunc.module, "DATABASES", SERVER_DATABASES)
    metafunc.parametrize("database", kinds, indirect=True, scope="module")


@pytest.fixture(scope="module")
def database(request: pytest.FixtureRequest) -> str:
    """The database the module's servers use: the default, or each of its `DATABASES`."""
    return getattr(request, "param", DEFAULT_DATABASE)


@pytest.fixture(scope="module")
def server(upstream, database):
    """gunicorn with two gevent workers in front of the demo provider."""
    process = Server(upstream.url, workers=2, database=database, STOPWIRE_HEARTBEAT_S="0.3")
    yield process
    process.close()
