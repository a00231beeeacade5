"""Reading request bodies and checking what they hold, so no input can cause a 500.

Shared by every blueprint: the JSON-only rule (415 for any other content type, even
without a body, so cross-site forms are refused), the size limit (413), malformed or
absurdly nested JSON (400), broken HTTP framing (400) and text that is not Unicode
(a lone surrogate, what a browser sends after cutting an emoji in half).
"""

import json
from typing import Any

from flask import request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from flask_stopwire.state import get_stopwire
from flask_stopwire.web.errors import ApiError

MAX_SEEN_CHARS = 2**53 - 1  # JavaScript's largest exact integer


def json_body(required: bool) -> dict[str, Any]:
    """The request's JSON object; an absent optional body reads as {}."""
    # Per request, so a host app's own MAX_CONTENT_LENGTH stays its own.
    request.max_content_length = get_stopwire().settings.max_body_bytes
    content_type = request.headers.get("Content-Type")
    if content_type is not None and not request.is_json:
        raise ApiError(415, "send JSON with Content-Type: application/json")
    raw = _body_bytes()
    if not raw and not required:
        return {}
    if content_type is None:
        raise ApiError(415, "send JSON with Content-Type: application/json")
    return json_object(raw, "the body")


def json_object(raw: str | bytes, what: str) -> dict[str, Any]:
    """`raw` parsed as a JSON object; ApiError 400 naming `what` otherwise (malformed,
    absurdly nested, or not an object)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, f"{what} must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"{what} must be a JSON object")
    return body


def text(value: Any, what: str, required: bool = True) -> str:
    """`value` as a string that can be stored and sent on; ApiError 400 otherwise."""
    if not isinstance(value, str) or (required and not value.strip()):
        kind = "a non-empty string" if required else "a string"
        raise ApiError(400, f"{what} must be {kind}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{what} is not valid Unicode text (a lone surrogate?)") from None
    return value


def seen_chars(body: dict[str, Any]) -> int | None:
    """The optional `seen_chars` of a stop."""
    value = body.get("seen_chars")
    if value is not None and (type(value) is not int or not 0 <= value <= MAX_SEEN_CHARS):
        raise ApiError(400, f"seen_chars must be an integer from 0 to {MAX_SEEN_CHARS}")
    return value


def resume_grace_s(body: dict[str, Any], cap: float) -> float:
    """The optional `resume_grace_s`: how long an answer runs on without a viewer,
    at most `cap` (0: a disconnect stops it at once)."""
    value = body.get("resume_grace_s", 0)
    if type(value) not in (int, float) or not 0 <= value < float("inf"):
        raise ApiError(400, "resume_grace_s must be a number of seconds, 0 or more")
    return min(float(value), cap)


def discard_on_stop(body: dict[str, Any]) -> bool:
    """The optional `on_stop`: "keep" (the default) or "discard" the stopped text."""
    value = body.get("on_stop", "keep")
    if value not in ("keep", "discard"):
        raise ApiError(400, 'on_stop must be "keep" or "discard"')
    return value == "discard"


def _body_bytes() -> bytes:
    try:
        raw = request.get_data(cache=True)
        # A body without Content-Length (chunked) is cut at the limit without a word:
        # one byte more on the wire means it was too large.
        limit = request.max_content_length
        streamed = request.content_length is None and limit is not None
        if streamed and len(raw) >= limit and request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
        return raw
    except HTTPException:
        raise  # 413
    except Exception as exc:
        # gunicorn's parser raises while the body is read (bad chunk sizes, a missing
        # terminator): the client's framing, never our failure.
        raise ApiError(400, "the request body could not be read (malformed HTTP framing)") from exc
