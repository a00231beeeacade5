"""Many streams at once on one worker: closing them together closes every provider
connection, and nothing (sockets, greenlets, registry entries) is left behind."""

import time
import uuid

import pytest
import requests
from conftest import Server
from wire import AUTH, open_stream

STREAMS = 200


@pytest.fixture(scope="module")
def one_worker(upstream):
    server = Server(upstream.url, workers=1, STOPWIRE_HEARTBEAT_S="1")
    # Warm up: the first generation opens what lives for the worker's lifetime (the
    # peer socket, a pooled provider connection, the DNS resolver's thread).
    open_stream(server.url, "warm-up [demo tokens=1 gap=0]").events()
    yield server
    server.close()


def settled_health(server: Server, live: int = 0, timeout: float = 10.0) -> dict:
    """The worker's health once it holds exactly `live` generations."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = requests.get(f"{server.url}/api/debug/stats", headers=AUTH, timeout=5).json()
        if health["live_generations"] == live:
            return health
        time.sleep(0.05)
    raise AssertionError(f"live generations never reached {live}: {health}")


@pytest.mark.parametrize("close", ["close_fin", "close_rst"])
def test_closing_200_streams_at_once_closes_every_provider_connection(one_worker, upstream, close):
    before = settled_health(one_worker)
    batch = uuid.uuid4().hex[:10]
    conns = [
        open_stream(one_worker.url, f"{batch}-{i} [demo tokens=400 gap=0.05]")
        for i in range(STREAMS)
    ]
    for conn in conns:
        conn.events(tokens=1)
    assert settled_health(one_worker, live=STREAMS)["live_generations"] == STREAMS

    closed_at = time.monotonic()
    for conn in conns:
        getattr(conn, close)()

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = upstream.streams(batch)
        if all(r["ended"] != "streaming" for r in records):
            break
        time.sleep(0.05)
    assert len(records) == STREAMS
    assert {r["ended"] for r in records} == {"client_closed"}
    last_close = max(r["client_closed_at"] for r in records)
    assert last_close - closed_at < 3.0  # generous; bench/ reports the real spread
    assert sum(t > closed_at + 0.5 for r in records for t in r["token_times"]) == 0

    # Finished generations may still be saving and unwinding for a moment; a leak never ends.
    deadline = time.monotonic() + 10
    while True:
        after = settled_health(one_worker)
        settled = after["open_fds"] <= before["open_fds"] + 2
        settled = settled and after["greenlets"] <= before["greenlets"] + 2
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert after["open_fds"] <= before["open_fds"] + 2, (before, after)
    assert after["greenlets"] <= before["greenlets"] + 2, (before, after)
