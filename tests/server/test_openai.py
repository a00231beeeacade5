"""The OpenAI-compatible endpoint, driven by the official `openai` SDK: every way a
client leaves closes the provider at once, and errors raise the SDK's own classes."""

import time
import uuid

import openai
import pytest
import requests
from conftest import Server
from wire import AUTH, TEST_KEY, Connection, request_bytes

MODEL = "stopwire-demo"


def marker() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)


def ask(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def closed_soon(upstream, prompt: str, closed_at: float) -> dict:
    record = upstream.ended(prompt)
    assert record["ended"] == "client_closed"
    assert record["client_closed_at"] - closed_at < 1.0
    assert sum(t > closed_at + 0.1 for t in record["token_times"]) == 0
    return record


def test_streamed_completion_with_usage(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ask(f"{marker()} [demo tokens=6 gap=0]"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 6
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


def test_whole_completion(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=ask(f"{marker()} [demo tokens=4 gap=0]"), temperature=0.2, seed=7
    )
    assert completion.object == "chat.completion"
    assert len(completion.choices[0].message.content.split()) == 4
    assert completion.usage.completion_tokens == 4


@pytest.mark.parametrize(
    ("options", "received"),
    [
        (
            {"temperature": 0.5, "top_p": 0.9, "max_tokens": 20, "stop": "END", "seed": 7},
            {"temperature": 0.5, "top_p": 0.9, "max_tokens": 20, "stop": ["END"], "seed": 7},
        ),
        (
            {"max_completion_tokens": 30, "stop": ["one", "two"], "temperature": 0, "user": "u-42"},
            {"max_completion_tokens": 30, "stop": ["one", "two"], "temperature": 0, "user": "u-42"},
        ),
        ({}, {}),
    ],
    ids=["openai-names", "newer-names", "none"],
)
@pytest.mark.parametrize("stream", [False, True])
def test_options_reach_the_provider(client, upstream, options, received, stream):
    prompt = marker()
    system = {"role": "system", "content": "be brief"}
    question = {"role": "user", "content": f"{prompt} [demo tokens=1]"}
    answer = client.chat.completions.create(
        model=MODEL, messages=[system, question], stream=stream, **options
    )
    if stream:
        list(answer)
    record = upstream.ended(prompt)
    assert record["ended"] == "complete"
    assert record["messages"] == [system, question]
    assert record["options"] == received


def test_closing_the_stream_after_5_chunks_closes_the_provider(client, upstream):
    prompt = marker()
    stream = client.chat.completions.create(
        model=MODEL, messages=ask(f"{prompt} [demo tokens=300 gap=0.02]"), stream=True
    )
    for _, _chunk in zip(range(5), stream, strict=False):
        pass
    closed_at = time.monotonic()
    stream.close()
    closed_soon(upstream, prompt, closed_at)


def test_on_stop_discard_is_honoured_and_said_in_the_stop_receipt(client, server, upstream):
    prompt = marker()
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ask(f"{prompt} [demo tokens=300 gap=0.02]"),
        stream=True,
        extra_body={"on_stop": "discard"},
    )
    first = next(iter(stream))
    generation_id = "gen_" + first.id.removeprefix("chatcmpl-")
    stop = requests.post(
        f"{server.url}/api/generations/{generation_id}/stop", json={}, headers=AUTH, timeout=5
    )
    assert stop.status_code == 200, stop.text
    assert stop.json()["status"] == "stopped" and stop.json()["receipt"]["discarded"] is True
    stream.close()
    assert upstream.ended(prompt)["ended"] == "client_closed"


def test_leaving_a_with_block_early_closes_the_provider(client, upstream):
    prompt = marker()
    with client.chat.completions.create(
        model=MODEL, messages=ask(f"{prompt} [demo tokens=300 gap=0.02]"), stream=True
    ) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        closed_at = time.monotonic()
    closed_soon(upstream, prompt, closed_at)


def test_a_non_streaming_client_that_times_out_closes_the_provider(client, upstream):
    prompt = marker()
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=1.0).chat.completions.create(
            model=MODEL, messages=ask(f"{prompt} [demo tokens=100 gap=0.05]")
        )
    closed_soon(upstream, prompt, time.monotonic() - 0.05)


@pytest.mark.parametrize("stream", [True, False])
def test_leaving_before_the_response_headers_closes_the_provider(server, upstream, stream):
    # The endpoint holds its headers until the first token (or a heartbeat) so that
    # a provider error can still get its own status; the watcher runs meanwhile.
    prompt = marker()
    conn = Connection(server.url)
    body = {"model": MODEL, "messages": ask(f"{prompt} [demo ttft=30]"), "stream": stream}
    conn.sock.sendall(request_bytes(conn.host, "/v1/chat/completions", body, "application/json"))
    upstream.record(prompt)
    closed_at = conn.close_fin()
    closed_soon(upstream, prompt, closed_at)


def test_leaving_a_stream_before_the_first_token_closes_the_provider(server, upstream):
    prompt = marker()
    body = {"model": MODEL, "messages": ask(f"{prompt} [demo ttft=30]"), "stream": True}
    response = requests.post(
        f"{server.url}/v1/chat/completions", json=body, stream=True, headers=AUTH, timeout=10
    )
    assert response.status_code == 200  # committed by the first heartbeat (0.3 s here)
    closed_at = time.monotonic()
    response.close()
    record = closed_soon(upstream, prompt, closed_at)
    assert record["tokens_sent"] == 0


def test_a_plain_requests_client_closing_mid_stream(server, upstream):
    prompt = marker()
    body = {"model": MODEL, "messages": ask(f"{prompt} [demo tokens=300 gap=0.02]"), "stream": True}
    response = requests.post(
        f"{server.url}/v1/chat/completions", json=body, stream=True, headers=AUTH, timeout=10
    )
    chunks = 0
    for line in response.iter_lines():
        chunks += line.startswith(b"data:")
        if chunks == 5:
            break
    closed_at = time.monotonic()
    response.close()
    closed_soon(upstream, prompt, closed_at)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"model": "gpt-nope"}, openai.NotFoundError),
        ({"model": MODEL, "temperature": 3}, openai.BadRequestError),
        ({"model": MODEL, "n": 2}, openai.BadRequestError),
        (
            {"model": MODEL, "tools": [{"type": "function", "function": {"name": "f"}}]},
            openai.BadRequestError,
        ),
        ({"model": MODEL, "messages": []}, openai.BadRequestError),
    ],
)
def test_bad_requests_raise_the_sdks_exceptions(client, kwargs, error):
    kwargs.setdefault("messages", ask("hi"))
    with pytest.raises(error) as raised:
        client.chat.completions.create(**kwargs)
    assert raised.value.body["message"]


