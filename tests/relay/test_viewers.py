"""Viewers of one generation: a client that leaves, a grace, one that comes back.

A viewer's client is one end of a socket pair; closing the other end is the client
leaving, as the watcher sees it on a real connection.
"""

import socket
import time
from collections.abc import Iterator

import gevent
import pytest
from transport import MakeGeneration, ScriptedTransport, wait_until

from flask_stopwire.relay.generation import Generation, RelayEvent


@pytest.fixture
def client() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the server's end, the client's end) of a connection."""
    server_end, client_end = socket.socketpair()
    yield server_end, client_end
    server_end.close()
    client_end.close()


def collect(events: Iterator[RelayEvent], into: list[RelayEvent]) -> gevent.Greenlet:
    return gevent.spawn(lambda: into.extend(events))


def test_events_carry_the_character_offset_they_end_at(
    make_generation: MakeGeneration,
) -> None:
    generation, transport = make_generation()
    events = generation.events()
    assert next(events).at == 0  # meta
    transport.text("Hé", "llo")
    first = next(events)
    transport.finish()
    rest = list(events)
    assert [(e.kind, e.at) for e in [first, *rest]] in (
        [("token", 2), ("token", 5), ("done", 5)],
        [("token", 5), ("done", 5)],
    )


def test_a_client_that_leaves_stops_the_generation_and_is_not_told(
    make_generation: MakeGeneration, client: tuple[socket.socket, socket.socket]
) -> None:
    generation, transport = make_generation()
    heard, _ = view_then_leave(generation, transport, client, "Hello")
    assert generation.outcome is not None
    assert (generation.outcome.status, generation.outcome.reason) == (
        "stopped",
        "client_disconnect",
    )
    assert [e.kind for e in heard] == ["meta", "token"]
    assert transport.closed_at is not None


def view_then_leave(
    generation: Generation,
    transport: ScriptedTransport,
    client: tuple[socket.socket, socket.socket],
    text: str,
) -> tuple[list[RelayEvent], float]:
    """A viewer on `client` hears meta and `text`, then its client leaves; what it heard
    and when it left."""
    server_end, client_end = client
    heard: list[RelayEvent] = []
    reader = collect(generation.events(server_end), heard)
    transport.text(text)
    wait_until(lambda: len(heard) == 2)
    left = time.monotonic()
    client_end.close()
    reader.get(timeout=2)
    return heard, left


def test_within_its_grace_a_returning_viewer_gets_exactly_what_it_missed(
    make_generation: MakeGeneration, client: tuple[socket.socket, socket.socket]
) -> None:
    generation, transport = make_generation(grace_s=5.0)
    heard, _ = view_then_leave(generation, transport, client, "One ")
    assert generation.outcome is None  # it runs on
    transport.text("two ", "three ")
    wait_until(lambda: generation.text() == "One two three ")
    seen = heard[-1].at
    back = generation.events(after=seen)
    missed = next(back)
    assert (missed.kind, missed.data, missed.at) == ("token", "two three ", 14)
    transport.text("four")
    transport.finish()
    rest = list(back)
    text = "".join(e.data for e in [*heard, missed, *rest] if e.kind == "token")
    assert text == generation.text() == "One two three four"
    assert rest[-1].kind == "done" and rest[-1].data["status"] == "complete"


def test_nobody_back_within_the_grace_stops_it_as_a_disconnect(
    make_generation: MakeGeneration, client: tuple[socket.socket, socket.socket]
) -> None:
    generation, transport = make_generation(grace_s=0.3)
    _, left = view_then_leave(generation, transport, client, "One ")
    assert generation.wait_settled(3)
    waited = generation.stop_at - left  # type: ignore[operator]
    assert 0.25 <= waited < 1.3
    assert generation.summary()["reason"] == "client_disconnect"
    assert transport.closed_at is not None


def test_a_viewer_returning_after_the_end_gets_the_rest_and_done(
    make_generation: MakeGeneration, client: tuple[socket.socket, socket.socket]
) -> None:
    generation, transport = make_generation()
    view_then_leave(generation, transport, client, "Hello")
    late = list(generation.events(after=2))
    assert [(e.kind, e.at) for e in late] == [("token", 5), ("done", 5)]
    assert late[0].data == "llo"
    assert late[1].data["reason"] == "client_disconnect"


def test_an_explicit_stop_is_immediate_whatever_the_grace(
    make_generation: MakeGeneration, client: tuple[socket.socket, socket.socket]
) -> None:
    generation, transport = make_generation(grace_s=30.0)
    view_then_leave(generation, transport, client, "One ")
    generation.stop("user_stop")
    assert generation.wait_settled(2)
    assert generation.summary()["reason"] == "user_stop"
    assert transport.closed_at is not None


def test_a_second_viewer_keeps_it_running_when_the_first_leaves(
    make_generation: MakeGeneration, client: tuple[socket.socket, socket.socket]
) -> None:
    generation, transport = make_generation()
    server_end, client_end = client
    first: list[RelayEvent] = []
    reader = collect(generation.events(server_end), first)
    transport.text("a")
    wait_until(lambda: len(first) == 2)
    second: list[RelayEvent] = []
    other = collect(generation.events(after=1), second)
    gevent.sleep(0)  # attached
    client_end.close()
    reader.get(timeout=2)
    assert generation.outcome is None
    transport.text("b")
    transport.finish()
    other.get(timeout=2)
    assert [(e.kind, e.data if e.kind == "token" else None) for e in second] == [
        ("token", "b"),
        ("done", None),
    ]


def test_discard_keeps_no_text_of_a_stopped_answer(make_generation: MakeGeneration) -> None:
    generation, transport = make_generation()
    generation.discard = True
    events = generation.events()
    next(events)
    transport.text("half a JSON {")
    next(events)
    generation.stop("user_stop")
    list(events)
    assert generation.text() == "half a JSON {" and generation.kept_text() == ""
    assert generation.summary()["receipt"]["discarded"] is True


def test_a_grace_asks_whether_a_viewer_elsewhere_reads_it_and_then_grants_a_new_one(
    make_generation: MakeGeneration, client: tuple[socket.socket, socket.socket]
) -> None:
    """The hooks a mirror uses: told once when nobody views it any more; while a viewer
    on another host reads it, the grace is asked again (every second) instead of
    stopping; once that viewer has left, a whole new grace runs before the stop."""
    generation, transport = make_generation(grace_s=0.3)
    unviewed: list[Generation] = []
    generation.on_unviewed = unviewed.append
    viewing_elsewhere = [True]
    generation.viewed_elsewhere = lambda _g: viewing_elsewhere[0]
    view_then_leave(generation, transport, client, "One ")
    assert unviewed == [generation]
    gevent.sleep(1.0)
    assert generation.outcome is None  # read elsewhere: running past its grace
    viewing_elsewhere[0] = False
    gone_at = time.monotonic()
    assert generation.wait_settled(4)
    assert generation.summary()["reason"] == "client_disconnect"
    assert 0.3 <= generation.stop_at - gone_at < 2.5  # type: ignore[operator]


def test_a_viewer_back_while_the_grace_asks_elsewhere_keeps_it_running(
    make_generation: MakeGeneration, client: tuple[socket.socket, socket.socket]
) -> None:
    """Asking whether a viewer elsewhere reads it goes to Redis: other greenlets run
    meanwhile. A viewer that came back here in that time wins over the answer "no"."""
    generation, transport = make_generation(grace_s=0.2)
    asked: list[float] = []

    def slow_no(_generation: Generation) -> bool:
        asked.append(time.monotonic())
        gevent.sleep(0.3)  # a viewer comes back while we wait for the answer
        return False

    generation.viewed_elsewhere = slow_no
    view_then_leave(generation, transport, client, "One ")
    wait_until(lambda: asked)
    heard: list[RelayEvent] = []
    back = collect(generation.events(after=4), heard)  # attaches now, while we wait
    wait_until(lambda: time.monotonic() - asked[0] > 0.4)  # the answer "no" came
    assert generation.outcome is None  # still running: its viewer is back
    transport.text("two")
    transport.finish()
    back.get(timeout=2)
    assert heard[0] == RelayEvent("token", "two", 7)
    assert heard[-1].data["status"] == "complete"


def test_observe_yields_the_text_as_it_arrives_until_the_outcome(
    make_generation: MakeGeneration,
) -> None:
    generation, transport = make_generation()
    events = generation.events()
    next(events)  # meta: started
    seen: list[tuple[int, str]] = []
    observer = gevent.spawn(lambda: seen.extend(generation.observe()))
    transport.text("One ")
    wait_until(lambda: seen == [(4, "One ")])
    transport.text("two", " three")
    wait_until(lambda: len(seen) == 2)
    assert seen[1] == (13, "two three")
    transport.finish()
    list(events)
    observer.join(2)
    assert observer.dead and "".join(piece for _, piece in seen) == generation.text()
