"""The provider session reads its environment once: proxies (with NO_PROXY), CA bundle, .netrc;
every call goes out with those settings."""

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from flask_stopwire.providers.base import ProviderCall
from flask_stopwire.providers.http import new_session, open_stream

URL = "https://api.example.com/v1"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE"):
        for variant in (name, name.lower()):
            monkeypatch.delenv(variant, raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_the_environments_proxy_is_used_for_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    session = new_session(4, URL)
    assert session.proxies["https"] == "http://proxy.internal:3128"
    assert session.trust_env is False  # nothing more is read per request


def test_no_proxy_for_the_providers_host_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "api.example.com")
    assert "https" not in new_session(4, URL).proxies


def test_a_ca_bundle_from_the_environment_is_verified_against(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    assert new_session(4, URL).verify == str(bundle)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    assert new_session(4, URL).verify is True


def test_netrc_credentials_for_the_providers_host_are_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.example.com login me password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert new_session(4, URL).auth == ("me", "secret")
    assert new_session(4, "https://other.example.com/v1").auth is None


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A provider (or a proxy before it) that records each request and answers one event."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append({"target": self.path, "headers": dict(self.headers), "body": body})
        event = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Set-Cookie", "affinity=node-7; Path=/")  # as a load balancer would
        self.send_header("Content-Length", str(len(event)))
        self.end_headers()
        self.wfile.write(event)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_call_goes_out_with_the_sessions_settings_and_its_own_headers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, recorder: tuple[str, list[dict]]
) -> None:
    """Through the environment's proxy, with .netrc's credentials, the session's default
    headers under the call's own, and a cookie the provider set sent back next time."""
    proxy, seen = recorder
    provider = "http://provider.example.com/v1"
    netrc = tmp_path / "netrc"
    netrc.write_text("machine provider.example.com login me password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HTTP_PROXY", proxy)
    session = new_session(4, provider)
    session.headers["X-Unset"] = None  # not sent, as with `Session.post`
    call = ProviderCall(
        f"{provider}/chat/completions",
        {"model": "m", "stream": True},
        {"Accept": "text/event-stream", "X-Trace": "t-1"},
    )
    for _ in range(2):
        response = open_stream(session, call, (5, 5))
        assert (
            response.raw.read()
            == b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
        )
        response.close()
    first, second = seen
    assert first["target"] == f"{provider}/chat/completions"  # the proxy's absolute form
    assert json.loads(first["body"]) == {"model": "m", "stream": True}
    headers = first["headers"]
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"me:secret").decode()
    assert headers["Accept"] == "text/event-stream"  # the call's, not the session's */*
    assert headers["X-Trace"] == "t-1"
    assert headers["User-Agent"].startswith("python-requests/")
    assert headers["Content-Type"] == "application/json"
    assert "Cookie" not in headers
    assert "X-Unset" not in headers
    assert second["headers"]["Cookie"] == "affinity=node-7"


def test_the_sessions_query_parameters_go_out_with_a_call(
    recorder: tuple[str, list[dict]],
) -> None:
    url, seen = recorder
    session = new_session(4, url)
    call = ProviderCall(f"{url}/chat/completions", {"model": "m"}, {})
    open_stream(session, call, (5, 5)).close()
    session.params["api-version"] = "2024-10-21"
    open_stream(session, call, (5, 5)).close()
    assert [request["target"] for request in seen] == [
        "/chat/completions",
        "/chat/completions?api-version=2024-10-21",
    ]
