"""API errors and their JSON shape `{"error": {"type", "message"}}`.

Every error raised in the API blueprint answers JSON, never an HTML page:
our ApiError, werkzeug's HTTP errors (400, 413, 415, ...) and unexpected exceptions.
The handlers are the blueprint's own, so a host app's error pages stay untouched.
"""

import logging

import gevent
from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from flask_stopwire import store

log = logging.getLogger(__name__)

STORE_DOWN = (
    "the conversation store cannot be reached or written right now; nothing was lost, retry"
)

DISCARD_LIMIT = 64 * 1024 * 1024
DISCARD_TIMEOUT_S = 10.0

_TYPES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    """An error the client caused or should know about, with its HTTP status."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after  # seconds, for a 429 or 503


def error_response(status: int, message: str, retry_after: int | None = None) -> Response:
    """The JSON error body with its status."""
    response = jsonify({"error": {"type": _TYPES.get(status, "error"), "message": message}})
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def discard_body() -> None:
    """Read and drop a refused body (bounded), so the client can read our answer.

    Closing a socket with unread bytes makes the kernel send RST, and clients then
    report a connection reset instead of the 413 we sent.
    """
    stream = request.environ.get("wsgi.input")
    left = DISCARD_LIMIT
    with gevent.Timeout(DISCARD_TIMEOUT_S, False):
        try:
            while left > 0 and (chunk := stream.read(min(left, 65536))):
                left -= len(chunk)
        except Exception:  # broken framing or a client that left: nothing more to read
            return


class AnyPathConverter(PathConverter):
    """`path`, but any character: werkzeug's `.` stops at a newline, and a URL with an
    encoded one (`%0A`) would miss our catch-all routes for the host's HTML 404."""

    regex = "[^/](?s:.*?)"


ANY_PATH = "stopwire_path"  # the converter's name in the host app's url_map


def register_json_errors(blueprint: Blueprint) -> None:
    """Make every error raised under `blueprint` a JSON error response."""

    @blueprint.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.retry_after)

    @blueprint.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            discard_body()
        message = exc.description or exc.name
        if exc.code == 429:
            message = f"too many requests ({message}); see Retry-After"
        response = error_response(exc.code or 500, message)
        for name, value in exc.get_headers():  # e.g. Allow on a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @blueprint.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if store.unavailable(exc):
            log.warning("storage unavailable on %s %s: %r", request.method, request.path, exc)
            return error_response(503, STORE_DOWN, retry_after=1)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal error; see the server log")
