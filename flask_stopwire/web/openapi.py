"""`GET <url_prefix>/openapi.json`: the OpenAPI 3.1 document of the HTTP API as mounted.

Built per app from where the extension mounted each part and from its settings (the
model, client keys, the operator endpoints), so every path carries its real prefix and
only what is mounted is described. tests/web/test_openapi.py keeps it in step with the
url_map; tests/fuzz/test_api_fuzz.py fuzzes the live server against it.

Event streams follow OpenAPI 3.1's convention for `text/event-stream`: the schema
describes one event (`event`, `data`, `id`), and a JSON `data` field says so with
`contentMediaType` and `contentSchema`.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import current_app, request

from flask_stopwire.state import StopwireState, get_stopwire
from flask_stopwire.web.inputs import MAX_SEEN_CHARS

Schema = dict[str, Any]

STATUSES = ["streaming", "complete", "stopped", "error", "interrupted"]
REASONS = "user_stop, client_disconnect, shutdown, timeout, upstream_error, worker_lost, internal"
OPENAI_ROLES = ["system", "developer", "user", "assistant"]

# What every way to start an answer may add to its request.
_ANSWER_OPTIONS = {
    "resume_grace_s": {
        "type": "number",
        "minimum": 0,
        "description": "How long the answer runs on after its client's connection drops "
        "(at most STOPWIRE_MAX_RESUME_GRACE_S); 0, the default: a disconnect stops it",
    },
    "on_stop": {
        "enum": ["keep", "discard"],
        "description": "What a stopped answer keeps of its text; default keep",
    },
}

# Why starting an answer can fail.
_START_ERRORS = (400, 401, 403, 404, 409, 413, 415, 429, 503)

_DESCRIPTIONS = {
    200: "OK",
    204: "Done; no content",
    400: "Malformed JSON, wrong types or values, or a request the provider refused",
    401: "No identity, or a wrong client key",
    403: "A cross-site request with a browser identity",
    404: "Unknown (or another owner's) id, or unknown path",
    409: "The conversation has an answer streaming, or the target is not the latest answer",
    413: "The body is over STOPWIRE_MAX_BODY_BYTES",
    415: "Any content type but application/json",
    422: "The message cannot be regenerated or continued",
    429: "Over the request rate or the running-answers cap; see Retry-After",
    502: "The provider failed before the first token",
    503: (
        "The provider or the conversation store is unavailable, the answer did not complete, "
        "or it streams elsewhere; see Retry-After"
    ),
    504: "The provider timed out before the first token",
}


@dataclass(frozen=True)
class Mounts:
    """Where the extension mounted each part of the API (None: not mounted)."""

    url_prefix: str
    openai_prefix: str | None
    health_url: str | None
    metrics_url: str | None


def view(mounts: Mounts) -> Callable[[], Schema]:
    """The view serving the document of an app mounted as `mounts`."""

    def openapi_document() -> Schema:
        """The OpenAPI 3.1 document of this app's Stopwire API."""
        cookie = current_app.config.get("SESSION_COOKIE_NAME") or "session"
        return document(mounts, get_stopwire(), cookie, request.script_root)

    return openapi_document


