"""Metrics add up across workers; each generation logs one JSON line without content."""

import json
import re
import time
import uuid

import pytest
import requests
from conftest import Server
from wire import AUTH, open_stream


@pytest.fixture(scope="module")
def observed(upstream):
    server = Server(upstream.url, workers=2, STOPWIRE_HEARTBEAT_S="0.2")
    yield server
    server.close()


def scrape(server: Server) -> dict[str, float]:
    text = requests.get(f"{server.url}/metrics", headers=AUTH, timeout=10).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value
        for key, value in samples.items()
        if re.fullmatch(rf"{name}(\{{.*\}})?", key) and all(w in key for w in wanted)
    )


def grew(before: dict, after: dict, name: str, **labels: str) -> float:
    return metric(after, name, **labels) - metric(before, name, **labels)


def test_metrics_count_every_outcome_across_two_workers(observed):
    before = scrape(observed)
    secret = uuid.uuid4().hex
    for _ in range(3):
        open_stream(observed.url, f"{secret} [demo tokens=5 gap=0]").events()
    open_stream(observed.url, f"{secret} [demo status=429]").events()
    silent = open_stream(observed.url, f"{secret} [demo tokens=3 gap=0 silence=1:30]")
    silent.events(tokens=1)
    while silent.next_event().comment != "keepalive":  # the provider is silent: heartbeats
        pass
    requests.post(
        f"{observed.url}/api/generations/{silent.meta['generation_id']}/stop",
        headers=AUTH,
        timeout=10,
    ).raise_for_status()
    silent.events()
    gone = open_stream(observed.url, f"{secret} [demo tokens=300 gap=0.02]")
    gone.events(tokens=2)
    gone.close_rst()

    # The disconnect is recorded a moment after the close. /metrics may be served by
    # either worker: both are counted.
    disconnected = {"status": "stopped", "reason": "client_disconnect"}
    for _ in range(100):
        after = scrape(observed)
        if grew(before, after, "stopwire_generations_total", **disconnected) == 1 and (
            metric(after, "stopwire_generations_active") == 0
        ):
            break
        time.sleep(0.05)

    def grown(name, **labels):
        return grew(before, after, name, **labels)

    assert grown("stopwire_generations_total", **disconnected) == 1

    assert grown("stopwire_generations_total", status="complete") == 3
    assert grown("stopwire_generations_total", status="error", reason="upstream_error") == 1
    assert grown("stopwire_generations_total", status="stopped", reason="user_stop") == 1
    assert grown("stopwire_provider_errors_total", type="provider_rate_limited") == 1
    assert grown("stopwire_tokens_relayed_total") >= 3 * 5 + 1 + 2
    assert grown("stopwire_stop_latency_seconds_count") == 2
    assert grown("stopwire_stop_latency_seconds_bucket", le="1.0") == 2
    assert grown("stopwire_time_to_first_token_seconds_count") == 5
    assert grown("stopwire_heartbeats_total") >= 1
    assert metric(after, "stopwire_generations_active") == 0


def test_one_json_line_per_generation_without_content(observed):
    secret = uuid.uuid4().hex
    conn = open_stream(observed.url, f"{secret} [demo tokens=4 gap=0]")
    conn.events()
    generation_id = conn.meta["generation_id"]
    lines = [
        json.loads(line)
        for line in observed.output().splitlines()
        if line.startswith("{") and generation_id in line
    ]
    assert len(lines) == 1
    entry = lines[0]
    assert entry["event"] == "generation_finished"
    assert (entry["status"], entry["reason"], entry["tokens"]) == ("complete", None, 4)
    assert (entry["provider"], entry["model"]) == ("demo", "stopwire-demo")
    assert entry["ttft_ms"] > 0 and entry["duration_ms"] >= entry["ttft_ms"]
    assert entry["stop_latency_ms"] is None
    assert secret not in observed.output()
    assert "A stop button" not in observed.output()  # the demo's answer text


def test_expected_outcomes_log_no_traceback(observed, upstream):
    """404s, 409s and a stop cutting the provider's read are normal: no traceback, no warning."""
    base = f"{observed.url}/api/conversations"
    assert requests.get(f"{base}/conv_unknown", headers=AUTH, timeout=10).status_code == 404
    busy = open_stream(observed.url, f"{uuid.uuid4().hex} [demo tokens=300 gap=0.02]")
    busy.events(tokens=1)
    again = {"content": "again", "conversation_id": busy.meta["conversation_id"]}
    conflict = requests.post(f"{observed.url}/api/chat", json=again, headers=AUTH, timeout=10)
    assert conflict.status_code == 409
    prompts = [uuid.uuid4().hex for _ in range(6)]
    for prompt in prompts:  # client-disconnect stops, each cutting a live provider read
        conn = open_stream(observed.url, f"{prompt} [demo tokens=300 gap=0.01]")
        conn.events(tokens=2)
        conn.close_rst()
    for prompt in prompts:
        assert upstream.ended(prompt)["ended"] == "client_closed"
    busy.close_rst()
    output = observed.output()
    assert "Traceback" not in output
    assert "provider_disconnected" not in output


def test_limit_refusals_are_counted(upstream):
    server = Server(
        upstream.url, workers=2, STOPWIRE_MAX_ACTIVE_PER_USER="1", STOPWIRE_RATE_LIMIT="4/minute"
    )
    try:
        first = open_stream(server.url, f"{uuid.uuid4().hex} [demo tokens=300 gap=0.02]")
        refused = requests.post(
            f"{server.url}/api/chat", json={"content": "second"}, headers=AUTH, timeout=10
        )
        assert refused.status_code == 429 and "Retry-After" in refused.headers
        first.close_rst()
        statuses = [
            requests.get(f"{server.url}/api/conversations", headers=AUTH, timeout=10).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 429]  # 4 per minute: the chat, the refusal, 2 lists
        samples = scrape(server)
        assert metric(samples, "stopwire_limit_refusals_total", limit="running") == 1
        assert metric(samples, "stopwire_limit_refusals_total", limit="rate") == 1
    finally:
        server.close()
