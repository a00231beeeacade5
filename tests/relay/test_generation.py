"""`Generation` under gevent with a scripted provider: the race rule, receipts, usage,
`seen_chars`, keepalives, errors, and stops that act at once. Deterministic, in milliseconds.

The test's greenlet is the handler (it iterates `events()`), unless a test needs it blocked
while something else happens; then a reader greenlet iterates and the test acts.
"""

import math
import socket
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
import requests
from gevent.hub import get_hub
from transport import MakeGeneration, ScriptedTransport, wait_until
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from flask_stopwire.providers.base import Message
from flask_stopwire.relay.generation import Generation, Outcome, RelayEvent

Pair = tuple[Generation, ScriptedTransport]


def started(generation: Generation) -> Iterator[RelayEvent]:
    """The generation's events, with `meta` read (the pump is spawned then)."""
    events = generation.events()
    assert next(events) == RelayEvent("meta", {"generation_id": generation.id})
    return events


def done_of(events: list[RelayEvent]) -> dict[str, Any]:
    """The `done` event's data, which must be the last event."""
    assert events and events[-1].kind == "done", events
    return events[-1].data


def read_in_greenlet(generation: Generation) -> gevent.Greenlet:
    """A client reading every event in a greenlet of its own; `.get()` returns them."""
    return gevent.spawn(lambda: list(generation.events()))


# -- normal end ---------------------------------------------------------------------------


def test_tokens_then_complete_with_the_providers_usage(pair: Pair) -> None:
    generation, transport = pair
    events = started(generation)
    transport.text("Hello")
    assert next(events) == RelayEvent("token", "Hello")
    transport.text(" world")
    transport.usage(9, 2)
    transport.finish()
    rest = list(events)
    assert rest[0] == RelayEvent("token", " world")
    assert done_of(rest) == {
        "generation_id": generation.id,
        "status": "complete",
        "reason": None,
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": 2,
            "total_tokens": 11,
            "estimated": False,
        },
    }
    assert len(rest) == 2
    assert generation.text() == generation.kept_text() == "Hello world"
    assert transport.closed_at is not None  # the pump closed the response it opened
    assert transport.shutdown_at is None  # nobody hung up on the provider


def test_the_request_is_the_providers_with_our_timeouts(make_generation: MakeGeneration) -> None:
    generation, transport = make_generation(options={"temperature": 0.25})
    events = started(generation)
    transport.finish()
    assert done_of(list(events))["status"] == "complete"
    sent = transport.sent_json()
    assert sent["model"] == "m" and sent["stream"] is True and sent["temperature"] == 0.25
    assert sent["messages"] == [{"role": "user", "content": "Tell me a story"}]
    assert transport.requests[0].url == "http://provider.test/v1/chat/completions"
    assert transport.timeout == (1, 5)


def test_tokens_that_queued_up_go_out_in_one_frame(pair: Pair) -> None:
    generation, transport = pair
    events = started(generation)
    transport.text("a", "b", "c")
    assert next(events) == RelayEvent("token", "abc")
    assert generation.delivered_tokens == 3


def test_the_end_is_recorded_before_the_client_hears_done(make_generation: MakeGeneration) -> None:
    heard: list[RelayEvent] = []
    recorded: list[list[str]] = []

    def on_end(generation: Generation) -> bool:
        recorded.append([event.kind for event in heard])
        return True

    generation, transport = make_generation(on_end=on_end)
    transport.text("x")
    transport.finish()
    heard.extend(generation.events())
    assert len(recorded) == 1 and "done" not in recorded[0]  # once, before `done` went out
    assert generation.settled.is_set()


def test_a_failing_recorder_does_not_break_the_stream(make_generation: MakeGeneration) -> None:
    def on_end(generation: Generation) -> bool:
        raise RuntimeError("database gone")

    generation, transport = make_generation(on_end=on_end)
    transport.finish()
    assert done_of(list(generation.events()))["status"] == "complete"
    assert generation.wait_settled(0)


# -- the race rule ------------------------------------------------------------------------


