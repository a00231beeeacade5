"""Stopwire mounted in someone else's Flask app, served by plain `gunicorn -k gevent`."""

import uuid

import pytest
import requests
from conftest import Server
from wire import open_stream


@pytest.fixture(scope="module")
def host(upstream):
    server = Server(upstream.url, workers=2, host_app="host_app:app")
    yield server
    server.close()


def test_the_host_app_keeps_its_own_pages_and_errors(host):
    assert requests.get(f"{host.url}/", timeout=10).text == "the host app's own page"
    missing = requests.get(f"{host.url}/not-ours", timeout=10)
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")  # Flask's, untouched


def test_mounted_api_answers_json_errors_under_its_prefix(host):
    missing = requests.get(f"{host.url}/llm/nothing", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    bad = requests.post(f"{host.url}/llm/chat", data="x", timeout=10)
    assert bad.status_code == 415


def test_mounted_relay_streams_and_stops_across_workers(host, upstream):
    complete = open_stream(host.url, f"{uuid.uuid4().hex} [demo tokens=3 gap=0]", "/llm/chat")
    assert complete.events()[-1].data["status"] == "complete"

    prompt = uuid.uuid4().hex
    conn = open_stream(host.url, f"{prompt} [demo tokens=200 gap=0.02]", "/llm/chat")
    conn.events(tokens=2)
    stop_url = f"{host.url}/llm/generations/{conn.meta['generation_id']}/stop"
    for _ in range(4):  # fresh connections: both workers get asked
        answer = requests.post(stop_url, timeout=10)
        assert answer.status_code == 200 and answer.json()["status"] == "stopped"
    assert conn.events()[-1].data["reason"] == "user_stop"
    assert upstream.ended(prompt)["ended"] == "client_closed"


def test_mounted_relay_notices_a_closed_client(host, upstream):
    prompt = uuid.uuid4().hex
    conn = open_stream(host.url, f"{prompt} [demo tokens=50 gap=0.01 silence=2:30]", "/llm/chat")
    conn.events(tokens=2)
    closed_at = conn.close_rst()
    assert upstream.ended(prompt)["client_closed_at"] - closed_at < 1.0
