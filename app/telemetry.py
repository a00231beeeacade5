"""What operators see of each generation: Prometheus metrics and one JSON log line.

Under gunicorn every worker is its own process; gunicorn.conf.py points
PROMETHEUS_MULTIPROC_DIR at a directory shared by them before they start, and
`/metrics` aggregates it. Never message content, never keys.
"""

import json
import logging
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from app.streaming import Generation

log = logging.getLogger("stopwire.generations")

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

GENERATIONS = Counter(
    "stopwire_generations", "Finished generations by final status and reason", ["status", "reason"]
)
ACTIVE = Gauge(
    "stopwire_generations_active", "Generations streaming now", multiprocess_mode="livesum"
)
STOP_LATENCY = Histogram(
    "stopwire_stop_latency_seconds",
    "From the stop signal (disconnect seen, stop asked) to the provider connection closed",
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "stopwire_time_to_first_token_seconds",
    "From the request to the first text",
    buckets=TTFT_BUCKETS,
)
TOKENS = Counter("stopwire_tokens_relayed", "Provider text deltas relayed to clients")
TOKENS_AFTER_STOP = Counter(
    "stopwire_provider_tokens_after_stop", "Provider text deltas that arrived after a stop"
)
PROVIDER_ERRORS = Counter("stopwire_provider_errors", "Provider failures by type", ["type"])
HEARTBEATS = Counter("stopwire_heartbeats", "Keepalive comments sent while the provider was silent")


def ended(generation: Generation, provider: str, model: str) -> None:
    """Count a finished generation and write its log line."""
    summary = generation.summary()
    GENERATIONS.labels(summary["status"], summary["reason"] or "").inc()
    TOKENS.inc(generation.delivered_tokens)
    HEARTBEATS.inc(generation.heartbeats)
    TOKENS_AFTER_STOP.inc(generation.tokens_after_stop)
    outcome = generation.outcome
    if outcome is not None and outcome.error is not None:
        PROVIDER_ERRORS.labels(outcome.error["type"]).inc()
    ttft = _seconds(generation.created_at, generation.first_token_at)
    if ttft is not None:
        TIME_TO_FIRST_TOKEN.observe(ttft)
    receipt = summary.get("receipt")
    if receipt is not None:
        STOP_LATENCY.observe(receipt["stop_to_close_ms"] / 1000)
    log.info(json.dumps(_log_fields(generation, summary, provider, model, ttft)))


def exposition() -> tuple[bytes, str]:
    """The metrics page: every worker's when gunicorn shares a directory, else ours."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _log_fields(generation, summary, provider, model, ttft) -> dict:
    receipt = summary.get("receipt") or {}
    return {
        "event": "generation_finished",
        "generation_id": generation.id,
        "status": summary["status"],
        "reason": summary["reason"],
        "provider": provider,
        "model": model,
        "tokens": summary["usage"]["completion_tokens"],
        "tokens_estimated": summary["usage"]["estimated"],
        "ttft_ms": _ms(ttft),
        "duration_ms": _ms(_seconds(generation.created_at, generation.ended_at)),
        "stop_latency_ms": receipt.get("stop_to_close_ms"),
        "tokens_after_stop": generation.tokens_after_stop,
        "error_type": (generation.outcome.error or {}).get("type") if generation.outcome else None,
    }


def _seconds(start: float, end: float | None) -> float | None:
    return None if end is None else max(0.0, end - start)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
