"""A live answer in a Redis Stream, for a viewer that comes back on another host.

An answer asked to survive blips (`resume_grace_s`) runs on its host when its last viewer
leaves. From that moment, with Redis configured (`STOPWIRE_REDIS_URL`), its host mirrors
it, from a greenlet of its own (`Mirror.start`; the token path never waits on Redis)::

    XADD stopwire:answer:<id> MAXLEN ~ 100000 * at <chars> text <piece>   (EXPIRE 10 min)
    XADD stopwire:answer:<id> * done <summary JSON>                        (EXPIRE 1 min)

The first entry holds all the text so far, so the stream always starts at character 0.
A viewer that returns to a host where no worker holds the answer reads the stream
(`Mirror.follow`): the text after its `Last-Event-ID`, the live tail, then `done`. While
it reads, it holds a lease, ``SET stopwire:viewing:<id> PX``, which the running host
checks when the grace runs out (`Mirror.viewed_elsewhere`): a viewer elsewhere keeps the
answer running, and once it has left a new grace starts. Stops reach the running host
through the stop bus, as always.

Best effort: when Redis fails, a mirror stops (logged; its stream is dropped if Redis
still answers) and a follower ends without `done`, so its client comes back and is told to
retry (503), as without a mirror. A follower also ends when its stream is gone (expired,
dropped) or has a gap (trimmed). Redis is imported only when a mirror is used.
"""

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import gevent

from flask_stopwire.relay import disconnect
from flask_stopwire.relay.bus import COMMAND_TIMEOUT_S, NAMESPACE, _client
from flask_stopwire.relay.generation import Generation, RelayEvent

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)

MAX_ENTRIES = 100_000  # pieces per answer; approximate trimming never cuts a live answer
ANSWER_TTL_S = 600  # renewed by every piece
ENDED_TTL_S = 60  # a returning viewer reads the end from the store after this
FOLLOW_BLOCK_MS = 500  # a follower's read waits this long, then renews its lease
GONE_CHECK_S = 5.0  # a follower hearing nothing this long checks that its stream is still there
LEASE_MS = 3 * FOLLOW_BLOCK_MS
SETTLE_S = 5.0  # the running host records an end within about 3 s


