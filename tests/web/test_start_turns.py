"""Every way to start an answer waits for its turn in the worker's loop (relay/turns.py)
before any of its work, its body's parsing and checks included, and only once."""

from types import ModuleType

import gevent
import pytest
from flask.testing import FlaskClient
from web_support import MODEL

from flask_stopwire.relay import turns
from flask_stopwire.web import api, conversations, generations, openai

STARTS = [
    ("/api/chat", api),
    ("/api/generations", generations),
    ("/api/conversations/conv_x/messages/msg_y/regenerate", conversations),
    ("/v1/chat/completions", openai),
]


@pytest.mark.parametrize(("path", "module"), STARTS)
def test_a_new_answer_takes_its_turn_before_its_body_is_read(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, path: str, module: ModuleType
) -> None:
    """A burst of new chats' requests would otherwise parse and check their bodies ahead of
    the tokens of the answers already streaming."""
    order: list[str] = []
    read = module.json_body

    def json_body(required: bool) -> dict:
        order.append("body")
        return read(required)

    monkeypatch.setattr(module, "wait_turn", lambda: order.append("turn"))
    monkeypatch.setattr(module, "json_body", json_body)
    response = client.post(path, data=b"{not json", content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert order == ["turn", "body"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"content": "hi"}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ],
)
def test_a_new_answer_takes_one_turn_in_its_request(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, path: str, body: dict
) -> None:
    """One turn for the request: the slot, the save and the generation do not queue again
    (the pump takes its own, in its own greenlet, before it asks the provider)."""
    waited: list[object] = []
    wait = turns.Lane.wait

    def counted(lane: turns.Lane) -> None:
        waited.append(gevent.getcurrent())
        wait(lane)

    monkeypatch.setattr(turns.Lane, "wait", counted)
    response = client.post(path, json=body)
    response.get_data()  # to its end: the provider refuses, the answer fails
    # Started, then failed at the provider: a stream's error event, or /v1's 502 whole.
    assert response.status_code == (200 if path == "/api/chat" else 502)
    assert waited.count(gevent.getcurrent()) == 1
    assert len(waited) == 2  # and the pump's
