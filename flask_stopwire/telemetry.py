"""What operators see of each generation: Prometheus metrics and one JSON log line.

Under gunicorn every worker is its own process; `flask_stopwire.gunicorn` points
PROMETHEUS_MULTIPROC_DIR at a directory shared by them before they start, and
`/metrics` aggregates it. Never message content, never keys.
"""

import json
import logging
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from flask_stopwire.relay.generation import Generation

log = logging.getLogger("flask_stopwire.generations")

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """One app's metrics, in a registry of its own (never the process-global one).

    Under gunicorn every worker writes its values to the shared multiprocess directory
    whatever the registry; `exposition()` then reads that directory.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.generations = Counter(
            "stopwire_generations",
            "Finished generations by final status and reason",
            ["status", "reason"],
            registry=reg,
        )
        self.active = Gauge(
            "stopwire_generations_active",
            "Generations streaming now",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.stop_latency = Histogram(
            "stopwire_stop_latency_seconds",
            "From the stop signal (disconnect seen, stop asked) to the provider connection closed",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.time_to_first_token = Histogram(
            "stopwire_time_to_first_token_seconds",
            "From the request to the first text",
            buckets=TTFT_BUCKETS,
            registry=reg,
        )
        self.tokens = Counter(
            "stopwire_tokens_relayed", "Provider text deltas relayed to clients", registry=reg
        )
        self.tokens_after_stop = Counter(
            "stopwire_provider_tokens_after_stop",
            "Provider text deltas that arrived after a stop",
            registry=reg,
        )
        self.provider_errors = Counter(
            "stopwire_provider_errors", "Provider failures by type", ["type"], registry=reg
        )
        self.refused = Counter(
            "stopwire_limit_refusals",
            "Requests refused by a per-identity limit (rate or running answers)",
            ["limit"],
            registry=reg,
        )
        self.heartbeats = Counter(
            "stopwire_heartbeats",
            "Keepalive comments sent while the provider was silent",
            registry=reg,
        )

    def ended(self, generation: Generation, provider: str, model: str) -> None:
        """Count a finished generation and write its log line."""
        summary = generation.summary()
        self.generations.labels(summary["status"], summary["reason"] or "").inc()
        self.tokens.inc(generation.delivered_tokens)
        self.heartbeats.inc(generation.heartbeats)
        self.tokens_after_stop.inc(generation.tokens_after_stop)
        outcome = generation.outcome
        if outcome is not None and outcome.error is not None:
            self.provider_errors.labels(outcome.error["type"]).inc()
        ttft = _seconds(generation.created_at, generation.first_token_at)
        if ttft is not None:
            self.time_to_first_token.observe(ttft)
        receipt = summary.get("receipt")
        if receipt is not None:
            self.stop_latency.observe(receipt["stop_to_close_ms"] / 1000)
        log.info(json.dumps(_log_fields(generation, summary, provider, model, ttft)))

    def exposition(self) -> tuple[bytes, str]:
        """The metrics page: every worker's when gunicorn shares a directory, else ours."""
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
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