def test_provider_errors_raise_the_sdks_exceptions(client):
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=ask("x [demo status=429]"))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model=MODEL, messages=ask("x [demo status=503]"), stream=True
        )
    stream = client.chat.completions.create(
        model=MODEL, messages=ask("x [demo tokens=10 gap=0 fail=error:3]"), stream=True
    )
    with pytest.raises(openai.APIError, match="overloaded"):
        list(stream)


def test_models(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nope")


def test_client_keys(upstream):
    key = "sk-client-" + uuid.uuid4().hex
    server = Server(upstream.url, STOPWIRE_CLIENT_KEYS=f"other-key, {key}")
    try:
        base = f"{server.url}/v1"
        good = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
        assert good.chat.completions.create(model=MODEL, messages=ask("hi [demo tokens=1]"))
        for wrong in ("sk-wrong", ""):
            bad = openai.OpenAI(base_url=base, api_key=wrong or "x", max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()
        anonymous = requests.get(f"{base}/models", headers=AUTH, timeout=10)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "invalid_api_key"
        # /api takes the same keys; a caller with neither key nor the page's cookie is refused.
        assert requests.get(f"{server.url}/api/conversations", timeout=10).status_code == 401
        keyed = {"Authorization": f"Bearer {key}"}
        listed = requests.get(f"{server.url}/api/conversations", headers=keyed, timeout=10)
        assert listed.status_code == 200 and listed.json()["conversations"] == []
    finally:
        server.close()
    assert key not in server.output()
