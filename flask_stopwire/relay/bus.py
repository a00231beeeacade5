"""Stops that cross hosts, through Redis (`STOPWIRE_REDIS_URL`): the stop bus.

A stop that neither this worker nor its siblings hold is **recorded** and **published**
in one transaction::

    HSETNX stopwire:stop:<id> <user_id> <seen_chars or "">     (EXPIRE STOP_TTL_S)
    PUBLISH stopwire:stops {"id", "user_id", "seen_chars", "reply"}

Each worker of each host runs one listener greenlet on that channel. The worker holding
the generation live for that user stops it, pushes an ack to the `reply` list at once and
the final summary once the stop is saved; a worker that remembers the generation's end
pushes that summary. The asker BLPOPs the list: no ack within ACK_TIMEOUT_S means no
worker holds it, and the caller falls back to the store.

A message published while a listener is not subscribed (Redis restarting, a dropped
connection) reaches no one, so the record is what counts: after every (re)subscription
the listener re-reads the records of the generations its worker holds, and every
generation reads its own right before its provider call starts. The hash is keyed by
user, so a stranger's stop for an id can neither act nor block the owner's record.

Redis is imported only when a bus is used, so after gevent patched the worker. Errors:

    StopBusDown    Redis could not be asked: whether another host holds the answer is
                   unknown (the API answers 503). Never raised on the token path.
"""

import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent.pool import Group

if TYPE_CHECKING:
    from redis import Redis

    from flask_stopwire.relay.generation import Generation

log = logging.getLogger(__name__)

NAMESPACE = "stopwire"
STOP_TTL_S = 600  # outlives any reconnect; a generation id is never reused
REPLY_TTL_S = 30
ACK_TIMEOUT_S = 0.5  # the holder acks in milliseconds, even under load
SUMMARY_TIMEOUT_S = 5.0  # the holder waits up to 3 s for the stop to be saved
COMMAND_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 1.0
HEALTH_S = 1.0  # the listener pings when silent this long; three silences and it reconnects
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0
_PING = "stopwire-listener"

StopLocal = Callable[[str, str, int | None], dict[str, Any] | None]
Holds = Callable[[str, str], bool]
LiveIds = Callable[[], list[str]]


class StopBusDown(Exception):
    """Redis could not be asked, so whether another host holds the generation is unknown."""


class _Stale(Exception):
    """The subscription answered nothing, not even a ping, for too long."""


