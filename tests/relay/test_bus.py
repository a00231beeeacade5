"""`StopBus` in one process, against a real redis-server of the tests' own.

This process is not monkey-patched, so redis-py blocks it: each test drives one side of
the protocol at a time (record and publish, serve a message, re-read records, the check
before a provider call), and a real thread plays the other host where both must run at
once. The listener greenlet and its reconnects run in real gunicorn workers
(tests/server/test_many_hosts.py).
"""

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import redis
from transport import MakeGeneration

from flask_stopwire.relay import bus as bus_module
from flask_stopwire.relay.bus import StopBus, StopBusDown
from flask_stopwire.relay.generation import RelayEvent
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = {"generation_id": "gen_1", "status": "stopped", "reason": "user_stop"}


class Worker:
    """A worker's registry as the bus sees it: alice's gen_1 streams here."""

    def __init__(self, live: dict[str, str] | None = None) -> None:
        self.live = {"gen_1": "alice"} if live is None else live
        self.calls: list[tuple[str, str, int | None]] = []

    def stop_local(self, user_id: str, generation_id: str, seen: int | None) -> Any:
        self.calls.append((user_id, generation_id, seen))
        return SUMMARY if self.holds(user_id, generation_id) else None

    def holds(self, user_id: str, generation_id: str) -> bool:
        return self.live.get(generation_id) == user_id

    def live_ids(self) -> list[str]:
        return list(self.live)

    def bus(self, url: str, namespace: str) -> StopBus:
        return StopBus(url, self.stop_local, self.holds, self.live_ids, namespace)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """One redis-server of our own for this module."""
    process = RedisServer()
    yield process
    process.stop()


