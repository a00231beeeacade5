"""The OpenAPI document stays in step with the routes: every route Stopwire mounts is
documented, every documented path is a route, and the document is valid OpenAPI 3.1."""

import re
from typing import Any

import pytest
from flask import Flask
from openapi_spec_validator import validate  # by OpenAPI 3.1's own meta-schema
from web_support import MODEL

from flask_stopwire import Stopwire, get_stopwire
from flask_stopwire.web.api import api
from flask_stopwire.web.conversations import conversations
from flask_stopwire.web.debug import debug
from flask_stopwire.web.generations import generations
from flask_stopwire.web.openai import openai

BLUEPRINTS = {blueprint.name for blueprint in (api, generations, conversations, openai, debug)}
APP_ENDPOINTS = {"stopwire_health", "stopwire_metrics", "stopwire_openapi"}
# The JSON 404/405 for any other path under a prefix: no path of its own to document.
FALLBACKS = {"stopwire_api.not_found", "stopwire_openai.not_found"}
METHODS = {"get", "post", "put", "patch", "delete"}


def routes(app: Flask) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every rule Stopwire mounted on `app`, but the fallbacks."""
    found = set()
    for rule in app.url_map.iter_rules():
        ours = rule.endpoint.partition(".")[0] in BLUEPRINTS or rule.endpoint in APP_ENDPOINTS
        if not ours or rule.endpoint in FALLBACKS:
            continue
        path = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)
        found |= {(path, method.lower()) for method in rule.methods if method.lower() in METHODS}
    return found


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    """(path, method) of every operation in `document`."""
    return {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def check(document: dict[str, Any]) -> None:
    """Valid OpenAPI 3.1, and every security requirement names a scheme it defines."""
    validate(document)
    assert document["openapi"] == "3.1.0"
    schemes = set(document["components"]["securitySchemes"])
    requirements = [*document["security"]] + [
        requirement
        for item in document["paths"].values()
        for method, operation in item.items()
        if method in METHODS
        for requirement in operation.get("security", [])
    ]
    assert {name for requirement in requirements for name in requirement} <= schemes


def served(app: Flask, prefix: str = "/api", **headers: str) -> dict[str, Any]:
    """The document as `app` serves it."""
    response = app.test_client().get(f"{prefix}/openapi.json", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return response.get_json()


def host_app(tmp_path, extension: Stopwire, **config: Any) -> Flask:
    """Someone else's app mounting Stopwire as `extension` says."""
    app = Flask("host", instance_path=str(tmp_path / "instance"))
    app.config.update(
        SECRET_KEY="test",
        STOPWIRE_PROVIDER="openai",
        STOPWIRE_PROVIDER_URL="http://127.0.0.1:9/v1",
        STOPWIRE_MODEL=MODEL,
        STOPWIRE_DATABASE=str(tmp_path / "stopwire.sqlite3"),
        STOPWIRE_RUN_DIR=str(tmp_path / "run"),
        **config,
    )
    extension.init_app(app)
    return app


@pytest.mark.parametrize(
    "config",
    [{}, {"STOPWIRE_DEBUG_STATS": True}, {"STOPWIRE_CLIENT_KEYS": "team:key1"}],
    ids=["defaults", "debug-stats", "client-keys"],
)
def test_the_standalone_service_documents_exactly_its_routes(make_app, config: dict) -> None:
    app = make_app(**config)
    document = served(app, Authorization="Bearer key1")
    check(document)
    assert documented(document) == routes(app)
    assert {"/api/chat", "/v1/chat/completions", "/healthz", "/metrics"} <= set(document["paths"])
    assert ("/api/debug/stats" in document["paths"]) == ("STOPWIRE_DEBUG_STATS" in config)


def test_a_host_mount_is_documented_with_its_own_prefixes(tmp_path) -> None:
    app = host_app(tmp_path, Stopwire(url_prefix="/llm/", openai_prefix="/openai"))
    try:
        document = served(app, "/llm")
        check(document)
        assert documented(document) == routes(app)
        assert all(path.startswith(("/llm/", "/openai/")) for path in document["paths"])
        assert "/openai/chat/completions" in document["paths"]
    finally:
        get_stopwire(app).close()


@pytest.mark.parametrize("keys", ["", "team:key1"], ids=["no-keys", "client-keys"])
def test_a_host_with_its_own_identities_has_no_cookie_scheme(tmp_path, keys: str) -> None:
    extension = Stopwire(openai_prefix="/v1", identity=lambda: "someone")
    app = host_app(tmp_path, extension, STOPWIRE_CLIENT_KEYS=keys)
    try:
        document = served(app)
        check(document)
        assert "browserCookie" not in document["components"]["securitySchemes"]
        chat = document["paths"]["/api/chat"]["post"]["security"]
        assert chat == ([{"clientKey": []}] if keys else []) + [{}]
    finally:
        get_stopwire(app).close()


def test_without_an_openai_prefix_there_is_no_v1(tmp_path) -> None:
    app = host_app(tmp_path, Stopwire())
    try:
        document = served(app)
        check(document)
        assert documented(document) == routes(app)
        assert not [path for path in document["paths"] if "chat/completions" in path]
        assert not [path for path in document["paths"] if "models" in path]
    finally:
        get_stopwire(app).close()


def test_a_route_missing_from_the_document_is_noticed(make_app) -> None:
    """The comparison itself can fail: a route added without documenting it."""
    app = make_app()
    app.add_url_rule("/api/secret", "stopwire_api.secret", lambda: "", methods=["POST"])
    assert routes(app) - documented(served(app)) == {("/api/secret", "post")}


def test_the_document_is_public_and_describes_the_identities(make_app) -> None:
    """No key is needed to read it; the security schemes say what each path needs."""
    app = make_app(STOPWIRE_CLIENT_KEYS="team:key1")
    document = served(app)  # no Authorization header
    schemes = document["components"]["securitySchemes"]
    assert schemes["clientKey"] == {**schemes["clientKey"], "type": "http", "scheme": "bearer"}
    assert schemes["browserCookie"]["in"] == "cookie"
    assert schemes["browserCookie"]["name"] == app.config["SESSION_COOKIE_NAME"]
    chat = document["paths"]["/api/chat"]["post"]
    assert chat["security"] == [{"clientKey": []}, {"browserCookie": []}]
    assert document["paths"]["/v1/chat/completions"]["post"]["security"] == [{"clientKey": []}]
    assert document["paths"]["/healthz"]["get"]["security"] == []


def test_every_operation_documents_its_errors_and_streams(make_app) -> None:
    """Each status the views answer has its schema; streams are text/event-stream."""
    document = served(make_app())
    paths = document["paths"]
    chat = paths["/api/chat"]["post"]["responses"]
    assert set(chat) == {"200", "400", "401", "403", "404", "409", "413", "415", "429", "503"}
    assert list(chat["200"]["content"]) == ["text/event-stream"]
    assert chat["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    completions = paths["/v1/chat/completions"]["post"]["responses"]
    assert set(completions["200"]["content"]) == {"application/json", "text/event-stream"}
    assert completions["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OpenAIError"
    }
    assert "Retry-After" in chat["429"]["headers"]
    stop = paths["/api/generations/{generation_id}/stop"]["post"]["responses"]
    assert "429" not in stop  # a stop is never refused by the rate limit
    model = paths["/v1/models/{model}"]["get"]["parameters"][0]
    assert model["example"] == MODEL
