"""/v1: requests refused in OpenAI's error shape, with the status and `param` an SDK expects."""

import json

import pytest
from flask import Flask
from flask.testing import FlaskClient
from web_support import MODEL, MakeApp, client_as, openai_error
from werkzeug.test import TestResponse

JSON = "application/json"
VALID = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def completion(
    client: FlaskClient, headers: dict[str, str] | None = None, **changes: object
) -> TestResponse:
    """POST /v1/chat/completions with VALID changed by `changes` (None removes a key)."""
    body = {**VALID, **changes}
    body = {key: value for key, value in body.items() if value is not None}
    return client.post(
        "/v1/chat/completions", data=json.dumps(body), content_type=JSON, headers=headers
    )


def test_models_lists_the_one_configured_model(client: FlaskClient) -> None:
    listed = client.get("/v1/models").get_json()
    assert listed == {
        "object": "list",
        "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "stopwire"}],
    }
    assert client.get(f"/v1/models/{MODEL}").get_json()["id"] == MODEL


def test_any_other_model_is_404_model_not_found(client: FlaskClient) -> None:
    openai_error(client.get("/v1/models/gpt-5"), 404, "model", "model_not_found")
    openai_error(completion(client, model="gpt-5"), 404, "model", "model_not_found")


@pytest.mark.parametrize("model", [None, "", 3])
def test_a_missing_model_is_400(client: FlaskClient, model: object) -> None:
    openai_error(completion(client, model=model), 400, "model")  # None: no model at all


@pytest.mark.parametrize("param", ["frequency_penalty", "tools", "logprobs", "response_format"])
def test_an_unknown_parameter_is_400_naming_it(client: FlaskClient, param: str) -> None:
    error = openai_error(completion(client, **{param: 1}), 400, param)
    assert param in error["message"]


def test_of_several_unknown_parameters_the_first_by_name_is_named(client: FlaskClient) -> None:
    openai_error(completion(client, tools=[], audio={}), 400, "audio")


@pytest.mark.parametrize("n", [0, 2, "1"])
def test_n_other_than_1_is_400(client: FlaskClient, n: object) -> None:
    openai_error(completion(client, n=n), 400, "n")


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("stream", "yes"),
        ("stream_options", {"include_usage": "yes"}),
        ("stream_options", {"other": True}),
        ("temperature", 2.5),
        ("temperature", "hot"),
        ("temperature", True),
        ("top_p", 1.5),
        ("max_tokens", 0),
        ("max_tokens", 1.5),
        ("max_completion_tokens", -1),
        ("seed", "42"),
        ("user", 7),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", [1]),
        ("on_stop", "drop"),
    ],
)
def test_a_bad_option_is_400_naming_it(client: FlaskClient, param: str, value: object) -> None:
    openai_error(completion(client, **{param: value}), 400, param)


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ("hi", "messages"),
        ([], "messages"),
        (["hi"], "messages[0]"),
        ([{"content": "hi"}], "messages[0]"),
        ([{"role": "tool", "content": "hi"}], "messages[0]"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": 5}], "messages[1]"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages[0]"),
        ([{"role": "user"}], "messages[0]"),
    ],
)
def test_bad_messages_are_400_naming_the_message(
    client: FlaskClient, messages: object, param: str
) -> None:
    openai_error(completion(client, messages=messages), 400, param)


@pytest.mark.parametrize("body", [b"{nope", b"[]", b"null"])
def test_a_body_that_is_not_a_json_object_is_400(client: FlaskClient, body: bytes) -> None:
    openai_error(client.post("/v1/chat/completions", data=body, content_type=JSON), 400)


def test_a_body_that_is_not_json_is_415(client: FlaskClient) -> None:
    response = client.post("/v1/chat/completions", data="hi", content_type="text/plain")
    openai_error(response, 415)


def test_a_body_over_the_limit_is_413(make_app: MakeApp) -> None:
    client = make_app(STOPWIRE_MAX_BODY_BYTES=100).test_client()
    long = [{"role": "user", "content": "a" * 100}]
    openai_error(completion(client, messages=long), 413)


@pytest.mark.parametrize("stream", [False, True])
def test_an_unreachable_provider_is_a_502_before_any_byte(
    client: FlaskClient, stream: bool
) -> None:
    openai_error(
        completion(client, stream=stream),
        502,
        code="provider_unreachable",
        error_type="server_error",
    )


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
@pytest.mark.parametrize("path", ["/v1/", "/v1/completions", "/v1/chat/completions/x"])
def test_unknown_v1_paths_are_openai_shaped_404(
    client: FlaskClient, method: str, path: str
) -> None:
    openai_error(client.open(path, method=method), 404)


# -- client keys --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_app(make_app: MakeApp) -> Flask:
    """An app that requires one of two client keys on /v1."""
    return make_app(STOPWIRE_CLIENT_KEYS="key-one, team:key-two")


@pytest.fixture
def keyed(keyed_app: Flask) -> FlaskClient:
    """A client of `keyed_app` with no identity of its own."""
    return keyed_app.test_client()


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", "Basic key-one", "Bearer key-one2", "Bearer team:key-two"],
)
def test_client_keys_refuse_anything_else_with_401(
    keyed: FlaskClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for response in (keyed.get("/v1/models", headers=headers), completion(keyed, headers)):
        openai_error(response, 401, code="invalid_api_key")


def test_client_keys_refuse_a_browser_identity_on_v1(keyed_app: Flask, user: str) -> None:
    browser = client_as(keyed_app, user)  # a cookie the page issued: not a key
    openai_error(browser.get("/v1/models"), 401, code="invalid_api_key")
    openai_error(completion(browser), 401, code="invalid_api_key")
    assert browser.get("/api/conversations").status_code == 200  # /api takes it


@pytest.mark.parametrize("key", ["key-one", "key-two"])
def test_a_valid_client_key_is_let_through(keyed: FlaskClient, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    assert keyed.get("/v1/models", headers=headers).status_code == 200
    openai_error(completion(keyed, headers, n=2), 400, "n")  # past the key, to validation