def document(mounts: Mounts, stopwire: StopwireState, cookie: str, root: str = "") -> Schema:
    """The OpenAPI 3.1 document for `mounts` and `stopwire`'s settings."""
    settings = stopwire.settings
    api = mounts.url_prefix.rstrip("/")
    browser = stopwire.identity_hook is None
    keys: list[Schema] = [{"clientKey": []}] if settings.client_keys else []
    if not browser:
        ambient: list[Schema] = [{}]  # the host's own authentication, not described here
    elif settings.client_keys:
        ambient = [{"browserCookie": []}]  # issued by the chat page only
    else:
        ambient = [{"browserCookie": []}, {}]  # issued to whoever has none
    api_security = keys + ambient
    paths = {
        **_api_paths(api, api_security),
        f"{api}/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": _json({"type": "object"})},
            }
        },
    }
    if settings.debug_stats:
        paths[f"{api}/debug/stats"] = _debug_path(settings.metrics_token)
    if mounts.openai_prefix:
        v1_security = keys or api_security  # with client keys, /v1 takes keys only
        paths.update(_openai_paths(mounts.openai_prefix.rstrip("/"), stopwire, v1_security))
    if mounts.health_url:
        paths[mounts.health_url] = _health_path()
    if mounts.metrics_url:
        paths[mounts.metrics_url] = _metrics_path(settings.metrics_token)
    schemes: Schema = {
        "clientKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "A key from STOPWIRE_CLIENT_KEYS; its identity is `key:<name>`.",
        },
        "operatorToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "STOPWIRE_METRICS_TOKEN, for the operator endpoints.",
        },
    }
    if browser:
        schemes["browserCookie"] = {
            "type": "apiKey",
            "in": "cookie",
            "name": cookie,
            "description": (
                "The browser's anonymous identity: a signed, HttpOnly, SameSite=Lax cookie. "
                "Without client keys, a request without it is issued one; with client keys, "
                "only the chat page issues it. Requests that change something must come from "
                "the same origin (Sec-Fetch-Site, else Origin)."
            ),
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Stopwire",
            "version": "1",
            "description": (
                "A chat relay whose Stop button really stops the model. Every request has "
                "an owner, and another owner's ids answer exactly like unknown ones (404). "
                f"Bodies over {settings.max_body_bytes} bytes are refused (413)."
            ),
        },
        "servers": [{"url": root or "/"}],
        "security": api_security,
        "paths": paths,
        "components": {"schemas": _schemas(), "securitySchemes": schemes},
    }


# -- /api ----------------------------------------------------------------------------------


def _api_paths(api: str, security: list[Schema]) -> Schema:
    conversation_id = _path_param("conversation_id", "A conversation's id (`conv_...`)")
    message_id = _path_param("message_id", "An assistant message's id (`msg_...`)")
    generation_id = _path_param("generation_id", "A generation's id (`gen_...`)")
    restart = {
        "parameters": [conversation_id, message_id],
        "requestBody": _body({"type": "object"}, required=False),
        "responses": _api_errors(_stream(), 400, 401, 403, 404, 409, 413, 415, 422, 429),
        "security": security,
    }
    return {
        f"{api}/chat": {
            "post": {
                "operationId": "chat",
                "summary": "Stream an answer (and save the turn in a conversation)",
                "description": (
                    '`{"content", "conversation_id"?}` saves the question and the answer in a '
                    'conversation (a new one without an id); `{"messages": [...]}` is for '
                    "callers that keep their own history and saves nothing."
                ),
                "requestBody": _body(_ref("ChatRequest")),
                "responses": _api_errors(_stream(), *_START_ERRORS),
                "security": security,
            }
        },
        f"{api}/generations": {
            "post": {
                "operationId": "createGeneration",
                "summary": "Save a request to stream an answer; view it at events_url",
                "description": (
                    "The body of `/chat`. Nothing is asked of the provider until the first "
                    "`GET events_url` (on any worker); nobody within "
                    "STOPWIRE_ATTACH_TIMEOUT_S, the request is dropped and its answer saved "
                    "empty, `stopped`/`client_disconnect`."
                ),
                "requestBody": _body(_ref("ChatRequest")),
                "responses": {
                    "201": {
                        "description": "Created: view it at `events_url`",
                        "content": {"application/json": {"schema": _ref("Created")}},
                        "links": {
                            "viewGeneration": {
                                "operationId": "viewGeneration",
                                "parameters": {"generation_id": "$response.body#/generation_id"},
                            }
                        },
                    },
                    **{str(code): _error(code, "Error") for code in _START_ERRORS},
                },
                "security": security,
            }
        },
        f"{api}/generations/{{generation_id}}/events": {
            "get": {
                "operationId": "viewGeneration",
                "summary": "An answer's events, for EventSource and for any client resuming",
                "description": (
                    "From the start, or after the id of the last event the client has "
                    "(`Last-Event-ID`, or `after`): exactly what it lacks, then the live "
                    "tail. `Last-Event-ID: end` (it had `done`) gets 204."
                ),
                "parameters": [
                    generation_id,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "schema": {"type": "string", "pattern": "^([0-9]{1,15}|end)$"},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "string", "pattern": "^([0-9]{1,15}|end)$"},
                    },
                ],
                "responses": {
                    **_api_errors(_stream(), 400, 401, 404, 429, 503),
                    "204": {"description": _DESCRIPTIONS[204]},
                },
                "security": security,
            }
        },
        f"{api}/generations/{{generation_id}}/stop": {
            "post": {
                "operationId": "stopGeneration",
                "summary": "Stop a generation on whichever worker holds it",
                "description": (
                    "Idempotent; the answer is the generation's final summary (the `done` "
                    "event). The first outcome decided wins. Never refused nor counted by "
                    "the rate limit: it ends what costs."
                ),
                "parameters": [generation_id],
                "requestBody": _body(_ref("StopRequest"), required=False),
                "responses": _api_errors(_json(_ref("Summary")), 400, 401, 403, 404, 413, 415, 503),
                "security": security,
            }
        },
        f"{api}/conversations": {
            "get": {
                "operationId": "listConversations",
                "summary": "This owner's conversations, newest first",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    },
                    {
                        "name": "before",
                        "in": "query",
                        "description": "The `next` of the previous page",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": _api_errors(
                    _json(
                        _ref("ConversationPage"),
                        getConversation={"conversation_id": "$response.body#/conversations/0/id"},
                        deleteConversation={
                            "conversation_id": "$response.body#/conversations/0/id"
                        },
                    ),
                    400,
                    401,
                    429,
                ),
                "security": security,
            }
        },
        f"{api}/conversations/{{conversation_id}}": {
            "parameters": [conversation_id],
            "get": {
                "operationId": "getConversation",
                "summary": "A conversation with every message and its earlier versions",
                "responses": _api_errors(
                    _json(_ref("Conversation"), **_answer_links()), 401, 404, 429
                ),
                "security": security,
            },
            "delete": {
                "operationId": "deleteConversation",
                "summary": "Delete it, first stopping an answer still streaming",
                "responses": _api_errors({"description": _DESCRIPTIONS[204]}, 401, 403, 404, 429),
                "security": security,
            },
        },
        f"{api}/conversations/{{conversation_id}}/messages/{{message_id}}/regenerate": {
            "post": {
                "operationId": "regenerate",
                "summary": "Stream a fresh answer in place of the latest one",
                **restart,
            }
        },
        f"{api}/conversations/{{conversation_id}}/messages/{{message_id}}/continue": {
            "post": {
                "operationId": "continue",
                "summary": "Carry on a stopped, interrupted or failed latest answer",
                **restart,
            }
        },
    }


