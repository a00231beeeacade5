"""GET/DELETE /api/conversations(/<id>) and regenerate/continue aimed at wrong targets.

The states are set up straight through the app's store; a target that is valid would
start a generation, so every request here is one the route must refuse.
"""

import base64

import pytest
from flask import Flask
from flask.testing import FlaskClient
from web_support import OTHER, api_error, client_as, saved_turn
from werkzeug.test import TestResponse


def cursor(raw: bytes) -> str:
    """A `before` value made of these bytes."""
    return base64.urlsafe_b64encode(raw).decode()


# -- listing ------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1.5", "", "²", "1e2"])
def test_a_bad_limit_is_400(client: FlaskClient, limit: str) -> None:
    response = client.get("/api/conversations", query_string={"limit": limit})
    assert "limit" in api_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "before", ["!!!", "%%%", cursor(b"no separator"), cursor(b"\xff\xfe|conv_1"), cursor(b"x|")]
)
def test_a_bad_cursor_is_400(client: FlaskClient, before: str) -> None:
    response = client.get("/api/conversations", query_string={"before": before})
    assert "before" in api_error(response, 400, "invalid_request")


def test_pages_follow_next_and_show_only_ones_own(
    app: Flask, client: FlaskClient, user: str
) -> None:
    mine = [saved_turn(app, user)["conversation_id"] for _ in range(3)]
    saved_turn(app, OTHER)
    first = client.get("/api/conversations?limit=2").get_json()
    second = client.get("/api/conversations", query_string={"limit": 2, "before": first["next"]})
    assert second.status_code == 200 and second.get_json()["next"] is None
    listed = first["conversations"] + second.get_json()["conversations"]
    assert len(first["conversations"]) == 2 and sorted(c["id"] for c in listed) == sorted(mine)
    keys = [(c["updated_at"], c["id"]) for c in listed]
    assert keys == sorted(keys, reverse=True)  # newest first, ties by id


# -- one conversation ---------------------------------------------------------------------


def test_an_unknown_or_someone_elses_conversation_is_404(app: Flask, client: FlaskClient) -> None:
    theirs = saved_turn(app, OTHER)["conversation_id"]
    for conversation_id in ("conv_nope", theirs):
        response = client.get(f"/api/conversations/{conversation_id}")
        assert conversation_id in api_error(response, 404, "not_found")
        response = client.delete(f"/api/conversations/{conversation_id}")
        api_error(response, 404, "not_found")
    assert (
        client_as(app, OTHER).get(f"/api/conversations/{theirs}").status_code == 200
    )  # not deleted


def test_delete_is_204_once_then_404(app: Flask, client: FlaskClient, user: str) -> None:
    conversation_id = saved_turn(app, user)["conversation_id"]
    response = client.delete(f"/api/conversations/{conversation_id}")
    assert (response.status_code, response.data) == (204, b"")
    api_error(client.get(f"/api/conversations/{conversation_id}"), 404, "not_found")
    api_error(client.delete(f"/api/conversations/{conversation_id}"), 404, "not_found")


# -- regenerate and continue --------------------------------------------------------------

ACTIONS = ["regenerate", "continue"]


def restart(
    client: FlaskClient, turn: dict[str, str], action: str, message: str = ""
) -> TestResponse:
    """POST regenerate or continue at `message` (default: the turn's answer)."""
    message_id = message or turn["message_id"]
    url = f"/api/conversations/{turn['conversation_id']}/messages/{message_id}/{action}"
    return client.post(url)


@pytest.mark.parametrize("action", ACTIONS)
def test_restarting_in_an_unknown_or_someone_elses_conversation_is_404(
    app: Flask, client: FlaskClient, action: str
) -> None:
    theirs = saved_turn(app, OTHER, status="stopped", reason="user_stop")
    api_error(restart(client, theirs, action), 404, "not_found")
    unknown = {**theirs, "conversation_id": "conv_nope"}
    api_error(restart(client, unknown, action), 404, "not_found")


@pytest.mark.parametrize("action", ACTIONS)
def test_restarting_an_unknown_message_is_404(
    app: Flask, client: FlaskClient, user: str, action: str
) -> None:
    turn = saved_turn(app, user, status="stopped", reason="user_stop")
    response = restart(client, turn, action, message="msg_nope")
    assert "msg_nope" in api_error(response, 404, "not_found")


@pytest.mark.parametrize("action", ACTIONS)
def test_restarting_the_users_own_message_is_422(
    app: Flask, client: FlaskClient, user: str, action: str
) -> None:
    turn = saved_turn(app, user, status="stopped", reason="user_stop")
    response = restart(client, turn, action, message=turn["question_id"])
    assert "assistant" in api_error(response, 422, "unprocessable")


@pytest.mark.parametrize("action", ACTIONS)
def test_restarting_a_streaming_answer_is_409(
    app: Flask, client: FlaskClient, user: str, action: str
) -> None:
    turn = saved_turn(app, user, status="streaming")
    assert "still streaming" in api_error(restart(client, turn, action), 409, "conflict")


@pytest.mark.parametrize("action", ACTIONS)
def test_restarting_an_earlier_answer_is_409(
    app: Flask, client: FlaskClient, user: str, action: str
) -> None:
    first = saved_turn(app, user, status="stopped", reason="user_stop")
    saved_turn(app, user, conversation_id=first["conversation_id"])
    assert "latest" in api_error(restart(client, first, action), 409, "conflict")


def test_continuing_a_complete_answer_is_422(app: Flask, client: FlaskClient, user: str) -> None:
    turn = saved_turn(app, user, status="complete")
    assert "stopped" in api_error(restart(client, turn, "continue"), 422, "unprocessable")


def test_continuing_an_answer_without_text_is_422(
    app: Flask, client: FlaskClient, user: str
) -> None:
    turn = saved_turn(app, user, status="stopped", reason="user_stop", content="")
    assert "no text" in api_error(restart(client, turn, "continue"), 422, "unprocessable")


@pytest.mark.parametrize("action", ACTIONS)
def test_restarting_with_a_non_json_body_is_415(
    app: Flask, client: FlaskClient, user: str, action: str
) -> None:
    turn = saved_turn(app, user, status="stopped", reason="user_stop")
    url = f"/api/conversations/{turn['conversation_id']}/messages/{turn['message_id']}/{action}"
    response = client.post(url, data="x=1", content_type="application/x-www-form-urlencoded")
    api_error(response, 415, "unsupported_media_type")
