"""`Registry`: stop by id (the owner's only), remembered outcomes, interrupt_all."""

import gevent
from transport import MakeGeneration, ScriptedTransport, wait_until

from flask_stopwire.relay.generation import Generation, RelayEvent
from flask_stopwire.relay.registry import Registry


def serve(registry: Registry, generation: Generation) -> gevent.Greenlet:
    """Stream a generation the way StopwireState.run does; `.get()` returns its events."""
    registry.add(generation)

    def run() -> list[RelayEvent]:
        try:
            return list(generation.events())
        finally:
            registry.finish(generation)

    return gevent.spawn(run)


def streaming(
    make_generation: MakeGeneration, registry: Registry, user_id: str = "alice"
) -> tuple[Generation, ScriptedTransport, gevent.Greenlet]:
    """A live generation of `user_id` that has sent "Hello" and is waiting for more."""
    generation, transport = make_generation(user_id=user_id)
    client = serve(registry, generation)
    transport.text("Hello")
    wait_until(lambda: generation.text() == "Hello" and transport.body.reading)
    return generation, transport, client


def test_a_stop_for_an_unknown_id_is_none() -> None:
    assert Registry().stop("alice", "gen_unknown") is None


def test_a_stop_of_a_live_generation_waits_for_its_final_summary(
    make_generation: MakeGeneration,
) -> None:
    registry = Registry()
    generation, transport, client = streaming(make_generation, registry)
    assert registry.live_count() == 1
    summary = registry.stop("alice", generation.id, seen_chars=2)
    assert generation.settled.is_set()  # recorded before the stop is answered
    assert (summary["status"], summary["reason"]) == ("stopped", "user_stop")
    assert summary["receipt"]["signal"] == "user_stop"
    assert generation.kept_text() == "He"
    assert transport.closed_at is not None
    assert client.get(timeout=1)[-1] == RelayEvent("done", summary)
    assert registry.live_count() == 0


def test_someone_elses_generation_is_as_good_as_unknown(make_generation: MakeGeneration) -> None:
    registry = Registry()
    generation, transport, client = streaming(make_generation, registry, user_id="alice")
    assert registry.stop("mallory", generation.id) is None
    assert generation.outcome is None and transport.shutdown_at is None  # still streaming
    transport.finish()
    client.get(timeout=1)
    assert registry.stop("mallory", generation.id) is None  # nor once it ended
    assert registry.stop("alice", generation.id)["status"] == "complete"


def test_ended_generations_are_remembered_so_stops_are_idempotent(
    make_generation: MakeGeneration,
) -> None:
    registry = Registry()
    generation, _, client = streaming(make_generation, registry)
    first = registry.stop("alice", generation.id, seen_chars=1)
    client.get(timeout=1)
    assert registry.live_count() == 0
    assert registry.stop("alice", generation.id, seen_chars=5) == first
    assert registry.stop("alice", generation.id) == first
    assert generation.kept_text() == "H"  # the first stop's seen_chars stands


def test_a_stop_after_completion_reports_complete(make_generation: MakeGeneration) -> None:
    registry = Registry()
    generation, transport = make_generation(user_id="alice")
    transport.text("Hi")
    transport.finish()
    serve(registry, generation).get(timeout=1)
    summary = registry.stop("alice", generation.id, seen_chars=0)
    assert (summary["status"], summary["reason"]) == ("complete", None)
    assert "receipt" not in summary


def test_only_the_latest_outcomes_are_remembered(make_generation: MakeGeneration) -> None:
    registry = Registry(remember=2)
    ids = []
    for _ in range(3):
        generation, transport = make_generation(user_id="alice")
        transport.finish()
        serve(registry, generation).get(timeout=1)
        ids.append(generation.id)
    assert registry.stop("alice", ids[0]) is None
    assert registry.stop("alice", ids[1])["status"] == "complete"
    assert registry.stop("alice", ids[2])["status"] == "complete"


def test_interrupt_all_closes_every_live_generation(make_generation: MakeGeneration) -> None:
    registry = Registry()
    live = [streaming(make_generation, registry, user_id) for user_id in ("alice", "bob")]
    assert registry.interrupt_all() == 2
    for generation, transport, client in live:
        assert generation.settled.is_set()
        assert transport.closed_at is not None and transport.body.read_cut
        done = client.get(timeout=1)[-1].data
        assert (done["status"], done["reason"]) == ("interrupted", "shutdown")
        assert done["receipt"]["signal"] == "shutdown"
    assert registry.live_count() == 0
    assert registry.interrupt_all() == 0


def test_a_generation_added_once_the_worker_shuts_down_is_interrupted_at_once(
    make_generation: MakeGeneration,
) -> None:
    """A request on its way when the others were interrupted (waiting its turn, say)."""
    registry = Registry()
    assert registry.interrupt_all() == 0
    generation, transport = make_generation()
    events = serve(registry, generation).get(timeout=2)
    done = events[-1].data
    assert (done["status"], done["reason"]) == ("interrupted", "shutdown")
    assert transport.requests == []  # the provider was never asked
    assert registry.live_count() == 0