def test_a_stop_after_the_final_event_was_parsed_reports_complete(pair: Pair) -> None:
    generation, transport = pair
    events = started(generation)
    transport.text("Hello")
    transport.finish()
    assert next(events) == RelayEvent("token", "Hello")
    wait_until(lambda: generation.outcome is not None)
    assert generation.stop("user_stop", seen_chars=2) == Outcome("complete")
    done = done_of(list(events))
    assert done["status"] == "complete" and done["reason"] is None and "receipt" not in done
    assert generation.stop_at is None and generation.kept_text() == "Hello"


def test_a_stop_before_the_final_event_reports_stopped_with_its_reason(pair: Pair) -> None:
    generation, transport = pair
    events = started(generation)
    transport.text("Hello")
    assert next(events) == RelayEvent("token", "Hello")
    assert generation.stop("user_stop") == Outcome("stopped", "user_stop")
    transport.finish()  # the provider would have finished: too late
    rest = list(events)
    assert [event.kind for event in rest] == ["done"]
    done = done_of(rest)
    assert (done["status"], done["reason"]) == ("stopped", "user_stop")
    assert done["receipt"]["signal"] == "user_stop"


def test_a_final_event_in_flight_when_the_stop_lands_does_not_undo_the_stop(
    pair: Pair,
) -> None:
    generation, transport = pair
    events = started(generation)
    transport.text("Hello")
    next(events)
    # The rest of the answer is already in flight: the pump parses [DONE] after the stop.
    transport.text(" world")
    transport.finish()
    generation.stop("user_stop")
    done = done_of(list(events))
    assert (done["status"], done["reason"]) == ("stopped", "user_stop")
    assert generation.outcome == Outcome("stopped", "user_stop")
    assert done["receipt"]["tokens_after_stop"] == 1


def test_the_first_outcome_decided_wins_and_stop_is_idempotent(pair: Pair) -> None:
    generation, transport = pair
    events = started(generation)
    transport.text("Hello")
    next(events)
    first = generation.stop("client_disconnect", seen_chars=3)
    stop_at = generation.stop_at
    assert generation.stop("user_stop", seen_chars=1) == first
    assert generation.stop("shutdown", status="interrupted") == first
    assert first == Outcome("stopped", "client_disconnect")
    assert generation.stop_at == stop_at and generation.seen_chars == 3
    # A viewer still attached (a returning one) hears how it ended; one whose client
    # left is not told (tests/relay/test_viewers.py).
    assert done_of(list(events))["reason"] == "client_disconnect"
    assert generation.settled.is_set()
    assert generation.summary()["receipt"]["signal"] == "client_disconnect"


def test_an_error_decided_first_stands_against_a_later_stop(pair: Pair) -> None:
    generation, transport = pair
    events = started(generation)
    transport.fail(ProtocolError("Connection broken"))
    wait_until(lambda: generation.outcome is not None)
    assert generation.stop("user_stop").status == "error"
    kinds = [event.kind for event in events]
    assert kinds == ["error", "done"]
    assert "receipt" not in generation.summary()


def test_shutdown_interrupts_with_a_receipt(pair: Pair) -> None:
    generation, transport = pair
    events = started(generation)
    transport.text("Hello")
    next(events)
    assert generation.stop("shutdown", status="interrupted") == Outcome("interrupted", "shutdown")
    done = done_of(list(events))
    assert (done["status"], done["reason"]) == ("interrupted", "shutdown")
    assert done["receipt"]["signal"] == "shutdown"


def test_closing_the_events_early_is_a_client_disconnect(pair: Pair) -> None:
    generation, transport = pair
    events = started(generation)
    transport.text("Hello")
    next(events)
    events.close()  # what gunicorn does after a failed write
    assert generation.outcome == Outcome("stopped", "client_disconnect")
    assert generation.settled.is_set()
    assert transport.closed_at is not None and transport.shutdown_at is not None


# -- receipts -----------------------------------------------------------------------------


