"""Fixtures for relay unit tests: a Generation wired to a scripted provider transport."""

from collections.abc import Iterator

import pytest
import requests
from transport import MakeGeneration, ScriptedTransport

from flask_stopwire.providers import make_provider
from flask_stopwire.providers.base import Message
from flask_stopwire.relay.generation import Generation, RelaySettings

PROVIDER_URL = "http://provider.test/v1"


@pytest.fixture
def make_generation() -> Iterator[MakeGeneration]:
    """A factory of (generation, its scripted transport) pairs; sessions closed after."""
    sessions: list[requests.Session] = []

    def make(
        transport: ScriptedTransport | None = None,
        *,
        messages: list[Message] | None = None,
        heartbeat_s: float = 60.0,
        **kwargs: object,
    ) -> tuple[Generation, ScriptedTransport]:
        transport = transport or ScriptedTransport()
        session = requests.Session()
        session.mount("http://provider.test/", transport)
        sessions.append(session)
        settings = RelaySettings(heartbeat_s=heartbeat_s, connect_timeout_s=1, read_timeout_s=5)
        provider = make_provider("openai", PROVIDER_URL, "", "m")
        messages = messages or [Message("user", "Tell me a story")]
        return Generation(provider, messages, session, settings, **kwargs), transport

    yield make
    for session in sessions:
        session.close()


@pytest.fixture
def pair(make_generation: MakeGeneration) -> tuple[Generation, ScriptedTransport]:
    """One generation and its transport, with the defaults."""
    return make_generation()