class Mirror:
    """One worker's side: mirroring its unviewed answers, and following others' answers."""

    def __init__(self, url: str, namespace: str = NAMESPACE):
        self.url = url
        self.namespace = namespace
        self._client: Redis | None = None
        self._client_pid: int | None = None

    def answer_key(self, generation_id: str) -> str:
        return f"{self.namespace}:answer:{generation_id}"

    def lease_key(self, generation_id: str) -> str:
        return f"{self.namespace}:viewing:{generation_id}"

    # -- the host running the answer ---------------------------------------------------

    def start(self, generation: Generation) -> None:
        """Mirror `generation` from now to its end, from a greenlet of its own."""
        gevent.spawn(self._write, generation)

    def viewed_elsewhere(self, generation: Generation) -> bool:
        """A viewer on another host reads it now (False when Redis cannot say)."""
        try:
            return bool(self._redis().exists(self.lease_key(generation.id)))
        except Exception as exc:
            log.warning("mirror: could not read the lease of %s: %r", generation.id, exc)
            return False

    def _write(self, generation: Generation) -> None:
        key = self.answer_key(generation.id)
        try:
            for at, piece in generation.observe():
                self._add(key, {"at": at, "text": piece}, ANSWER_TTL_S)
            generation.wait_settled(SETTLE_S)
            self._add(key, {"done": json.dumps(generation.summary())}, ENDED_TTL_S)
        except Exception as exc:
            log.warning("mirror: stopped mirroring %s: %r", generation.id, exc)
            _quietly(lambda: self._redis().delete(key))  # its followers end, and come back

    def _add(self, key: str, fields: dict[str, Any], ttl_s: int) -> None:
        pipe = self._redis().pipeline(transaction=False)
        pipe.xadd(key, fields, maxlen=MAX_ENTRIES, approximate=True)
        pipe.expire(key, ttl_s)
        pipe.execute()

    # -- a host where a viewer returned ------------------------------------------------

    def follow(
        self,
        generation_id: str,
        after: int | None,
        meta: dict[str, Any],
        heartbeat_s: float,
        client_sock: Any,
    ) -> Iterator[RelayEvent] | None:
        """The mirrored answer's events after character `after` (all, with `meta`,
        without it); None when it is not mirrored (or Redis cannot say)."""
        key = self.answer_key(generation_id)
        try:
            if not self._redis().exists(key):
                return None
        except Exception as exc:
            log.warning("mirror: could not look for %s: %r", generation_id, exc)
            return None
        return self._follow(key, generation_id, after, meta, heartbeat_s, client_sock)

    def _follow(
        self,
        key: str,
        generation_id: str,
        after: int | None,
        meta: dict[str, Any],
        heartbeat_s: float,
        client_sock: Any,
    ) -> Iterator[RelayEvent]:
        left: list[bool] = []
        watcher = None
        if client_sock is not None:
            watcher = disconnect.watch(client_sock, lambda: left.append(True), 2 * heartbeat_s)
        lease = self.lease_key(generation_id)
        redis = self._redis()
        sent, last_id = after or 0, "0-0"
        last_sent = last_heard = time.monotonic()
        try:
            if after is None:
                yield RelayEvent("meta", meta, 0)
            while not left:
                try:
                    redis.set(lease, "1", px=LEASE_MS)
                    read = redis.xread({key: last_id}, count=1000, block=FOLLOW_BLOCK_MS)
                    gone = not read and time.monotonic() - last_heard > GONE_CHECK_S
                    if gone and not redis.exists(key):
                        return  # expired or dropped: its client comes back to the store
                except Exception as exc:
                    log.warning("mirror: stopped following %s: %r", generation_id, exc)
                    return
                for entry_id, fields in read[0][1] if read else []:
                    last_id, last_heard = entry_id, time.monotonic()
                    if "done" in fields:
                        yield RelayEvent("done", json.loads(fields["done"]), sent)
                        return
                    piece, sent = _unsent(fields, sent)
                    if piece is None:
                        log.warning("mirror: %s was trimmed past character %d", key, sent)
                        return
                    if piece:
                        last_sent = time.monotonic()
                        yield RelayEvent("token", piece, sent)
                if time.monotonic() - last_sent >= heartbeat_s:
                    last_sent = time.monotonic()
                    yield RelayEvent("keepalive", None, sent)
        finally:
            if watcher is not None:
                watcher.close()
            _quietly(lambda: redis.delete(lease))  # a new grace starts on the running host

    def _redis(self) -> "Redis":
        if self._client is None or self._client_pid != os.getpid():
            # Its reads block at most FOLLOW_BLOCK_MS, so the command timeout covers them.
            self._client = _client(self.url, COMMAND_TIMEOUT_S + FOLLOW_BLOCK_MS / 1000)
            self._client_pid = os.getpid()
        return self._client

    def close(self) -> None:
        if self._client is not None and self._client_pid == os.getpid():
            self._client.close()
        self._client = self._client_pid = None


def _unsent(fields: dict[str, str], sent: int) -> tuple[str | None, int]:
    """What of a piece ending at character `at` comes after `sent`, and the new `sent`;
    None when the piece starts after `sent` (the text between was trimmed away)."""
    at, text = int(fields["at"]), fields["text"]
    if at <= sent:
        return "", sent
    if at - len(text) > sent:
        return None, sent
    return text[len(text) - (at - sent) :], at


def _quietly(call: Callable[[], object]) -> None:
    try:
        call()
    except Exception as exc:
        log.warning("mirror: could not drop a key: %r", exc)