class StopBus:
    """One worker's side of the stop bus: asking other hosts, and listening for them."""

    def __init__(
        self,
        url: str,
        stop_local: StopLocal,
        holds: Holds,
        live_ids: LiveIds,
        namespace: str = NAMESPACE,
    ):
        self.url = url
        self.namespace = namespace
        self.channel = f"{namespace}:stops"
        self.subscribed = False  # the listener is on the channel right now
        self.subscriptions = 0  # how often it (re)subscribed in this process
        self._stop_local = stop_local
        self._holds = holds
        self._live_ids = live_ids
        self._clients: tuple[Redis, Redis] | None = None
        self._clients_pid: int | None = None
        self._pid: int | None = None
        self._listener: gevent.Greenlet | None = None
        self._tasks = Group()
        self._backoff = BACKOFF_FIRST_S

    def stop_key(self, generation_id: str) -> str:
        """Where stops of `generation_id` are recorded, one field per user."""
        return f"{self.namespace}:stop:{generation_id}"

    # -- per-worker lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start this worker's listener greenlet (once per process)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._tasks = Group()
        self._listener = gevent.spawn(self._listen)

    def close(self) -> None:
        """Stop listening and close this worker's Redis connections."""
        if self._pid == os.getpid() and self._listener is not None:
            self._listener.kill()
            self._tasks.kill()
        if self._clients is not None and self._clients_pid == os.getpid():
            for client in self._clients:
                client.close()
        self._clients, self._clients_pid, self._listener, self._pid = None, None, None, None
        self.subscribed = False

    # -- asking ------------------------------------------------------------------------

    def stop_remote(
        self, user_id: str, generation_id: str, seen_chars: int | None
    ) -> dict[str, Any] | None:
        """Record and publish a stop; the holder's final summary, or None if nobody holds it.

        StopBusDown when Redis cannot be asked, or no worker anywhere listens.
        """
        from redis.exceptions import RedisError

        commands, waits = self._redis()
        reply = f"{self.namespace}:reply:{secrets.token_urlsafe(12)}"
        request = {"id": generation_id, "user_id": user_id, "seen_chars": seen_chars}
        key = self.stop_key(generation_id)
        try:
            pipe = commands.pipeline(transaction=True)
            pipe.hsetnx(key, user_id, "" if seen_chars is None else str(seen_chars))
            pipe.expire(key, STOP_TTL_S)
            pipe.publish(self.channel, json.dumps({**request, "reply": reply}))
            listeners = pipe.execute()[-1]
            if not listeners:
                # Every subscription is down (a Redis restart): the record waits for them.
                raise StopBusDown("no worker listens on the stop bus right now")
            return self._await_summary(waits, reply)
        except RedisError as exc:
            raise StopBusDown(f"Redis could not be asked: {exc}") from exc

    def _await_summary(self, waits: "Redis", reply: str) -> dict[str, Any] | None:
        popped = waits.blpop([reply], timeout=ACK_TIMEOUT_S)
        deadline = time.monotonic() + SUMMARY_TIMEOUT_S
        while popped is not None:
            answer = json.loads(popped[1])
            if "summary" in answer:
                return answer["summary"]
            left = deadline - time.monotonic()  # an ack: the holder is stopping it
            if left < 0.01:  # and BLPOP's 0 would mean forever
                return None
            popped = waits.blpop([reply], timeout=left)
        return None

    # -- a generation about to call its provider ----------------------------------------

    def check(self, generation: "Generation") -> None:
        """Apply a stop recorded for `generation` before it started; it calls its provider next.

        Skipped while the listener is not subscribed: it re-reads the record of every
        live generation (this one is registered by now) once it is back. A stream never
        breaks because Redis did, so failures here are only logged.
        """
        if not self.subscribed:
            return
        commands, _ = self._redis()
        try:
            seen = commands.hget(self.stop_key(generation.id), generation.user_id)
        except Exception as exc:
            log.warning("stop bus: could not read the stop record of %s: %r", generation.id, exc)
            return
        if seen is not None:
            generation.stop("user_stop", seen_chars=_seen_chars(seen))

    # -- listening ----------------------------------------------------------------------

    def _listen(self) -> None:
        """Subscribe, serve, and after any failure subscribe again with backoff; forever."""
        while True:
            try:
                self._subscribe_and_serve()
            except Exception as exc:
                log.warning("stop bus: subscription lost (%r); again in %.2f s", exc, self._backoff)
            finally:
                self.subscribed = False
            gevent.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)

    def _subscribe_and_serve(self) -> None:
        commands, _ = self._redis()
        pubsub = commands.pubsub()
        try:
            pubsub.subscribe(self.channel)
            heard = pinged = time.monotonic()
            while True:
                message = pubsub.get_message(timeout=HEALTH_S)
                now = time.monotonic()
                if message is None:
                    if now - heard > 3 * HEALTH_S:
                        raise _Stale(f"nothing from Redis for {now - heard:.1f} s")
                    if now - heard >= HEALTH_S and now - pinged >= HEALTH_S:
                        pubsub.ping(_PING)
                        pinged = now
                    continue
                heard = now
                if message["type"] == "subscribe":
                    # Also after redis-py reconnected on its own: re-read either way.
                    self._on_subscribed()
                elif message["type"] == "message":
                    self._tasks.spawn(self.serve, message["data"])
        finally:
            pubsub.close()

    def _on_subscribed(self) -> None:
        self.subscribed = True  # before reading the live ids: see `check`
        self.subscriptions += 1
        self._backoff = BACKOFF_FIRST_S
        applied = self.reapply()
        if self.subscriptions > 1 or applied:
            log.warning("stop bus: subscribed again; %d recorded stops applied", applied)

    def reapply(self) -> int:
        """Apply the recorded stops of the generations this worker holds; how many."""
        ids = self._live_ids()
        if not ids:
            return 0
        commands, _ = self._redis()
        pipe = commands.pipeline(transaction=False)
        for generation_id in ids:
            pipe.hgetall(self.stop_key(generation_id))
        applied = 0
        for generation_id, stops in zip(ids, pipe.execute(), strict=True):
            for user_id, seen in stops.items():
                if self._holds(user_id, generation_id):
                    self._tasks.spawn(self._stop_local, user_id, generation_id, _seen_chars(seen))
                    applied += 1
        return applied

    def serve(self, data: str) -> None:
        """Answer one published stop: stop it if this worker holds it, and reply."""
        try:
            request = json.loads(data)
            generation_id, user_id = str(request["id"]), str(request["user_id"])
            reply = str(request["reply"])
            seen = request.get("seen_chars")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("stop bus: a malformed stop message: %r", exc)
            return
        if not reply.startswith(f"{self.namespace}:reply:"):
            return  # never write where a message says, only to our own reply lists
        seen = seen if isinstance(seen, int) and not isinstance(seen, bool) else None
        live = self._holds(user_id, generation_id)
        if live:
            # Runs once the stop below waits for the save: the provider is closed first.
            self._tasks.spawn(self._push, reply, {"ack": True})
        summary = self._stop_local(user_id, generation_id, seen)
        if summary is not None or live:
            self._push(reply, {"summary": summary})

    def _push(self, reply: str, answer: dict[str, Any]) -> None:
        commands, _ = self._redis()
        try:
            pipe = commands.pipeline(transaction=False)
            pipe.rpush(reply, json.dumps(answer))
            pipe.expire(reply, REPLY_TTL_S)
            pipe.execute()
        except Exception as exc:  # the asker times out and falls back to the store
            log.warning("stop bus: could not answer a stop: %r", exc)

    def _redis(self) -> "tuple[Redis, Redis]":
        """This process's clients: one for commands, one for waiting on replies."""
        if self._clients is None or self._clients_pid != os.getpid():
            waits = _client(self.url, SUMMARY_TIMEOUT_S + COMMAND_TIMEOUT_S)
            self._clients = (_client(self.url, COMMAND_TIMEOUT_S), waits)
            self._clients_pid = os.getpid()
        return self._clients


def _client(url: str, socket_timeout: float) -> "Redis":
    """A client that fails fast: one immediate retry, a short connect timeout."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=socket_timeout,  # the waiting client's outlasts its BLPOPs
        socket_keepalive=True,
        health_check_interval=HEALTH_S,
        retry=Retry(NoBackoff(), 1),
    )


def _seen_chars(value: str) -> int | None:
    return int(value) if value.isdigit() else None
