"""An OpenAI-compatible endpoint with the same real cancellation as /api/chat.

`POST /v1/chat/completions` (stream true or false) and `GET /v1/models`, errors in
OpenAI's shape so the official SDKs raise their proper exceptions. A client that
leaves — mid-stream, before the first token, or while waiting for a non-streamed
answer — has its provider connection closed at once: the view iterates the relay
itself until the answer (or the first streamable event) is there, with the
disconnect watcher running all the while.
"""

import logging
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from flask_stopwire.formats import openai as fmt
from flask_stopwire.providers.base import Message, UnsupportedOption
from flask_stopwire.relay.generation import RelayEvent
from flask_stopwire.relay.turns import wait_turn
from flask_stopwire.state import get_stopwire
from flask_stopwire.web.api import stream_response
from flask_stopwire.web.errors import ANY_PATH, ApiError, discard_body
from flask_stopwire.web.inputs import discard_on_stop, json_body

log = logging.getLogger(__name__)

openai = Blueprint("stopwire_openai", __name__)

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
CHECKS = {
    "temperature": lambda v: _number(v) and 0 <= v <= 2,
    "top_p": lambda v: _number(v) and 0 <= v <= 1,
    "max_tokens": lambda v: type(v) is int and v > 0,
    "max_completion_tokens": lambda v: type(v) is int and v > 0,
    "seed": lambda v: type(v) is int,
    "user": lambda v: isinstance(v, str),
    "stop": lambda v: (
        isinstance(v, str)
        or (isinstance(v, list) and len(v) <= 4 and all(isinstance(s, str) for s in v))
    ),
}
# `on_stop` is Stopwire's own: "discard" marks a stopped answer's text as unwanted.
ACCEPTED = {"model", "messages", "stream", "stream_options", "n", "on_stop", *CHECKS}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


@openai.errorhandler(OpenAIError)
def _openai_error(exc: OpenAIError) -> Response:
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    response = jsonify(fmt.error_body(str(exc), kind, exc.param, exc.code))
    response.status_code = exc.status
    return response


@openai.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    if exc.code == 413:
        discard_body()
    return _openai_error(OpenAIError(exc.code or 500, exc.description or exc.name))


@openai.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _openai_error(OpenAIError(500, "internal error; see the server log"))


@openai.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(exc.status)
    response = _openai_error(OpenAIError(exc.status, exc.message, code=code))
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


@openai.before_request
def _identify() -> None:
    """With client keys set, /v1 takes keys only; otherwise whatever identifies /api."""
    stopwire = get_stopwire()
    if stopwire.settings.client_keys and not request.headers.get("Authorization"):
        raise OpenAIError(401, "invalid or missing API key", code="invalid_api_key")
    stopwire.identity()


@openai.get("/models")
def models() -> dict[str, Any]:
    """The one model this server relays to."""
    model = get_stopwire().provider.model
    return {"object": "list", "data": [_model(model)]}


@openai.get(f"/models/<{ANY_PATH}:model>")
def model(model: str) -> dict[str, Any]:
    """One model, or 404 for any other name."""
    _check_model(model)
    return _model(model)


@openai.post("/chat/completions")
def chat_completions() -> Response:
    """A completion, streamed or whole, from the configured provider."""
    wait_turn()  # a new answer's turn in the loop comes before any of its work (relay/turns)
    body = _body()
    stopwire = get_stopwire()
    _check_model(body.get("model"))
    messages = _messages(body.get("messages"))
    options = _options(body)
    try:
        discard = discard_on_stop(body)
    except ApiError as exc:
        raise OpenAIError(400, exc.message, param="on_stop") from None
    try:
        stopwire.provider.build_call(messages, options)  # pure: refuse what it cannot honour
    except UnsupportedOption as exc:
        raise OpenAIError(400, str(exc), param=exc.param) from None
    with stopwire.admitted() as generation_id:
        generation = stopwire.new_generation(
            messages, stopwire.identity().user_id, generation_id, options
        )
    generation.discard = discard
    client_sock = request.environ.get("gunicorn.sock") or request.environ.get("gunicorn.socket")
    events = stopwire.run(generation, client_sock)
    completion = fmt.Completion(generation.id, body["model"])
    first = _first_answer_event(events)
    if first is not None and first.kind == "error":
        events.close()
        raise OpenAIError(
            fmt.relay_error_status(first.data), first.data["message"], code=first.data["type"]
        )
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = fmt.encode(completion, [first] if first else [], events, include_usage)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return stream_response(chunks, headers)
    return _whole(completion, first, events)


