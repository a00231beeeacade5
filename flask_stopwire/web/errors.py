"""API errors and their JSON shape `{"error": {"type", "message"}}`.

Every error raised in the API blueprint answers JSON, never an HTML page:
our ApiError, werkzeug's HTTP errors (400, 413, 415, ...) and unexpected exceptions.
The handlers are the blueprint's own, so a host app's error pages stay untouched.
"""

import logging

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
}


class ApiError(Exception):
    """An error the client caused or should know about, with its HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> Response:
    """The JSON error body with its status."""
    response = jsonify({"error": {"type": _TYPES.get(status, "error"), "message": message}})
    response.status_code = status
    return response


def register_json_errors(blueprint: Blueprint) -> None:
    """Make every error raised under `blueprint` a JSON error response."""

    @blueprint.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.message)

    @blueprint.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        response = error_response(exc.code or 500, exc.description or exc.name)
        for name, value in exc.get_headers():  # e.g. Allow on a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @blueprint.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal error; see the server log")
