"""The JSON API: start a streamed answer, stop one. Errors are always JSON here."""

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from flask_stopwire import history
from flask_stopwire.formats import sse
from flask_stopwire.providers.base import Message
from flask_stopwire.relay.bus import StopBusDown
from flask_stopwire.relay.generation import Generation, RelayEvent
from flask_stopwire.relay.turns import wait_turn
from flask_stopwire.state import get_stopwire
from flask_stopwire.store.sql import NO_USAGE
from flask_stopwire.store.sqlite import Conflict
from flask_stopwire.web.errors import ANY_PATH, ApiError, register_json_errors
from flask_stopwire.web.inputs import (
    discard_on_stop,
    json_body,
    resume_grace_s,
    seen_chars,
    text,
)

api = Blueprint("stopwire_api", __name__)
register_json_errors(api)

ROLES = ("system", "user", "assistant")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
BUS_DOWN = (
    "this answer may be streaming on another host, and Redis (the stop bus between "
    "hosts) cannot be reached right now; retry"
)


@api.before_request
def _identify() -> None:
    get_stopwire().identity()  # 401/403 before anything else


@api.post("/chat")
def chat() -> Response:
    """Stream an answer as SSE.

    `{"content", "conversation_id"?}` saves both turns in a conversation (a new one
    without an id); `{"messages": [...]}` is for callers that keep their own history
    and saves nothing. `resume_grace_s` and `on_stop` as in `ask()`.
    """
    wait_turn()  # a new answer's turn in the loop comes before any of its work (relay/turns)
    body = json_body(required=True)
    stopwire = get_stopwire()
    with stopwire.admitted() as generation_id:
        request_ = ask(body, generation_id)
        return sse_response(stopwire.generation_for(request_))


def ask(body: dict[str, Any], generation_id: str, wait_s: float | None = None) -> dict[str, Any]:
    """A request to stream an answer, as JSON that any worker can run: its provider
    messages, options, and the answer it writes (a conversation's turn is saved now).

    With `wait_s` the answer is saved `pending`, for whichever worker a viewer reaches
    within that time. `resume_grace_s`: how long the answer runs on with nobody
    viewing it (0: a disconnect is a stop); `on_stop`: "keep" or "discard" the text
    of a stopped answer.
    """
    stopwire = get_stopwire()
    user_id = stopwire.identity().user_id
    messages = _messages(body)
    request_ = {
        "generation_id": generation_id,
        "user_id": user_id,
        "grace_s": resume_grace_s(body, stopwire.settings.max_resume_grace_s),
        "discard": discard_on_stop(body),
        "conversation_id": None,
        "message_id": None,
    }
    if "messages" in body:
        if body.get("conversation_id") is not None:
            raise ApiError(400, 'send "conversation_id" with "content", not with "messages"')
        request_["messages"] = [[m.role, m.content] for m in messages]
        if wait_s is not None:
            stopwire.store.add_pending(generation_id, user_id, None, request_, wait_s)
        return request_
    conversation_id = body.get("conversation_id")
    if conversation_id is not None:
        text(conversation_id, '"conversation_id"')
    pending = None if wait_s is None else (request_, wait_s)
    try:
        turn = stopwire.store.begin_turn(
            user_id,
            conversation_id,
            messages[0].content,
            stopwire.live_fields(generation_id),
            pending,
        )
    except KeyError:
        raise ApiError(404, f"no conversation {conversation_id!r}") from None
    except Conflict as exc:
        raise ApiError(409, str(exc)) from None
    request_.update(conversation_id=turn["conversation_id"], message_id=turn["message_id"])
    if wait_s is None:  # else read when it runs
        provider_messages = history.provider_messages(turn["messages"])
        request_["messages"] = [[m.role, m.content] for m in provider_messages]
    return request_


@api.post("/generations/<generation_id>/stop")
def stop(generation_id: str) -> dict[str, Any]:
    """Stop one of this user's generations on whichever worker holds it; its final
    summary is the answer."""
    seen = seen_chars(json_body(required=False))
    return stop_summary(get_stopwire().identity().user_id, generation_id, seen)