def test_the_receipt_measures_stop_to_close(pair: Pair) -> None:
    generation, transport = pair
    events = started(generation)
    transport.text("Hello")
    next(events)
    generation.stop("user_stop")
    receipt = done_of(list(events))["receipt"]
    assert transport.shutdown_at is not None and transport.closed_at is not None
    assert generation.stop_at is not None and generation.closed_at is not None
    # The socket is shut down inside stop(): that is the moment the receipt measures.
    assert generation.stop_at <= transport.shutdown_at <= generation.closed_at
    assert generation.closed_at <= transport.closed_at  # the pump closes the body after
    expected_ms = round((generation.closed_at - generation.stop_at) * 1000, 3)
    assert receipt == {
        "signal": "user_stop",
        "stop_to_close_ms": expected_ms,
        "tokens_after_stop": 0,
    }
    assert receipt["stop_to_close_ms"] >= 0


def test_provider_text_after_a_stop_is_counted_and_never_sent(pair: Pair) -> None:
    generation, transport = pair
    events = started(generation)
    transport.text("Hello")
    assert next(events) == RelayEvent("token", "Hello")
    # These bytes are already in flight when the stop lands: the pump reads them first.
    transport.text(" late", " later")
    generation.stop("user_stop")
    rest = list(events)
    assert [event.kind for event in rest] == ["done"]
    assert done_of(rest)["receipt"]["tokens_after_stop"] == 2
    assert generation.tokens_after_stop == 2
    assert generation.text() == generation.kept_text() == "Hello"
    assert generation.delivered_tokens == 1


# -- usage --------------------------------------------------------------------------------


def test_complete_without_reported_usage_is_estimated(make_generation: MakeGeneration) -> None:
    messages = [Message("system", "Be brief."), Message("user", "What is a relay?")]
    generation, transport = make_generation(messages=messages)
    events = started(generation)
    transport.text("One", " two")
    next(events)
    transport.text(" three")
    transport.finish()
    usage = done_of(list(events))["usage"]
    prompt = math.ceil(len("Be brief.What is a relay?") / 4)
    assert usage == {
        "prompt_tokens": prompt,
        "completion_tokens": 3,
        "total_tokens": prompt + 3,
        "estimated": True,
    }


def test_a_stopped_answer_counts_delivered_tokens_and_prefers_a_reported_prompt(
    pair: Pair,
) -> None:
    generation, transport = pair
    events = started(generation)
    transport.text("a", "b")
    next(events)
    transport.usage(50, 99)  # the provider's completion count is for text we cut off
    wait_until(lambda: generation.usage is not None)
    generation.stop("user_stop")
    usage = done_of(list(events))["usage"]
    assert usage == {
        "prompt_tokens": 50,
        "completion_tokens": 2,
        "total_tokens": 52,
        "estimated": True,
    }


def test_a_stopped_answer_without_reported_usage_estimates_the_prompt(pair: Pair) -> None:
    generation, transport = pair
    events = started(generation)
    transport.text("a")
    next(events)
    generation.stop("user_stop")
    usage = done_of(list(events))["usage"]
    assert usage["prompt_tokens"] == math.ceil(len("Tell me a story") / 4) == 4
    assert (usage["completion_tokens"], usage["estimated"]) == (1, True)


# -- seen_chars ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seen_chars", "kept"),
    [(None, "Hello world"), (0, ""), (3, "Hel"), (11, "Hello world"), (500, "Hello world")],
)
def test_kept_text_is_what_the_user_saw_never_more_than_generated(
    pair: Pair, seen_chars: int | None, kept: str
) -> None:
    generation, transport = pair
    events = started(generation)
    transport.text("Hello", " world")
    next(events)
    transport.text("!")  # arrives after the stop: never kept
    generation.stop("user_stop", seen_chars=seen_chars)
    list(events)
    assert generation.text() == "Hello world"
    assert generation.kept_text() == kept


# -- a silent provider --------------------------------------------------------------------


def test_keepalives_while_the_provider_is_silent(make_generation: MakeGeneration) -> None:
    generation, transport = make_generation(heartbeat_s=0.002)
    events = started(generation)
    assert [next(events) for _ in range(3)] == [RelayEvent("keepalive")] * 3
    assert generation.heartbeats == 3
    transport.text("finally")
    transport.finish()
    rest = [event for event in events if event.kind != "keepalive"]
    assert rest[0] == RelayEvent("token", "finally")
    assert done_of(rest)["status"] == "complete"


