"""relay/mirror.py: which part of a mirrored piece a follower still lacks (pure), and a
follower that ends instead of hanging when Redis goes away or its stream is dropped (a
redis-server of the tests' own). Mirroring and following across two hosts run in
tests/server/test_many_hosts.py."""

import time
from collections.abc import Iterator

import pytest
import redis

from flask_stopwire.relay import mirror as mirror_module
from flask_stopwire.relay.generation import RelayEvent
from flask_stopwire.relay.mirror import Mirror, _unsent
from tests.redis_server import RedisServer


def piece(at: int, text: str) -> dict[str, str]:
    """A stream entry as redis-py returns it: the characters so far, and the piece."""
    return {"at": str(at), "text": text}


def test_a_follower_gets_exactly_what_comes_after_what_it_has() -> None:
    assert _unsent(piece(10, "0123456789"), 0) == ("0123456789", 10)
    assert _unsent(piece(10, "0123456789"), 4) == ("456789", 10)
    assert _unsent(piece(15, "abcde"), 12) == ("cde", 15)  # the piece is characters 10-14


def test_a_piece_it_has_already_gives_nothing() -> None:
    assert _unsent(piece(10, "0123456789"), 10) == ("", 10)
    assert _unsent(piece(10, "0123456789"), 25) == ("", 25)


def test_a_gap_before_a_piece_is_none_never_a_silent_skip() -> None:
    assert _unsent(piece(20, "abcde"), 12) == (None, 12)  # characters 12-14 were trimmed


@pytest.fixture
def server() -> Iterator[RedisServer]:
    process = RedisServer()
    yield process
    process.stop()


HEARTBEAT_S = 0.1  # a follower yields at least this often: a test can give up on it


def rest_within(events: Iterator[RelayEvent], seconds: float) -> tuple[list[RelayEvent], bool]:
    """What a follower yields but keepalives, and whether it ended within `seconds`."""
    deadline = time.monotonic() + seconds
    rest = []
    for event in events:
        if event.kind != "keepalive":
            rest.append(event)
        if time.monotonic() > deadline:
            return rest, False
    return rest, True


def following(server: RedisServer) -> tuple[Mirror, Iterator[RelayEvent], redis.Redis]:
    """A follower of an answer mirrored as "Hello", with meta and that text read."""
    mirror = Mirror(server.url, namespace="test")
    plain = redis.Redis.from_url(server.url, decode_responses=True)
    plain.xadd(mirror.answer_key("gen_a"), {"at": 5, "text": "Hello"})
    events = mirror.follow("gen_a", None, {"generation_id": "gen_a"}, HEARTBEAT_S, None)
    assert events is not None
    assert next(events).kind == "meta"
    assert next(events) == RelayEvent("token", "Hello", 5)
    return mirror, events, plain


def test_a_follower_ends_when_redis_goes_away(server: RedisServer) -> None:
    mirror, events, plain = following(server)
    server.stop()
    assert rest_within(events, 5) == ([], True)  # no `done`: its client asks the store
    plain.close()
    mirror.close()


def test_a_follower_ends_when_its_stream_is_dropped_and_gives_up_its_lease(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mirror_module, "GONE_CHECK_S", 0.2)
    mirror, events, plain = following(server)
    assert plain.exists(mirror.lease_key("gen_a"))  # it told the running host it reads
    plain.delete(mirror.answer_key("gen_a"))  # the running host gave up mirroring
    assert rest_within(events, 3) == ([], True)
    assert not plain.exists(mirror.lease_key("gen_a"))  # a new grace starts there
    plain.close()
    mirror.close()
