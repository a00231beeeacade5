"""What every provider is: a request builder and a pure stream parser.

Provider errors, all mapped at the edge from `requests`, HTTP statuses and
malformed streams (the `type` is what clients see in `error` events)::

    ProviderError                      provider_error
    ├── ProviderUnreachable            provider_unreachable  (refused, DNS, TLS)
    ├── ProviderTimeout                provider_timeout      (connect or idle read)
    ├── ProviderHTTPError              by status: provider_auth (401/403),
    │                                  provider_not_found (404), provider_rate_limited (429),
    │                                  provider_bad_request (other 4xx), provider_unavailable (5xx)
    ├── ProviderStreamError            provider_stream_error (malformed line, error event)
    └── ProviderDisconnected           provider_disconnected (stream cut mid-answer)
"""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson


@dataclass(frozen=True)
class Message:
    """One chat turn as the provider sees it."""

    role: str
    content: str


@dataclass(frozen=True)
class Usage:
    """Token counts; `estimated` when counted by us rather than reported."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape sent in `done` events."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "estimated": self.estimated,
        }


@dataclass(slots=True)  # one per token: not frozen, whose __init__ costs five times more
class Delta:
    """One parsed provider event: some text, the usage, or the end of the answer."""

    text: str = ""
    usage: Usage | None = None
    finished: bool = False


@dataclass(frozen=True)
class ProviderCall:
    """An HTTP request ready for `requests`."""

    url: str
    json: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class Provider(Protocol):
    """A model provider: builds the streaming request and parses its body."""

    name: str
    prefill: bool  # continues a final assistant turn natively (see flask_stopwire/history.py)
    # `parse` passes a None chunk on as a None delta ("nothing ready yet"): its stream
    # can then be read by whichever greenlet relays it, without blocking (relay/generation.py).
    pauses: bool

    def build_call(
        self, messages: list[Message], options: dict[str, Any] | None = None
    ) -> ProviderCall:
        """The streaming HTTP request for this conversation.

        `options` are sampling settings in OpenAI's names (temperature, top_p,
        max_tokens or max_completion_tokens, stop as a list, seed, user), translated
        to the provider's own; one it cannot honour raises UnsupportedOption.
        """
        ...

    def parse(self, chunks: Iterable[bytes]) -> Iterator[Delta]:
        """Turn raw body chunks into deltas; ends with a `finished` delta or raises.

        With `pauses`, chunks may be None and each such None yields a None delta.
        """
        ...


class Endpoint:
    """Where a provider lives and how it is addressed: what every provider is built from."""

    def __init__(self, url: str, api_key: str, model: str):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.model = model


def json_object(line: str | bytes) -> dict[str, Any]:
    """One stream line's JSON object, or a ProviderStreamError saying it is malformed.

    orjson reads it, in under half the stdlib scanner's time: every token pays this.
    What orjson refuses, json.loads reads as it always did (NaN, a lone surrogate, a
    number past a double's range, UTF-16 bytes). One difference stays: an integer past
    64 bits comes back as a float, where json.loads keeps it exact; a provider's numbers
    are token counts.
    """
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            parsed = json.loads(line)
        except (ValueError, RecursionError) as exc:  # absurdly nested is malformed too
            raise ProviderStreamError(f"malformed stream line: {line[:120]!r}") from exc
    if not isinstance(parsed, dict):
        raise ProviderStreamError(f"malformed stream line: {line[:120]!r}")
    return parsed


class UnsupportedOption(ValueError):
    """A request option this provider cannot honour."""

    def __init__(self, provider: str, param: str):
        super().__init__(f"{param} is not supported by the {provider} provider")
        self.param = param


class ProviderError(Exception):
    """Anything that went wrong talking to the provider."""

    type = "provider_error"


class ProviderUnreachable(ProviderError):
    type = "provider_unreachable"


class ProviderTimeout(ProviderError):
    type = "provider_timeout"


class ProviderStreamError(ProviderError):
    type = "provider_stream_error"


class ProviderDisconnected(ProviderError):
    type = "provider_disconnected"


class ProviderHTTPError(ProviderError):
    """The provider answered with an HTTP error status."""

    def __init__(self, status: int, message: str):
        super().__init__(f"provider returned HTTP {status}: {message}")
        self.status = status

    @property
    def type(self) -> str:  # type: ignore[override]
        if self.status in (401, 403):
            return "provider_auth"
        if self.status == 404:
            return "provider_not_found"
        if self.status == 429:
            return "provider_rate_limited"
        if self.status >= 500:
            return "provider_unavailable"
        return "provider_bad_request"