def _answer_links() -> dict[str, Schema]:
    # A first turn's answer is messages[1]: the latest answer, which these act on.
    answer = {
        "conversation_id": "$response.body#/id",
        "message_id": "$response.body#/messages/1/id",
    }
    return {
        "regenerate": answer,
        "continue": answer,
        "stopGeneration": {"generation_id": "$response.body#/messages/1/generation_id"},
        "deleteConversation": {"conversation_id": "$response.body#/id"},
    }


def _debug_path(token: str) -> Schema:
    return {
        "get": {
            "operationId": "debugStats",
            "summary": "What this worker holds open (STOPWIRE_DEBUG_STATS; operator only)",
            "security": _operator_security(token),
            "responses": {
                "200": _json(
                    _object(
                        pid=_INT,
                        live_generations=_INT,
                        open_fds=_INT,
                        store_connections=_INT,
                        greenlets=_INT,
                    )
                ),
                "404": {"description": "Not an operator (no existence oracle)"},
            },
        }
    }


# -- /v1 -----------------------------------------------------------------------------------


def _openai_paths(v1: str, stopwire: StopwireState, security: list[Schema]) -> Schema:
    model = stopwire.provider.model
    return {
        f"{v1}/chat/completions": {
            "post": {
                "operationId": "createChatCompletion",
                "summary": "An OpenAI-compatible chat completion, streamed or whole",
                "requestBody": _body(_chat_completion_request(model)),
                "responses": _openai_errors(
                    {
                        "description": "The completion (`stream: false`) or its chunks",
                        "content": {
                            "application/json": {"schema": _ref("ChatCompletion")},
                            "text/event-stream": {"schema": _ref("ChatCompletionEvent")},
                        },
                    },
                    400,
                    401,
                    403,
                    404,
                    413,
                    415,
                    429,
                    502,
                    503,
                    504,
                ),
                "security": security,
            }
        },
        f"{v1}/models": {
            "get": {
                "operationId": "listModels",
                "summary": "The one model this server relays to",
                "responses": _openai_errors(_json(_ref("ModelList")), 401, 429),
                "security": security,
            }
        },
        f"{v1}/models/{{model}}": {
            "get": {
                "operationId": "retrieveModel",
                "summary": "One model; any other name is a 404",
                "parameters": [_path_param("model", "The model's name", example=model)],
                "responses": _openai_errors(_json(_ref("Model")), 401, 404, 429),
                "security": security,
            }
        },
    }