def test_a_provider_stream_that_fails_to_close_still_ends_recorded(
    make_generation: MakeGeneration, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    generation, transport = make_generation(heartbeat_s=0.002)
    reader = read_in_greenlet(generation)
    transport.text("Hello")
    wait_until(lambda: transport.body.reading)

    def close_fails() -> None:
        raise OSError("close failed")

    monkeypatch.setattr(transport.body, "close", close_fails)
    generation.stop("user_stop")
    done = done_of(reader.get(timeout=2))
    assert (done["status"], done["reason"]) == ("stopped", "user_stop")
    assert generation.settled.is_set()
    assert "closing the provider stream" in caplog.text


def test_a_stop_during_silence_acts_at_once(make_generation: MakeGeneration) -> None:
    generation, transport = make_generation(heartbeat_s=0.002)
    reader = read_in_greenlet(generation)
    transport.text("Hello")
    wait_until(lambda: generation.heartbeats >= 2 and transport.body.reading)
    generation.stop("user_stop")
    # The provider hears our FIN inside stop(); the pump's blocked read ends on the next turn,
    # and the connection closes in the turn after (relay/turns.py).
    assert transport.shutdown_at is not None
    gevent.sleep(0)
    assert transport.body.read_cut
    wait_until(lambda: transport.closed_at is not None, timeout=0.5)
    events = reader.get(timeout=1)
    done = done_of(events)
    assert (done["status"], done["reason"]) == ("stopped", "user_stop")
    assert [e.data for e in events if e.kind == "token"] == ["Hello"]


def test_a_stop_before_the_provider_answered_ends_the_connect(
    make_generation: MakeGeneration,
) -> None:
    generation, transport = make_generation(ScriptedTransport(hold=True))
    reader = read_in_greenlet(generation)
    wait_until(lambda: transport.connecting)
    generation.stop("user_stop")
    gevent.sleep(0)
    assert transport.connect_interrupted and not transport.connecting
    done = done_of(reader.get(timeout=1))
    assert (done["status"], done["reason"]) == ("stopped", "user_stop")
    assert done["receipt"]["stop_to_close_ms"] >= 0
    assert done["usage"]["completion_tokens"] == 0


# -- provider errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "provider_bad_request"),
        (401, "provider_auth"),
        (404, "provider_not_found"),
        (429, "provider_rate_limited"),
        (503, "provider_unavailable"),
    ],
)
def test_an_http_error_status_is_an_error_then_done(
    make_generation: MakeGeneration, status: int, error_type: str
) -> None:
    generation, transport = make_generation(ScriptedTransport(status))
    transport.chunk(b'{"error": {"message": "slow down"}}')
    transport.end()
    events = list(generation.events())
    assert [event.kind for event in events] == ["meta", "error", "done"]
    assert events[1].data == {
        "type": error_type,
        "message": f"provider returned HTTP {status}: slow down",
    }
    done = done_of(events)
    assert (done["status"], done["reason"]) == ("error", "upstream_error")
    assert "receipt" not in done and done["usage"]["estimated"] is True
    assert transport.body.released  # the error body was read whole: the connection is free


@pytest.mark.parametrize(
    ("error", "error_type", "reason"),
    [
        (requests.ConnectionError("refused"), "provider_unreachable", "upstream_error"),
        (requests.ConnectTimeout("slow"), "provider_timeout", "timeout"),
    ],
)
def test_a_failed_connect_is_an_error_then_done(
    make_generation: MakeGeneration, error: Exception, error_type: str, reason: str
) -> None:
    generation, _ = make_generation(ScriptedTransport(error=error))
    events = list(generation.events())
    assert [event.kind for event in events] == ["meta", "error", "done"]
    assert events[1].data["type"] == error_type
    assert (done_of(events)["status"], done_of(events)["reason"]) == ("error", reason)


