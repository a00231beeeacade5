"""Shared by the route tests: who the client is, saved rows to aim at, error shapes."""

from collections.abc import Callable
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from flask_stopwire import get_stopwire
from flask_stopwire.identity import SESSION_KEY
from flask_stopwire.store.sqlite import new_id

# The `make_app` fixture: `create_app` with the test settings and these extra ones.
MakeApp = Callable[..., Flask]

MODEL = "test-model"
OTHER = "browser:someone-else"  # a user whose rows the test client must never reach
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "estimated": True}


def client_as(app: Flask, user: str) -> FlaskClient:
    """A test client of `app` presenting `user` in its identity cookie."""
    client = app.test_client()
    with client.session_transaction() as session:
        session[SESSION_KEY] = user
    return client


def saved_turn(
    app: Flask,
    user: str,
    *,
    status: str = "complete",
    content: str = "An answer.",
    reason: str | None = None,
    conversation_id: str | None = None,
) -> dict[str, str]:
    """A question and its answer saved straight through the store, the answer in `status`
    (a `streaming` one is left as if a worker were still writing it); returns the ids."""
    store = get_stopwire(app).store
    generation_id = new_id("gen")
    live = {"generation_id": generation_id, "owner": "worker_elsewhere", "model": MODEL}
    turn = store.begin_turn(user, conversation_id, "A question", live)
    if status != "streaming":
        receipt = None
        if status == "stopped":
            receipt = {"signal": reason, "stop_to_close_ms": 0.5, "tokens_after_stop": 0}
        fields = {"content": content, "status": status, "reason": reason, "usage": USAGE}
        store.finish_answer(turn["message_id"], {**fields, "receipt": receipt})
    return {
        "conversation_id": turn["conversation_id"],
        "question_id": turn["user_message_id"],
        "message_id": turn["message_id"],
        "generation_id": generation_id,
    }


def api_error(response: TestResponse, status: int, error_type: str) -> str:
    """Assert Stopwire's JSON error `{"error": {"type", "message"}}`; return the message."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["type"] == error_type, error
    assert isinstance(error["message"], str) and error["message"]
    return error["message"]


def openai_error(
    response: TestResponse,
    status: int,
    param: str | None = None,
    code: str | None = None,
    error_type: str = "invalid_request_error",
) -> dict[str, Any]:
    """Assert OpenAI's error shape with exactly this param and code; return the error."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert (error["type"], error["param"], error["code"]) == (error_type, param, code), error
    assert error["message"]
    return error
