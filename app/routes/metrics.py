"""`GET /metrics` in Prometheus' text format."""

from flask import Blueprint, Response

from app import telemetry

metrics = Blueprint("metrics", __name__)


@metrics.get("/metrics")
def exposition() -> Response:
    """Every worker's metrics (gunicorn.conf.py sets up the shared directory)."""
    body, content_type = telemetry.exposition()
    return Response(body, content_type=content_type)
