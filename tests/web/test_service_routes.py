"""/healthz, /metrics and the debug stats switch of the standalone service."""

import pytest
from flask import Flask
from flask.testing import FlaskClient
from web_support import MakeApp, api_error


def test_healthz_is_exactly_ok(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json() == {"status": "ok"}


def test_metrics_answer_prometheus_text_on_loopback(client: FlaskClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = response.get_data(as_text=True)
    assert "# TYPE stopwire_generations_active gauge" in text
    assert "# TYPE stopwire_stop_latency_seconds histogram" in text


@pytest.mark.parametrize(
    ("remote_addr", "headers"),
    [("203.0.113.7", {}), ("127.0.0.1", {"X-Forwarded-For": "203.0.113.7"})],
)
def test_metrics_are_not_for_the_public(
    client: FlaskClient, remote_addr: str, headers: dict[str, str]
) -> None:
    response = client.get("/metrics", headers=headers, environ_base={"REMOTE_ADDR": remote_addr})
    assert response.status_code == 404


def test_a_metrics_token_is_required_when_set(make_app: MakeApp) -> None:
    client = make_app(STOPWIRE_METRICS_TOKEN="s3cret").test_client()
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_debug_stats_are_off_by_default(client: FlaskClient) -> None:
    api_error(client.get("/api/debug/stats"), 404, "not_found")


def test_debug_stats_with_the_switch_on(make_app: MakeApp) -> None:
    app: Flask = make_app(STOPWIRE_DEBUG_STATS=True)
    stats = app.test_client().get("/api/debug/stats").get_json()
    keys = {"pid", "live_generations", "open_fds", "store_connections", "greenlets"}
    keys |= {"gc_frozen", "greenlet_tree_tracked"}
    assert set(stats) == keys
    assert stats["live_generations"] == 0 and stats["open_fds"] > 0