def _chat_completion_request(model: str) -> Schema:
    nullable_int = {"type": ["integer", "null"], "minimum": 1}
    return {
        "type": "object",
        "required": ["model", "messages"],
        "additionalProperties": False,
        "properties": {
            "model": {"type": "string", "enum": [model]},
            "messages": {"type": "array", "minItems": 1, "items": _ref("OpenAIMessage")},
            "stream": {"type": "boolean", "default": False},
            "stream_options": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {"include_usage": {"type": "boolean"}},
            },
            "n": {"type": ["integer", "null"], "enum": [1, None]},
            "on_stop": _ANSWER_OPTIONS["on_stop"],
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
            "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "max_tokens": nullable_int,
            "max_completion_tokens": nullable_int,
            "seed": {"type": ["integer", "null"]},
            "user": {"type": ["string", "null"]},
            "stop": {
                "anyOf": [
                    {"type": ["string", "null"]},
                    {"type": "array", "maxItems": 4, "items": {"type": "string"}},
                ]
            },
        },
        "example": {"model": model, "messages": [{"role": "user", "content": "Hello"}]},
    }


# -- app-level -----------------------------------------------------------------------------


def _health_path() -> Schema:
    return {
        "get": {
            "operationId": "health",
            "summary": "This worker answers requests (constant time)",
            "security": [],
            "responses": {"200": _json(_object(status={"const": "ok"}))},
        }
    }