@pytest.mark.parametrize(
    ("failure", "error_type", "reason"),
    [
        (
            ReadTimeoutError(None, "http://provider.test", "Read timed out."),  # type: ignore[arg-type]
            "provider_timeout",
            "timeout",
        ),
        (ProtocolError("Connection broken"), "provider_disconnected", "upstream_error"),
        (b"data: {not json\n\n", "provider_stream_error", "upstream_error"),
        (
            b'data: {"error": {"message": "overloaded"}}\n\n',
            "provider_stream_error",
            "upstream_error",
        ),
        (None, "provider_disconnected", "upstream_error"),  # the body ends before [DONE]
        (RuntimeError("a bug"), "internal_error", "internal"),
    ],
)
def test_a_failure_mid_stream_keeps_the_text_then_error_then_done(
    pair: Pair, failure: object, error_type: str, reason: str
) -> None:
    generation, transport = pair
    events = started(generation)
    transport.text("partial")
    assert next(events) == RelayEvent("token", "partial")
    if failure is None:
        transport.end()
    elif isinstance(failure, bytes):
        transport.chunk(failure)
    else:
        assert isinstance(failure, BaseException)
        transport.fail(failure)
    rest = list(events)
    assert [event.kind for event in rest] == ["error", "done"]
    assert rest[0].data["type"] == error_type
    assert (done_of(rest)["status"], done_of(rest)["reason"]) == ("error", reason)
    assert generation.kept_text() == "partial"
    # A body cut short is closed; one that ended is only given back to the pool.
    assert transport.closed_at is not None or failure is None
    assert transport.body.released


def test_a_stop_before_the_pump_first_ran_still_ends_and_records_it(pair: Pair) -> None:
    """`events()` started the pump, which has not run yet: a kill now would cancel it
    outright (its `finally` too), so the stop leaves it to see the outcome first thing."""
    generation, transport = pair
    events = started(generation)
    generation.stop("user_stop")  # no switch since the pump was started
    with gevent.Timeout(3, AssertionError("never settled")):
        rest = list(events)
    assert done_of(rest)["status"] == "stopped" and generation.settled.is_set()
    assert transport.requests == []  # the provider was never asked


def test_a_stop_while_the_pump_waits_its_turn_never_asks_the_provider(pair: Pair) -> None:
    """The pump waits for the loop's turn before it asks (relay/turns.py); a stop then
    is not a kill: let go, the pump sees the outcome, and the provider is never asked."""
    generation, transport = pair
    events = started(generation)
    gevent.sleep(0)  # the pump runs, and waits for the end of the loop's turn
    generation.stop("user_stop")
    with gevent.Timeout(3, AssertionError("never settled")):
        rest = list(events)
    assert done_of(rest)["status"] == "stopped" and generation.settled.is_set()
    assert transport.requests == []


def test_a_stop_in_the_turn_that_lets_the_pump_go_does_not_cut_its_record(pair: Pair) -> None:
    """A stop from a socket's watcher (a departure, a cancel) runs in the loop turn that
    then lets the waiting pump go. Were the pump killed, the kill would land once it is
    let go, in its record of the end, whenever the store makes that wait."""
    generation, transport = pair
    recorded: list[str] = []

    def save(ended: Generation) -> bool:
        gevent.sleep(0.01)  # a store that waits: PostgreSQL, or SQLite's thread
        recorded.append(ended.summary()["status"])
        return True

    generation.on_end = save
    events = started(generation)
    gevent.sleep(0)  # the pump waits for the end of the loop's turn
    ours, theirs = socket.socketpair()
    theirs.send(b"x")
    watcher = get_hub().loop.io(ours.fileno(), 1)

    def stop_now() -> None:
        watcher.stop()
        generation.stop("user_stop")

    watcher.start(stop_now)
    try:
        with gevent.Timeout(3, AssertionError("never settled")):
            rest = list(events)
    finally:
        watcher.close()
        ours.close()
        theirs.close()
    assert done_of(rest)["status"] == "stopped"
    assert recorded == ["stopped"] and transport.requests == []
