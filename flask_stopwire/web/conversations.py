"""Saved conversations: list, read, delete; regenerate or continue an answer."""

import base64
import binascii
from typing import Any

from flask import Blueprint, Response, request

from flask_stopwire import history
from flask_stopwire.relay.turns import wait_turn
from flask_stopwire.state import get_stopwire
from flask_stopwire.store.sqlite import Conflict
from flask_stopwire.web.api import sse_response
from flask_stopwire.web.errors import ApiError, register_json_errors
from flask_stopwire.web.inputs import json_body

conversations = Blueprint("stopwire_conversations", __name__)
register_json_errors(conversations)

MAX_PAGE = 100


@conversations.before_request
def _identify() -> None:
    get_stopwire().identity()  # 401/403 before anything else


def _user_id() -> str:
    return get_stopwire().identity().user_id


@conversations.get("/conversations")
def list_conversations() -> dict[str, Any]:
    """Newest first; `limit` (1-100, default 20) and the `before` cursor from `next`."""
    limit = _limit(request.args.get("limit", "20"))
    before = _cursor(request.args["before"]) if "before" in request.args else None
    page = get_stopwire().store.list_conversations(_user_id(), limit, before)
    last = page[-1] if len(page) == limit else None
    return {"conversations": page, "next": _encode_cursor(last) if last else None}


@conversations.get("/conversations/<conversation_id>")
def get_conversation(conversation_id: str) -> dict[str, Any]:
    """The conversation and every message with its status (and earlier versions)."""
    return _conversation(conversation_id)


@conversations.delete("/conversations/<conversation_id>")
def delete_conversation(conversation_id: str) -> tuple[str, int]:
    """Delete it, first stopping an answer that is still streaming."""
    stopwire = get_stopwire()
    for message in _conversation(conversation_id)["messages"]:
        if message["status"] == "streaming":
            stopwire.stop(_user_id(), message["generation_id"], None)
    if not stopwire.store.delete_conversation(_user_id(), conversation_id):
        raise ApiError(404, f"no conversation {conversation_id!r}")
    return "", 204


@conversations.post("/conversations/<conversation_id>/messages/<message_id>/regenerate")
def regenerate(conversation_id: str, message_id: str) -> Response:
    """Stream a fresh answer in place of this one; the old one becomes a version."""
    return _restart(conversation_id, message_id, "regenerate")


@conversations.post("/conversations/<conversation_id>/messages/<message_id>/continue")
def continue_answer(conversation_id: str, message_id: str) -> Response:
    """Ask the provider to carry on from the saved partial answer; appends to it."""
    return _restart(conversation_id, message_id, "continue")


def _restart(conversation_id: str, message_id: str, action: str) -> Response:
    wait_turn()  # a new answer's turn in the loop comes before any of its work (relay/turns)
    json_body(required=False)
    stopwire = get_stopwire()
    saved = _conversation(conversation_id)["messages"]
    try:
        index = history.check_target(saved, message_id, action)
    except history.WrongTarget as exc:
        raise ApiError(exc.status, str(exc)) from None
    if action == "continue":
        messages, prefix = history.continue_messages(saved, index, stopwire.provider.prefill)
    else:
        messages, prefix = history.provider_messages(saved[:index]), ""
    with stopwire.admitted() as generation_id:
        live = {**stopwire.live_fields(generation_id), "base_chars": len(prefix)}
        try:
            stopwire.store.restart_answer(
                _user_id(), conversation_id, message_id, action == "continue", live
            )
        except Conflict as exc:
            raise ApiError(409, str(exc)) from None
        except LookupError:
            raise ApiError(404, f"no message {message_id!r} in this conversation") from None
        generation = stopwire.new_generation(messages, _user_id(), generation_id)
        generation.meta.update(conversation_id=conversation_id, message_id=message_id)
        return sse_response(generation, prefix)


def _conversation(conversation_id: str) -> dict[str, Any]:
    found = get_stopwire().store.get_conversation(_user_id(), conversation_id)
    if found is None:
        raise ApiError(404, f"no conversation {conversation_id!r}")
    return found


def _limit(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError(400, f"limit must be a whole number from 1 to {MAX_PAGE}")
    return int(raw)


def _encode_cursor(conversation: dict[str, Any]) -> str:
    raw = f"{conversation['updated_at']}|{conversation['id']}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def _cursor(raw: str) -> tuple[str, str]:
    try:
        updated_at, _, conversation_id = base64.urlsafe_b64decode(raw).decode().partition("|")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(400, "before must be the `next` value of a previous page") from None
    if not conversation_id:
        raise ApiError(400, "before must be the `next` value of a previous page")
    return updated_at, conversation_id
