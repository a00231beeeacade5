"""The provider session reads its environment once: proxies (with NO_PROXY), CA bundle, .netrc."""

from pathlib import Path

import pytest

from flask_stopwire.providers.http import new_session

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
