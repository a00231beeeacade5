"""Stopwire mounted in someone else's Flask app, served by plain `gunicorn -k gevent`."""

import time
import uuid
from collections.abc import Callable

import pytest
import requests
from conftest import Server
from wire import AUTH, Connection, open_stream


@pytest.fixture(scope="module")
def host(upstream):
    server = Server(upstream.url, workers=2, host_app="host_app:app")
    yield server
    server.close()


def test_the_host_app_keeps_its_own_pages_and_errors(host):
    assert requests.get(f"{host.url}/", headers=AUTH, timeout=10).text == "the host app's own page"
    missing = requests.get(f"{host.url}/not-ours", headers=AUTH, timeout=10)
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")  # Flask's, untouched


def test_mounted_api_answers_json_errors_under_its_prefix(host):
    missing = requests.get(f"{host.url}/llm/nothing", headers=AUTH, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    bad = requests.post(f"{host.url}/llm/chat", data="x", headers=AUTH, timeout=10)
    assert bad.status_code == 415


def pinned(base_url: str) -> tuple[int, Connection]:
    """A new keep-alive connection and the pid of the host's worker that holds it."""
    conn = Connection(base_url)
    return conn.get_json("/whoami")["pid"], conn


def connection_to(base_url: str, want: Callable[[int], bool], tries: int = 300) -> Connection:
    """A keep-alive connection held by a worker whose pid satisfies `want` (see wire.py)."""
    for _ in range(tries):
        pid, conn = pinned(base_url)
        if want(pid):
            return conn
        conn.sock.close()
        time.sleep(0.01)
    raise AssertionError("no connection reached the wanted worker")


def test_mounted_relay_streams_and_stops_across_workers(host, upstream):
    complete = open_stream(host.url, f"{uuid.uuid4().hex} [demo tokens=3 gap=0]", "/llm/chat")
    assert complete.events()[-1].data["status"] == "complete"

    prompt = uuid.uuid4().hex
    streaming_pid, conn = pinned(host.url)
    conn.post("/llm/chat", {"content": f"{prompt} [demo tokens=200 gap=0.02]"})
    generation_id = conn.events(tokens=2)[0].data["generation_id"]
    stop_path = f"/llm/generations/{generation_id}/stop"
    other = connection_to(host.url, lambda pid: pid != streaming_pid)
    other.post(stop_path, {})
    assert other.status == 200, other.json()
    assert (other.json()["status"], other.json()["reason"]) == ("stopped", "user_stop")
    assert conn.events()[-1].data["reason"] == "user_stop"
    assert upstream.ended(prompt)["ended"] == "client_closed"
    # Idempotent, and the same outcome from the worker that held it.
    same = connection_to(host.url, lambda pid: pid == streaming_pid)
    same.post(stop_path, {})
    assert same.status == 200 and same.json()["status"] == "stopped"


def test_mounted_relay_notices_a_closed_client(host, upstream):
    prompt = uuid.uuid4().hex
    conn = open_stream(host.url, f"{prompt} [demo tokens=50 gap=0.01 silence=2:30]", "/llm/chat")
    conn.events(tokens=2)
    closed_at = conn.close_rst()
    assert upstream.ended(prompt)["client_closed_at"] - closed_at < 1.0