def _metrics_path(token: str) -> Schema:
    return {
        "get": {
            "operationId": "metrics",
            "summary": "Every worker's metrics in Prometheus' text format (operator only)",
            "security": _operator_security(token),
            "responses": {
                "200": {
                    "description": _DESCRIPTIONS[200],
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "404": {"description": "Not an operator (no existence oracle)"},
            },
        }
    }


def _operator_security(token: str) -> list[Schema]:
    # Without a token: a client on this machine that came straight in (no proxy).
    return [{"operatorToken": []}] if token else []


# -- components ----------------------------------------------------------------------------

_INT = {"type": "integer", "minimum": 0}
_STR = {"type": "string"}
_NULLABLE_STR = {"type": ["string", "null"]}


def _schemas() -> Schema:
    """Every named schema."""
    return {
        "Error": _object(
            error=_object(
                type={
                    "type": "string",
                    "description": "invalid_request, unauthorized, forbidden, not_found, "
                    "method_not_allowed, conflict, request_too_large, unsupported_media_type, "
                    "unprocessable, rate_limited",
                },
                message=_STR,
                closed=True,
            ),
            closed=True,
        ),
        "OpenAIError": _object(
            error=_object(
                message=_STR,
                type=_STR,
                param=_NULLABLE_STR,
                code=_NULLABLE_STR,
                closed=True,
            ),
            closed=True,
        ),
        "ChatRequest": {
            "oneOf": [
                {
                    "title": "A turn in a saved conversation",
                    **_object(
                        content={"type": "string", "pattern": r"\S"},
                        conversation_id={"type": ["string", "null"]},
                        **_ANSWER_OPTIONS,
                        optional=("conversation_id", *_ANSWER_OPTIONS),
                    ),
                    "not": {"required": ["messages"]},
                },
                {
                    "title": "A history of the caller's own (nothing is saved)",
                    **_object(
                        messages={
                            "type": "array",
                            "minItems": 1,
                            "items": _object(
                                role={"enum": ["system", "user", "assistant"]}, content=_STR
                            ),
                            "description": "The last message must be the user's.",
                        },
                        conversation_id={"type": "null"},
                        **_ANSWER_OPTIONS,
                        optional=("conversation_id", *_ANSWER_OPTIONS),
                    ),
                    "not": {"required": ["content"]},
                },
            ],
            "example": {"content": "Tell me about stop buttons"},
        },
        "Created": _object(
            generation_id=_STR,
            conversation_id=_NULLABLE_STR,
            message_id=_NULLABLE_STR,
            events_url=_STR,
        ),
        "StopRequest": {
            "type": "object",
            "properties": {
                "seen_chars": {
                    "type": ["integer", "null"],
                    "minimum": 0,
                    "maximum": MAX_SEEN_CHARS,
                    "description": "How much of the answer the user saw: what is kept.",
                }
            },
        },
        "Usage": _object(
            prompt_tokens=_INT,
            completion_tokens=_INT,
            total_tokens=_INT,
            estimated={"type": "boolean", "description": "Counted by Stopwire, not reported"},
        ),
        "Receipt": _object(
            signal=_NULLABLE_STR,
            stop_to_close_ms={"type": "number", "minimum": 0},
            tokens_after_stop=_INT,
            discarded={"const": True, "description": 'Asked with `"on_stop": "discard"`'},
            optional=("discarded",),
        ),
        "Summary": _object(
            generation_id=_STR,
            conversation_id=_NULLABLE_STR,
            message_id=_NULLABLE_STR,
            status={"enum": STATUSES},
            reason={**_NULLABLE_STR, "description": f"One of {REASONS}, or null"},
            usage={"oneOf": [_ref("Usage"), {"type": "null"}]},
            receipt={"oneOf": [_ref("Receipt"), {"type": "null"}]},
            saved={"const": False, "description": "Present when the answer could not be saved"},
            optional=("receipt", "saved"),
        ),
        "Meta": _object(
            generation_id=_STR, conversation_id=_NULLABLE_STR, message_id=_NULLABLE_STR
        ),
        "StreamEvent": {
            "description": (
                "One event of an answer's stream: `meta`, then `token`s, then `error` when it "
                "failed and `done`. Each `id` is the number of characters sent once the event "
                "is (`done`'s is `end`). While the provider is silent, `: keepalive` comments "
                "come, or `heartbeat` events on `events_url` (comments never reach EventSource)."
            ),
            "type": "object",
            "required": ["event", "data"],
            "oneOf": [
                _event("meta", "Meta"),
                {**_event("token", "Token"), "required": ["id"]},
                _event("error", "StreamError"),
                _event("done", "Summary"),
                {"properties": {"event": {"const": "heartbeat"}}},
            ],
        },
        "Token": _object(text=_STR),
        "StreamError": _object(error=_object(type=_STR, message=_STR)),
        "ConversationPage": _object(
            conversations={"type": "array", "items": _ref("ConversationHeader")},
            next={**_NULLABLE_STR, "description": "`before` for the next page; null at the end"},
        ),
        "ConversationHeader": _object(id=_STR, title=_STR, created_at=_STR, updated_at=_STR),
        "Conversation": _object(
            id=_STR,
            title=_STR,
            created_at=_STR,
            updated_at=_STR,
            messages={"type": "array", "items": _ref("Message")},
        ),
        "Message": _object(
            id=_STR,
            conversation_id=_STR,
            role={"enum": ["system", "user", "assistant"]},
            content=_STR,
            status={"enum": STATUSES},
            reason=_NULLABLE_STR,
            model=_NULLABLE_STR,
            usage={"oneOf": [_ref("Usage"), {"type": "null"}]},
            receipt={"oneOf": [_ref("Receipt"), {"type": "null"}]},
            generation_id=_NULLABLE_STR,
            created_at=_STR,
            updated_at=_STR,
            versions={"type": "array", "items": _ref("MessageVersion")},
        ),
        "MessageVersion": _object(
            content=_STR,
            status={"enum": STATUSES},
            reason=_NULLABLE_STR,
            usage={"oneOf": [_ref("Usage"), {"type": "null"}]},
            receipt={"oneOf": [_ref("Receipt"), {"type": "null"}]},
            generation_id=_NULLABLE_STR,
            created_at=_STR,
        ),
        "OpenAIMessage": _object(
            role={"enum": OPENAI_ROLES},
            content={
                "anyOf": [
                    _STR,
                    {
                        "type": "array",
                        "items": _object(type={"const": "text"}, text=_STR),
                        "description": "Content parts: only text can be relayed",
                    },
                ]
            },
        ),
        "OpenAIUsage": _object(prompt_tokens=_INT, completion_tokens=_INT, total_tokens=_INT),
        "ChatCompletion": _object(
            id=_STR,
            object={"const": "chat.completion"},
            created=_INT,
            model=_STR,
            choices={
                "type": "array",
                "items": _object(
                    index=_INT,
                    message=_object(role={"const": "assistant"}, content=_STR),
                    finish_reason={"const": "stop"},
                ),
            },
            usage=_ref("OpenAIUsage"),
        ),
        "ChatCompletionChunk": _object(
            id=_STR,
            object={"const": "chat.completion.chunk"},
            created=_INT,
            model=_STR,
            choices={
                "type": "array",
                "items": _object(
                    index=_INT,
                    delta=_object(
                        role={"const": "assistant"}, content=_STR, optional=("role", "content")
                    ),
                    finish_reason={"enum": ["stop", None]},
                ),
            },
            usage=_ref("OpenAIUsage"),
            optional=("usage",),
        ),
        "ChatCompletionEvent": {
            "description": (
                "One `data:` event of a streamed completion: a chunk, an error (the answer "
                "failed or did not complete), or `[DONE]` after a complete answer."
            ),
            "type": "object",
            "required": ["data"],
            "properties": {"event": {"const": "message"}},
            "if": {"properties": {"data": {"const": "[DONE]"}}},
            "else": {
                "properties": {
                    "data": _json_text(
                        {"anyOf": [_ref("ChatCompletionChunk"), _ref("OpenAIError")]}
                    )
                }
            },
        },
        "Model": _object(
            id=_STR, object={"const": "model"}, created=_INT, owned_by={"const": "stopwire"}
        ),
        "ModelList": _object(
            object={"const": "list"}, data={"type": "array", "items": _ref("Model")}
        ),
    }


def _event(name: str, data: str) -> Schema:
    return {"properties": {"event": {"const": name}, "data": _json_text(_ref(data))}}


def _json_text(schema: Schema) -> Schema:
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


# -- building blocks -----------------------------------------------------------------------


def _object(*, closed: bool = False, optional: tuple[str, ...] = (), **properties: Any) -> Schema:
    """An object with these properties, all required but `optional`; `closed`: no others."""
    schema: Schema = {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _path_param(name: str, description: str, **extra: Any) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
        **extra,
    }


def _body(schema: Schema, required: bool = True) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _json(schema: Schema, **links: dict[str, str]) -> Schema:
    """A 200 with this JSON body; `links`: operationId -> its parameters from this body."""
    response = {
        "description": _DESCRIPTIONS[200],
        "content": {"application/json": {"schema": schema}},
    }
    if links:
        response["links"] = {
            op: {"operationId": op, "parameters": params} for op, params in links.items()
        }
    return response


def _stream() -> Schema:
    return {
        "description": "The answer as server-sent events",
        "content": {"text/event-stream": {"schema": _ref("StreamEvent")}},
    }


def _api_errors(ok: Schema, *statuses: int) -> Schema:
    success = "200" if "content" in ok else "204"
    return {success: ok, **{str(s): _error(s, "Error") for s in statuses}}


def _openai_errors(ok: Schema, *statuses: int) -> Schema:
    return {"200": ok, **{str(s): _error(s, "OpenAIError") for s in statuses}}


def _error(status: int, schema: str) -> Schema:
    response: Schema = {
        "description": _DESCRIPTIONS[status],
        "content": {"application/json": {"schema": _ref(schema)}},
    }
    if status == 429:
        response["headers"] = {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
        }
    return response
