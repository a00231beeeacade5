"""`GET /metrics` in Prometheus' text format."""

from flask import Response

from flask_stopwire.state import get_stopwire
from flask_stopwire.web.operator import require_operator


def exposition() -> Response:
    """Every worker's metrics (`flask_stopwire.gunicorn` sets up the shared directory)."""
    require_operator()
    body, content_type = get_stopwire().metrics.exposition()
    return Response(body, content_type=content_type)