def _first_answer_event(events: Iterator[RelayEvent]) -> RelayEvent | None:
    """Wait for the first event a client must see; None if the client left first.

    Until then no byte is sent, so a provider that fails at once gets a proper
    HTTP status (429, 502, ...) instead of an error inside a 200 stream.
    """
    for event in events:
        if event.kind != "meta":
            return event
    return None


def _whole(completion: fmt.Completion, first: RelayEvent | None, events) -> Response:
    texts, done = [], None
    try:
        for event in [first, *events] if first else events:
            if event.kind == "token":
                texts.append(event.data)
            elif event.kind == "error":
                raise OpenAIError(
                    fmt.relay_error_status(event.data),
                    event.data["message"],
                    code=event.data["type"],
                )
            elif event.kind == "done":
                done = event.data
    finally:
        events.close()
    if done is None:  # the client left; the provider is closed and nobody reads this
        raise OpenAIError(499, "client closed the request")
    if done["status"] != "complete":
        error = fmt.outcome_error(done)["error"]
        raise OpenAIError(503, error["message"], code=error["code"])
    return jsonify(completion.whole("".join(texts), done["usage"]))


def _body() -> dict[str, Any]:
    body = json_body(required=True)
    unknown = sorted(set(body) - ACCEPTED)
    if unknown:
        raise OpenAIError(400, f"unsupported parameter: {unknown[0]}", param=unknown[0])
    if body.get("n", 1) != 1:
        raise OpenAIError(400, "only n=1 is supported", param="n")
    if not isinstance(body.get("stream", False), bool):
        raise OpenAIError(400, "stream must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not (
        isinstance(options, dict)
        and set(options) <= {"include_usage"}
        and isinstance(options.get("include_usage", False), bool)
    ):
        raise OpenAIError(
            400, 'stream_options must be {"include_usage": boolean}', param="stream_options"
        )
    return body


def _check_model(name: Any) -> None:
    expected = get_stopwire().provider.model
    if not isinstance(name, str) or not name:
        raise OpenAIError(400, "model is required", param="model")
    if name != expected:
        raise OpenAIError(
            404,
            f"the model {name!r} does not exist; this server serves {expected!r}",
            param="model",
            code="model_not_found",
        )


def _messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise OpenAIError(400, "messages must be a non-empty array", param="messages")
    return [_message(i, item) for i, item in enumerate(raw)]


def _message(index: int, item: Any) -> Message:
    param = f"messages[{index}]"
    role = item.get("role") if isinstance(item, dict) else None
    if not isinstance(role, str) or role not in ROLES:
        raise OpenAIError(400, f"{param}.role must be one of {', '.join(ROLES)}", param=param)
    content = item.get("content")
    if isinstance(content, list):  # content parts: only text can be relayed
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise OpenAIError(400, f"{param}: only text content parts are supported", param=param)
        content = "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str):
        raise OpenAIError(400, f"{param}.content must be a string", param=param)
    return Message(ROLES[item["role"]], content)


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options = {}
    for name, check in CHECKS.items():
        if body.get(name) is None:
            continue
        if not check(body[name]):
            raise OpenAIError(400, f"invalid value for {name}: {body[name]!r}", param=name)
        options[name] = (
            [body[name]] if name == "stop" and isinstance(body[name], str) else body[name]
        )
    return options


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "stopwire"}


@openai.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
@openai.route(f"/<{ANY_PATH}:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def not_found(path: str) -> Response:
    """Anything else under /v1: an OpenAI-shaped 404."""
    raise OpenAIError(404, f"no endpoint {request.method} {request.path}")
