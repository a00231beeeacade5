"""The JSON API: start a streamed answer, stop one. Errors are always JSON here."""

from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from flask_stopwire import history
from flask_stopwire.formats import sse
from flask_stopwire.providers.base import Message
from flask_stopwire.relay.generation import Generation, new_generation_id
from flask_stopwire.state import get_stopwire
from flask_stopwire.store.sqlite import Conflict
from flask_stopwire.web.errors import ApiError, register_json_errors

api = Blueprint("stopwire_api", __name__)
register_json_errors(api)

ROLES = ("system", "user", "assistant")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@api.post("/chat")
def chat() -> Response:
    """Stream an answer as SSE.

    `{"content", "conversation_id"?}` saves both turns in a conversation (a new one
    without an id); `{"messages": [...]}` is for callers that keep their own history
    and saves nothing.
    """
    body = json_body(required=True)
    stopwire = get_stopwire()
    messages = _messages(body)
    if "messages" in body:
        if body.get("conversation_id") is not None:
            raise ApiError(400, 'send "conversation_id" with "content", not with "messages"')
        return sse_response(stopwire.new_generation(messages))
    if not isinstance(body.get("conversation_id", ""), str | None):
        raise ApiError(400, '"conversation_id" must be a string')
    generation_id = new_generation_id()
    try:
        turn = stopwire.store.begin_turn(
            body.get("conversation_id"), messages[0].content, stopwire.live_fields(generation_id)
        )
    except KeyError:
        raise ApiError(404, f"no conversation {body['conversation_id']!r}") from None
    except Conflict as exc:
        raise ApiError(409, str(exc)) from None
    saved = stopwire.store.get_conversation(turn["conversation_id"])["messages"]
    generation = stopwire.new_generation(history.provider_messages(saved), generation_id)
    return sse_response(generation, turn["conversation_id"], turn["message_id"])


@api.post("/generations/<generation_id>/stop")
def stop(generation_id: str) -> dict[str, Any]:
    """Stop a generation on whichever worker holds it; its final summary is the answer.

    A stop that arrives after the client's disconnect already stopped it (the page
    aborts its fetch and asks to stop at the same moment) is still recorded as the
    user's, with the text cut to `seen_chars`.
    """
    body = json_body(required=False)
    seen_chars = body.get("seen_chars")
    if seen_chars is not None and (type(seen_chars) is not int or seen_chars < 0):
        raise ApiError(400, "seen_chars must be a non-negative integer")
    stopwire = get_stopwire()
    summary = stopwire.stop(generation_id, seen_chars)
    if summary is None or (summary["status"], summary["reason"]) == (
        "stopped",
        "client_disconnect",
    ):
        message = stopwire.store.amend_stop(generation_id, seen_chars)
        if message is not None:
            summary = message_summary(message)
    if summary is None:
        raise ApiError(404, f"no generation {generation_id!r}")
    return summary


@api.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
@api.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def not_found(path: str) -> Response:
    """Anything else under the API prefix: a JSON 404 (or 405), never an HTML page."""
    adapter = current_app.url_map.bind_to_environ(request.environ)
    allowed = [m for m in ("GET", "POST", "DELETE") if _routes_elsewhere(adapter, m)]
    if allowed:
        raise MethodNotAllowed(valid_methods=allowed)
    raise NotFound(f"no API endpoint {request.method} {request.path}")


def sse_response(
    generation: Generation, conversation_id: str = "", message_id: str = "", prefix: str = ""
) -> Response:
    """Stream a generation as SSE, saving it into `message_id` when there is one."""
    generation.meta.update(conversation_id=conversation_id or None, message_id=message_id or None)
    # gunicorn's gevent worker exposes the client socket; its sync workers another key.
    client_sock = request.environ.get("gunicorn.sock") or request.environ.get("gunicorn.socket")
    stopwire = get_stopwire()
    frames = sse.encode(stopwire.run(generation, client_sock, message_id, prefix))
    return Response(frames, mimetype="text/event-stream", headers=SSE_HEADERS)


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


def json_body(required: bool) -> dict[str, Any]:
    """The request's JSON object; an empty optional body reads as {}."""
    # Per request, so a host app's own MAX_CONTENT_LENGTH stays its own.
    request.max_content_length = get_stopwire().settings.max_body_bytes
    if not required and not request.content_length and not request.data:
        return {}
    if not request.is_json:
        raise ApiError(415, "send JSON with Content-Type: application/json")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


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
        if not isinstance(content, str) or not content.strip():
            raise ApiError(400, '"content" must be a non-empty string')
        return [Message("user", content)]
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, '"messages" must be a non-empty list')
    parsed = [_message(i, m) for i, m in enumerate(messages)]
    if parsed[-1].role != "user":
        raise ApiError(400, "the last message must be the user's")
    return parsed


def _message(index: int, item: Any) -> Message:
    if not isinstance(item, dict):
        raise ApiError(400, f"messages[{index}] must be an object")
    role, content = item.get("role"), item.get("content")
    if role not in ROLES:
        raise ApiError(400, f"messages[{index}].role must be one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise ApiError(400, f"messages[{index}].content must be a string")
    return Message(role, content)
