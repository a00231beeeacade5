"""Flask-Stopwire installed, not editable, into someone else's project whose package is `app`.

The project in host_project/ is what such a team has: its own `app` package, a WSGI
module behind a middleware, and a gunicorn.conf.py with the one-line hook import. The
checkout is built and installed into a directory of its own, and gunicorn runs the host
from that directory, so every assertion is about the installed package, not this tree.
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
HOST_PROJECT = Path(__file__).parent / "host_project"
# Well inside the host's graceful_timeout (20 s): an interrupt only at the timeout fails.
INTERRUPT_WITHIN_S = 5.0


def _load(name: str, path: Path) -> ModuleType:
    """A helper module of tests/server under a name of its own (every conftest is `conftest`)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


wire = _load("wire", ROOT / "tests" / "server" / "wire.py")  # tests/server imports it so
servers = _load("stopwire_server_helpers", ROOT / "tests" / "server" / "conftest.py")


class Host:
    """The host project served by `gunicorn -k gevent -w 2 -c gunicorn.conf.py`."""

    def __init__(self, project: Path, site: Path, upstream_url: str):
        self.port = servers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Nothing of the caller's Stopwire setup leaks in, and the hooks make their own
        # run and metrics directories; the provider is ours, so no demo is launched.
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("STOPWIRE_") and key != "PROMETHEUS_MULTIPROC_DIR"
        }
        env.update(PYTHONPATH=str(site), STOPWIRE_PROVIDER_URL=upstream_url)
        self.project = project
        self.log_path = project / "gunicorn.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "2"),
                    *("-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{self.port}", "wsgi:app"),
                ],
                cwd=project,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        servers.wait_for_port(self.port, self.process)

    def output(self) -> str:
        """What gunicorn, the hooks and the app logged so far."""
        return self.log_path.read_text()

    def close(self) -> None:
        servers.stop_process_group(self.process)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout built and installed (not editable) into a directory of its own."""
    base = tmp_path_factory.mktemp("install")
    # pip builds in the source tree (build/, *.egg-info): build a copy, not the checkout
    # others work in. The copy keeps app/, tests/ and bench/, so the packaging filter is
    # what keeps them out.
    checkout = base / "checkout"
    shutil.copytree(
        ROOT,
        checkout,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "*.egg-info", "__pycache__", ".*_cache", "build", "instance"
        ),
    )
    target = base / "site"
    # Build isolation, as a plain `pip install <checkout>` does: the venv's setuptools may
    # be too old for pyproject's license field, so pip brings the build requirement.
    installed = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"),
            *("--disable-pip-version-check", "--target", str(target), str(checkout)),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return target


@pytest.fixture(scope="module")
def upstream() -> Iterator[Any]:
    """Our own demo provider: the test reads its records of when the relay hung up."""
    provider = servers.Upstream("--gap", "0.02", "--ttft", "0.04", "--tokens", "60")
    yield provider
    provider.close()


@pytest.fixture(scope="module")
def host(site: Path, upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """The host project, copied to a fresh directory and served by gunicorn."""
    project = tmp_path_factory.mktemp("host") / "project"
    shutil.copytree(HOST_PROJECT, project, ignore=shutil.ignore_patterns("__pycache__"))
    server = Host(project, site, upstream.url)
    yield server
    server.close()


def test_the_install_adds_only_flask_stopwire(site: Path) -> None:
    entries = set(os.listdir(site))
    assert "app" not in entries, "installing Flask-Stopwire would overwrite the host's `app`"
    dist_info = {e for e in entries if re.fullmatch(r"flask_stopwire-[^-]+\.dist-info", e)}
    assert len(dist_info) == 1 and entries == {"flask_stopwire", *dist_info}, entries
    record = (site / dist_info.pop() / "RECORD").read_text().splitlines()
    assert {line.split("/")[0] for line in record} == entries
    assert (site / "flask_stopwire" / "py.typed").is_file()


def test_the_worker_runs_the_hosts_app_and_the_installed_extension(host: Host, site: Path) -> None:
    modules = requests.get(f"{host.url}/modules", timeout=10).json()
    assert Path(modules["app"]).is_relative_to(host.project), modules
    assert Path(modules["flask_stopwire"]).is_relative_to(site), modules
    assert Path(modules["hooks"]).is_relative_to(site), modules


def test_the_host_keeps_its_own_pages_and_404s(host: Host) -> None:
    assert requests.get(f"{host.url}/", timeout=10).text == "the host's own page"
    for path in ("/v1/anything", "/v1/models", "/v1/chat/completions"):
        missing = requests.get(f"{host.url}{path}", timeout=10)
        assert missing.status_code == 404, path
        # Flask's own HTML page: the OpenAI endpoint is off and Stopwire's JSON
        # errors stay under /llm.
        assert missing.headers["content-type"].startswith("text/html"), path
        assert "<title>404 Not Found</title>" in missing.text, path


def test_a_stream_completes(host: Host, upstream: Any) -> None:
    prompt = uuid.uuid4().hex
    conn = wire.open_stream(host.url, f"{prompt} [demo tokens=5 gap=0]", "/llm/chat")
    events = conn.events()
    conn.close_fin()
    assert "".join(e.data["text"] for e in events if e.event == "token").strip()
    assert events[-1].event == "done" and events[-1].data["status"] == "complete", events[-1]
    record = upstream.ended(prompt)
    assert (record["ended"], record["tokens_sent"]) == ("complete", 5), record


def test_a_stop_sent_to_the_other_worker_closes_the_provider(host: Host, upstream: Any) -> None:
    workers = connections_per_worker(host.url)
    try:
        (streaming, stream), (other, stopper) = workers.items()
        prompt = uuid.uuid4().hex
        post_json(stream, "/llm/chat", {"content": f"{prompt} [demo tokens=200 gap=0.02]"})
        assert stream.status == 200
        # The same user asks to stop: the browser sends back whatever cookie it was given.
        cookie = stream.headers.get("set-cookie", "").partition(";")[0]
        generation_id = stream.next_event().data["generation_id"]
        stream.events(tokens=2)

        post_json(stopper, f"/llm/generations/{generation_id}/stop", {}, cookie)
        assert stopper.status == 200, stopper.json()
        assert stopper.json()["status"] == "stopped"
        assert stopper.get_json("/whoami")["pid"] == other != streaming  # still pinned

        done = stream.events()[-1]
        assert (done.event, done.data["status"]) == ("done", "stopped"), done
        record = upstream.ended(prompt)
        assert record["ended"] == "client_closed" and record["tokens_sent"] < 200, record
    finally:
        for conn in workers.values():
            conn.close_fin()


def test_sigterm_interrupts_a_live_stream_at_once(host: Host, upstream: Any) -> None:
    conn = wire.Connection(host.url)
    try:
        pid = conn.get_json("/whoami")["pid"]
        prompt = uuid.uuid4().hex
        # 40 s of answer: without the hooks it would still be streaming at the graceful timeout.
        conn.post("/llm/chat", {"content": f"{prompt} [demo tokens=2000 gap=0.02]"})
        assert conn.status == 200
        conn.events(tokens=2)

        os.kill(pid, signal.SIGTERM)  # a deploy, as the master passes it to this worker
        signalled = time.monotonic()
        done = next_done(conn, signalled + INTERRUPT_WITHIN_S)
        assert done is not None, (
            f"no `done` within {INTERRUPT_WITHIN_S} s of SIGTERM; "
            f"gunicorn said:\n{host.output()[-3000:]}"
        )
        assert (done.data["status"], done.data["reason"]) == ("interrupted", "shutdown"), done
        assert upstream.ended(prompt)["ended"] == "client_closed"
    finally:
        conn.close_fin()


def connections_per_worker(url: str, workers: int = 2, timeout: float = 10.0) -> dict[int, Any]:
    """One keep-alive connection held by each worker, by pid.

    Which worker accepts a new connection is the kernel's choice, and an idle gevent
    worker tends to win again and again: keep opening until each has one.
    """
    found: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(found) < workers and time.monotonic() < deadline:
        conn = wire.Connection(url)
        pid = conn.get_json("/whoami")["pid"]
        if pid in found:
            conn.close_fin()
            time.sleep(0.01)
        else:
            found[pid] = conn
    if len(found) < workers:
        for conn in found.values():
            conn.close_fin()
        raise AssertionError(f"only workers {sorted(found)} answered within {timeout} s")
    return found


def post_json(conn: Any, path: str, body: dict[str, Any], cookie: str = "") -> None:
    """POST on a pinned connection, with a cookie when there is one; reads the head."""
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {conn.host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n" + (f"Cookie: {cookie}\r\n" if cookie else "")
    )
    conn.sock.sendall(head.encode() + b"\r\n" + payload)
    conn.read_head()


def next_done(conn: Any, deadline: float) -> Any:
    """The stream's `done` event, or None if it has not come by `deadline` (monotonic)."""
    while (left := deadline - time.monotonic()) > 0:
        conn.sock.settimeout(left)
        try:
            event = conn.next_event()
        except (TimeoutError, EOFError):
            return None
        if event is None or event.event == "done":
            return event
    return None
