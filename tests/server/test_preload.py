"""`--preload` loads the app in gunicorn's master before the fork: every per-worker part
(the stop socket, the heartbeat, the SIGTERM handler) must still start in each worker."""

import signal
import time
import uuid

import pytest
from conftest import Server
from wire import connection_to, open_stream, pinned


@pytest.fixture
def preloaded(upstream):
    server = Server(upstream.url, workers=2, GUNICORN_CMD_ARGS="--preload")
    yield server
    server.close()


def test_preloaded_workers_stop_each_others_answers(preloaded, upstream):
    prompt = uuid.uuid4().hex
    streaming_pid, conn = pinned(preloaded.url)
    conn.post("/api/chat", {"content": f"{prompt} [demo tokens=300 gap=0.02]"})
    generation_id = conn.events(tokens=2)[0].data["generation_id"]
    other = connection_to(preloaded.url, lambda pid: pid != streaming_pid)
    other.post(f"/api/generations/{generation_id}/stop", {})
    assert other.status == 200 and other.json()["status"] == "stopped"
    assert upstream.ended(prompt)["ended"] == "client_closed"


def test_preloaded_workers_interrupt_on_sigterm(preloaded, upstream):
    prompt = uuid.uuid4().hex
    conn = open_stream(preloaded.url, f"{prompt} [demo tokens=500 gap=0.02]")
    conn.events(tokens=2)
    term_at = time.monotonic()
    preloaded.process.send_signal(signal.SIGTERM)
    done = conn.events()[-1].data
    assert time.monotonic() - term_at < 5.0
    assert (done["status"], done["reason"]) == ("interrupted", "shutdown")
    assert upstream.ended(prompt)["ended"] == "client_closed"
