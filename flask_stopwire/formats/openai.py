"""OpenAI's chat completion shapes for relay events: chunks, completions, errors; pure."""

import itertools
import time
from collections.abc import Generator, Iterable, Iterator
from typing import Any

from flask_stopwire.formats.sse import KEEPALIVE, compact_json, json_string

DONE = b"data: [DONE]\n\n"

# Our error types as HTTP statuses an OpenAI SDK maps to its exception classes.
STATUS_BY_TYPE = {
    # The provider refused the request itself (e.g. no user turn): the caller's to fix.
    "provider_bad_request": 400,
    "provider_rate_limited": 429,
    "provider_timeout": 504,
    "provider_unavailable": 503,
}


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None):
    """`{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def relay_error_status(error: dict[str, str]) -> int:
    """The HTTP status for a provider failure seen before any text was sent."""
    return STATUS_BY_TYPE.get(error["type"], 502)


class Completion:
    """The fixed parts of one completion's chunks."""

    def __init__(self, generation_id: str, model: str):
        self.id = "chatcmpl-" + generation_id.removeprefix("gen_")
        self.model = model
        self.created = int(time.time())
        # A token's chunk around its text, encoded once: only the text is encoded per token.
        head, tail = compact_json(self.chunk({"content": ""})).split('"content":""')
        self._token_head = f'data: {head}"content":'.encode("utf-8", "replace")
        self._token_tail = f"{tail}\n\n".encode("utf-8", "replace")

    def token(self, text: str) -> bytes:
        """`data: <chunk({"content": text})>`, as `_data` would encode it."""
        return self._token_head + json_string(text) + self._token_tail

    def chunk(self, delta: dict, finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def whole(self, text: str, usage: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed completion."""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": openai_usage(usage),
        }

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self.chunk({}), "choices": [], "usage": openai_usage(usage)}


def openai_usage(usage: dict[str, Any]) -> dict[str, int]:
    return {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def outcome_error(done: dict[str, Any]) -> dict[str, Any]:
    """An answer that ended without completing, as an in-stream error object."""
    message = {
        "stopped": "the generation was stopped before it completed",
        "interrupted": "the server is shutting down; the generation was interrupted",
    }.get(done["status"], "the generation failed")
    return error_body(message, "server_error", code=done["reason"])


def encode(
    completion: Completion,
    first: Iterable[Any],
    relay_events: Generator[Any, None, None],
    include_usage: bool,
) -> Iterator[bytes]:
    """The `data:` chunks of a streamed completion, ending in `[DONE]` when complete."""
    try:
        yield _data(completion.chunk({"role": "assistant", "content": ""}))
        for event in itertools.chain(first, relay_events):
            if event.kind == "token":
                yield completion.token(event.data)
            elif event.kind == "keepalive":
                yield KEEPALIVE
            elif event.kind == "error":
                yield _data(
                    error_body(event.data["message"], "server_error", code=event.data["type"])
                )
            elif event.kind == "done":
                yield from _ending(completion, event.data, include_usage)
    finally:
        relay_events.close()  # a `for` loop would leave the relay's cleanup to the GC


def _ending(completion: Completion, done: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
    if done["status"] == "error":
        return  # the error chunk was sent
    if done["status"] != "complete":
        yield _data(outcome_error(done))
        return
    yield _data(completion.chunk({}, "stop"))
    if include_usage:
        yield _data(completion.usage_chunk(done["usage"]))
    yield DONE


def _data(payload: dict[str, Any]) -> bytes:
    return f"data: {compact_json(payload)}\n\n".encode("utf-8", "replace")