@pytest.fixture
def plain(server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client, to look at what the bus wrote."""
    client = redis.Redis.from_url(server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """Keys and channel of this test only."""
    return f"t{os.getpid()}-{request.node.name}"


def test_a_stop_nobody_listens_for_is_recorded_and_reported_as_bus_down(
    server: RedisServer, plain: redis.Redis, namespace: str
) -> None:
    asker = Worker(live={}).bus(server.url, namespace)
    with pytest.raises(StopBusDown, match="no worker listens"):
        asker.stop_remote("alice", "gen_1", 12)
    key = asker.stop_key("gen_1")
    assert plain.hgetall(key) == {"alice": "12"}
    assert 0 < plain.ttl(key) <= bus_module.STOP_TTL_S
    with pytest.raises(StopBusDown):  # a retry keeps the first record (HSETNX)
        asker.stop_remote("alice", "gen_1", 40)
    with pytest.raises(StopBusDown):  # a stranger's stop neither acts nor blocks the owner's
        asker.stop_remote("mallory", "gen_1", None)
    assert plain.hgetall(key) == {"alice": "12", "mallory": ""}
    asker.close()


def test_an_unreachable_redis_is_bus_down_at_once() -> None:
    asker = Worker(live={}).bus(f"redis://127.0.0.1:{free_port()}/0", "nowhere")
    started = time.monotonic()
    with pytest.raises(StopBusDown, match="Redis could not be asked"):
        asker.stop_remote("alice", "gen_1", None)
    assert time.monotonic() - started < 1.0
    asker.close()


def test_the_holder_acks_then_answers_with_the_summary(
    server: RedisServer, plain: redis.Redis, namespace: str
) -> None:
    holder = Worker()
    bus = holder.bus(server.url, namespace)
    reply = f"{namespace}:reply:abc"
    bus.serve(json.dumps({"id": "gen_1", "user_id": "alice", "seen_chars": 7, "reply": reply}))
    bus._tasks.join(timeout=2)  # the ack greenlet runs once the stop waits (here: after it)
    answers = [json.loads(a) for a in plain.lrange(reply, 0, -1)]
    assert sorted(answers, key=json.dumps) == [{"ack": True}, {"summary": SUMMARY}]
    assert holder.calls == [("alice", "gen_1", 7)]
    assert 0 < plain.ttl(reply) <= bus_module.REPLY_TTL_S
    bus.close()


@pytest.mark.parametrize(
    "message",
    [
        {"id": "gen_1", "user_id": "mallory", "seen_chars": None},  # someone else's
        {"id": "gen_9", "user_id": "alice", "seen_chars": None},  # not held here
    ],
)
def test_a_worker_that_does_not_hold_it_stays_silent(
    server: RedisServer, plain: redis.Redis, namespace: str, message: dict
) -> None:
    holder = Worker()
    bus = holder.bus(server.url, namespace)
    reply = f"{namespace}:reply:abc"
    bus.serve(json.dumps({**message, "reply": reply}))
    bus._tasks.join(timeout=2)
    assert plain.llen(reply) == 0
    assert holder.live == {"gen_1": "alice"} and len(holder.calls) == 1
    bus.close()


def test_malformed_messages_and_foreign_reply_keys_are_ignored(
    server: RedisServer, plain: redis.Redis, namespace: str
) -> None:
    holder = Worker()
    bus = holder.bus(server.url, namespace)
    bus.serve("not json")
    bus.serve(json.dumps({"id": "gen_1"}))
    bus.serve(json.dumps({"id": "gen_1", "user_id": "alice", "reply": "session:admin"}))
    bus._tasks.join(timeout=2)
    assert holder.calls == [] and not plain.exists("session:admin")
    bus.close()


def test_a_stop_reaches_the_holder_on_another_host_and_returns_its_summary(
    server: RedisServer, namespace: str
) -> None:
    ready, served = threading.Event(), []

    def other_host() -> None:  # its own bus, subscribed like a listener; serves one stop
        holder = Worker()
        bus = holder.bus(server.url, namespace)
        pubsub = redis.Redis.from_url(server.url, decode_responses=True).pubsub()
        pubsub.subscribe(bus.channel)
        ready.set()
        for message in pubsub.listen():
            if message["type"] == "message":
                bus.serve(message["data"])
                bus._tasks.join(timeout=2)
                served.extend(holder.calls)
                break
        pubsub.close()
        bus.close()

    thread = threading.Thread(target=other_host, daemon=True)
    thread.start()
    assert ready.wait(5)
    time.sleep(0.05)  # its SUBSCRIBE reached Redis (PUBLISH counts it)
    asker = Worker(live={}).bus(server.url, namespace)
    assert asker.stop_remote("alice", "gen_1", 3) == SUMMARY
    thread.join(5)
    assert served == [("alice", "gen_1", 3)]
    asker.close()


def test_nobody_acking_is_nobody_holding_it(
    server: RedisServer, plain: redis.Redis, namespace: str
) -> None:
    pubsub = plain.pubsub()
    pubsub.subscribe(f"{namespace}:stops")  # a listener that never answers
    time.sleep(0.05)
    asker = Worker(live={}).bus(server.url, namespace)
    started = time.monotonic()
    assert asker.stop_remote("alice", "gen_1", None) is None
    assert bus_module.ACK_TIMEOUT_S <= time.monotonic() - started < bus_module.ACK_TIMEOUT_S + 1
    pubsub.close()
    asker.close()


def test_an_ack_then_silence_gives_up_after_the_summary_timeout(
    server: RedisServer, plain: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bus_module, "SUMMARY_TIMEOUT_S", 0.3)
    asker = Worker(live={}).bus(server.url, namespace)
    reply = f"{namespace}:reply:x"
    plain.rpush(reply, json.dumps({"ack": True}))
    _, waits = asker._redis()
    started = time.monotonic()
    assert asker._await_summary(waits, reply) is None
    assert 0.25 < time.monotonic() - started < 1.5
    plain.rpush(reply, json.dumps({"ack": True}), json.dumps({"summary": SUMMARY}))
    assert asker._await_summary(waits, reply) == SUMMARY
    asker.close()


def test_after_subscribing_the_recorded_stops_of_live_generations_apply(
    server: RedisServer, plain: redis.Redis, namespace: str
) -> None:
    holder = Worker(live={"gen_1": "alice", "gen_2": "bob", "gen_3": "carol"})
    bus = holder.bus(server.url, namespace)
    plain.hset(bus.stop_key("gen_1"), mapping={"alice": "5", "mallory": ""})
    plain.hset(bus.stop_key("gen_9"), "dave", "")  # not held here
    assert bus.reapply() == 1
    bus._tasks.join(timeout=2)
    assert holder.calls == [("alice", "gen_1", 5)]
    bus.close()


def test_a_stop_recorded_before_the_generation_started_stops_it_before_the_provider_call(
    server: RedisServer, plain: redis.Redis, namespace: str, make_generation: MakeGeneration
) -> None:
    generation, transport = make_generation(user_id="alice")
    bus = Worker(live={}).bus(server.url, namespace)
    bus.subscribed = True  # as when its listener is on the channel
    generation.before_call = bus.check
    plain.hset(bus.stop_key(generation.id), mapping={"mallory": "", "alice": "0"})
    events = gevent.spawn(list, generation.events()).get(timeout=2)
    assert transport.requests == []  # the provider was never asked
    assert events[-1] == RelayEvent("done", generation.summary())
    assert (generation.outcome.status, generation.outcome.reason) == ("stopped", "user_stop")
    assert generation.seen_chars == 0
    bus.close()


def test_without_a_record_or_while_unsubscribed_the_generation_runs(
    server: RedisServer, plain: redis.Redis, namespace: str, make_generation: MakeGeneration
) -> None:
    generation, transport = make_generation(user_id="alice")
    bus = Worker(live={}).bus(server.url, namespace)
    bus.subscribed = True
    generation.before_call = bus.check
    plain.hset(bus.stop_key(generation.id), "mallory", "")  # only a stranger's
    transport.text("Hi")
    transport.finish()
    assert [e.kind for e in generation.events()][-1] == "done"
    assert generation.outcome.status == "complete" and len(transport.requests) == 1

    # Unsubscribed, the listener re-reads records when it is back: no Redis call here,
    # so a dead Redis costs a new answer nothing.
    generation, transport = make_generation(user_id="alice")
    down = Worker(live={}).bus(f"redis://127.0.0.1:{free_port()}/0", namespace)
    generation.before_call = down.check
    transport.finish()
    started = time.monotonic()
    assert [e.kind for e in generation.events()][-1] == "done"
    assert time.monotonic() - started < 0.5 and generation.outcome.status == "complete"
    bus.close()


@pytest.mark.parametrize("redis_url", ["", "redis://127.0.0.1:9/0"])
def test_redis_is_imported_only_when_a_url_is_set(tmp_path: Path, redis_url: str) -> None:
    script = """
import gevent.monkey; gevent.monkey.patch_all()
import sys
from app import create_app
app = create_app()
app.config.update(TESTING=True)
client = app.test_client()
stop = client.post("/api/generations/gen_x/stop", json={}, headers={"Authorization": "Bearer k"})
print(stop.status_code, "redis" in sys.modules)
"""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STOPWIRE_")},
        "STOPWIRE_PROVIDER_URL": "http://127.0.0.1:9/v1",
        "STOPWIRE_DATABASE": str(tmp_path / "db.sqlite3"),
        "STOPWIRE_RUN_DIR": str(tmp_path / "run"),
        "STOPWIRE_CLIENT_KEYS": "t:k",
        "STOPWIRE_REDIS_URL": redis_url,
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    # Without Redis an unknown id is a 404; with an unreachable one it cannot be known: 503.
    assert out.stdout.split() == (["404", "False"] if not redis_url else ["503", "True"])
