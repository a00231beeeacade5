"""The pure part of relay/mirror.py: which part of a mirrored piece a follower still lacks.
(Mirroring and following themselves run against a real Redis and two hosts in
tests/server/test_many_hosts.py.)"""

from flask_stopwire.relay.mirror import _unsent


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