def stop_summary(user_id: str, generation_id: str, seen: int | None) -> dict[str, Any]:
    """Stop `user_id`'s generation (on any worker or host, or before anyone viewed it)
    and return its final summary; ApiError 404 or 503 when that cannot be done.

    A stop that arrives after the client's disconnect already stopped it (the page
    aborts its fetch and asks to stop at the same moment) is still recorded as the
    user's, with the text cut to `seen`.
    """
    stopwire = get_stopwire()
    try:
        summary, bus_down = stopwire.stop(user_id, generation_id, seen), False
    except StopBusDown:
        summary, bus_down = None, True  # it may stream on another host: nobody can tell
    if summary is None:
        summary = _drop_unviewed(user_id, generation_id)
    if summary is None or (summary["status"], summary["reason"]) == (
        "stopped",
        "client_disconnect",
    ):
        message = stopwire.store.amend_stop(user_id, generation_id, seen)
        if message is not None:
            summary = message_summary(message)
    if bus_down and (summary is None or summary["status"] == "streaming"):
        raise ApiError(503, BUS_DOWN, 1)
    if summary is None:
        raise ApiError(404, f"no generation {generation_id!r}")
    if summary["status"] == "streaming":
        # Saved as streaming, yet no worker we can reach holds it: its worker did not
        # answer (or just died, and the sweep will mark it). Never a fake success.
        raise ApiError(503, "the worker streaming this answer did not answer; retry", 1)
    return summary


@api.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
@api.route(f"/<{ANY_PATH}:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def not_found(path: str) -> Response:
    """Anything else under the API prefix: a JSON 404 (or 405), never an HTML page."""
    adapter = current_app.url_map.bind_to_environ(request.environ)
    allowed = [m for m in ("GET", "POST", "DELETE") if _routes_elsewhere(adapter, m)]
    if allowed:
        raise MethodNotAllowed(valid_methods=allowed)
    raise NotFound(f"no API endpoint {request.method} {request.path}")


def sse_response(generation: Generation, prefix: str = "", retry_ms: int | None = None) -> Response:
    """Stream a generation to its first viewer as SSE, saving it into its answer, if any."""
    stopwire = get_stopwire()
    message_id = generation.meta.get("message_id") or ""
    events = stopwire.run(generation, client_socket(), message_id, prefix)
    return events_response(events, retry_ms)


def events_response(events: Iterator[RelayEvent], retry_ms: int | None = None) -> Response:
    """Relay events as an SSE response (`retry_ms`: for EventSource)."""
    frames = sse.encode(events, retry_ms)  # type: ignore[arg-type]
    return stream_response(frames, SSE_HEADERS)


def stream_response(frames: Iterator[bytes], headers: dict[str, str]) -> Response:
    """A streamed response whose frames the server writes as they come: passed through,
    not wrapped in werkzeug's two iterators, which cost a little on every frame. The server
    closes the frames itself; `call_on_close` callbacks do not run for such a response."""
    return Response(frames, mimetype="text/event-stream", headers=headers, direct_passthrough=True)


def client_socket() -> Any:
    """This request's client socket, where the server exposes it (gunicorn does)."""
    # gunicorn's gevent worker names it one way, its sync workers another.
    return request.environ.get("gunicorn.sock") or request.environ.get("gunicorn.socket")


def _drop_unviewed(user_id: str, generation_id: str) -> dict[str, Any] | None:
    """The summary of a stop of a generation asked for and not viewed yet, or None."""
    dropped = get_stopwire().store.drop_pending(user_id, generation_id)
    if dropped is None:
        return None
    if dropped:
        return message_summary(dropped)
    return {  # one that saves nothing
        "generation_id": generation_id,
        "conversation_id": None,
        "message_id": None,
        "status": "stopped",
        "reason": "user_stop",
        "usage": NO_USAGE,
    }


def message_summary(message: dict[str, Any]) -> dict[str, Any]:
    """A saved answer in the shape of a `done` event."""
    summary = {
        "generation_id": message["generation_id"],
        "conversation_id": message["conversation_id"],
        "message_id": message["id"],
        "status": message["status"],
        "reason": message["reason"],
        "usage": message["usage"],
    }
    if message["receipt"]:
        summary["receipt"] = message["receipt"]
    return summary


def _routes_elsewhere(adapter: Any, method: str) -> bool:
    try:
        endpoint, _ = adapter.match(method=method)
    except HTTPException:
        return False
    return endpoint != request.endpoint


def _messages(body: dict[str, Any]) -> list[Message]:
    content, messages = body.get("content"), body.get("messages")
    if (content is None) == (messages is None):
        raise ApiError(400, 'send either "content" (a string) or "messages" (a list)')
    if messages is None:
        return [Message("user", text(content, '"content"'))]
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, '"messages" must be a non-empty list')
    parsed = [_message(i, m) for i, m in enumerate(messages)]
    if parsed[-1].role != "user":
        raise ApiError(400, "the last message must be the user's")
    return parsed


def _message(index: int, item: Any) -> Message:
    if not isinstance(item, dict):
        raise ApiError(400, f"messages[{index}] must be an object")
    role = item.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise ApiError(400, f"messages[{index}].role must be one of {', '.join(ROLES)}")
    return Message(role, text(item.get("content"), f"messages[{index}].content", required=False))
