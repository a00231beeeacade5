"""The WebSocket transport, `<url_prefix>/ws`: JSON messages both ways, several answers
streaming on one socket at once.

Client to server (a bad message gets an `error` back; the socket stays open):

- ``{"type": "prompt", "content", "conversation_id"?, "resume_grace_s"?, "on_stop"?}``,
  or ``"messages": [...]`` instead of content and conversation (nothing saved): the
  body of ``POST /chat``, checked by the same `web.api.ask`;
- ``{"type": "cancel", "generation_id", "seen_chars"?}``: what ``POST
  /generations/<id>/stop`` does, for an answer on any socket or worker;
- ``{"type": "resume", "generation_id", "last_event_id"?}``: an answer's events after
  the `id` of the last token a client has, live or ended (an earlier socket was cut).

Server to client: ``{"type": "meta", "generation_id", "conversation_id", "message_id"}``,
``{"type": "token", "generation_id", "text", "id"}`` (`id`: the characters of the answer
sent once this token is), ``{"type": "error", "generation_id"?, "error": {"type",
"message"}, "status"?}`` and ``{"type": "done", ...}`` with the fields of SSE's `done`.
Heartbeats are WebSocket pings.

Why it is built this way (flask-sock 0.7 and simple-websocket 1.1 under gunicorn's gevent
worker): this greenlet reads the client's messages while each answer streams from a
greenlet of its own, so every write goes through `_Writer` and `Channel.send` (see
there). simple-websocket's reader greenlet sees a close frame, FIN or RST within a
millisecond and tells each answer's viewer (`Departure`, `_ReaderSignal`), and a
generation whose last viewer left stops at once (after its grace, if it was asked for
one); then `receive()` raises and the handler ends the answers. A cancel of an answer on
this worker is acted on by the reader too, the moment it is parsed (`Channel.cancel_at_once`);
the handler then answers it as every other message, in order, though that answer's own `done`
may go out before the replies to messages sent before the cancel (replies name their
`generation_id`). No exception may leave the handler: Flask would write an HTTP 500 into
the upgraded socket.
"""

import json
import logging
import socket
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import gevent
import gevent.lock
from flask import Blueprint, Flask
from flask_sock import Sock
from simple_websocket import ConnectionClosed, Server
from wsproto.events import Ping
from wsproto.frame_protocol import CloseReason

from flask_stopwire.formats.sse import compact_json
from flask_stopwire.identity import require_same_origin
from flask_stopwire.relay import disconnect
from flask_stopwire.relay.generation import RelayEvent
from flask_stopwire.relay.turns import wait_turn
from flask_stopwire.settings import Settings
from flask_stopwire.state import StopwireState, get_stopwire
from flask_stopwire.web.api import ask, stop_summary
from flask_stopwire.web.errors import ApiError, error_response, register_json_errors
from flask_stopwire.web.generations import open_events
from flask_stopwire.web.inputs import MAX_SEEN_CHARS, json_object, seen_chars, text

log = logging.getLogger(__name__)

WRITE_TIMEOUT_S = 10.0  # a client that takes nothing off the socket this long is dropped
DONE_WAIT_S = 2.0  # a cancelled answer's own greenlet sends its `done` within this
END_WAIT_S = 5.0  # closing an answer waits until it is stopped and saved (about 3 s at most)
# A message over this many STOPWIRE_MAX_BODY_BYTES is not even read: the socket is closed
# (1009). Up to it, a message too large gets an `error` and the socket stays usable.
HARD_LIMIT_FACTOR = 4
INTERNAL = {"type": "internal_error", "message": "internal error; see the server log"}

websocket = Blueprint("stopwire_websocket", __name__)
register_json_errors(websocket)  # a refused handshake is a JSON error, like the HTTP API's
sock = Sock()


def configure(app: Flask, settings: Settings) -> None:
    """flask-sock's options for `app`, where a host did not set them itself: the hard
    size limit. (Pings are `Channel.ping_forever`'s, not simple-websocket's own.)

    flask-sock reads them from `SOCK_SERVER_OPTIONS`, the one place it has, so a host's
    own flask-sock routes get them too, unless it set that option."""
    options = app.config.setdefault("SOCK_SERVER_OPTIONS", {})
    options.setdefault("max_message_size", HARD_LIMIT_FACTOR * settings.max_body_bytes)


@websocket.before_request
def _identify() -> None:
    """Who opens the socket, before the upgrade: a refusal is a plain HTTP 401 or 403.

    The handshake is a GET, which the identity rule lets through without the origin
    check; but the socket starts answers, so an ambient identity must be same-origin.
    An identity issued just now is refused: the 101 response cannot carry its cookie,
    so the client could never present it again (to resume, or stop over HTTP)."""
    identity = get_stopwire().identity()
    if identity.ambient:
        require_same_origin()
    if not identity.presented:
        raise ApiError(401, "no identity: load the page first (it sets the identity cookie)")


@sock.route("/ws", bp=websocket)
def relay(ws: Server) -> None:
    """One client's socket: its messages read here, each answer sent from its own greenlet."""
    stopwire = get_stopwire()
    identity = stopwire.identity()
    channel = Channel(ws, stopwire, identity.user_id, identity.limit_key)
    stopwire.on_shutdown.add(channel.shut_down)
    pinging = gevent.spawn(channel.ping_forever, stopwire.settings.heartbeat_s)
    try:
        channel.serve()
    except ConnectionClosed:
        pass  # the client closed, its network failed, or a write did
    except Exception:
        log.exception("the WebSocket handler failed")
        channel.close(CloseReason.INTERNAL_ERROR)
    finally:
        pinging.kill(block=False)
        stopwire.on_shutdown.discard(channel.shut_down)
        channel.end_answers()


class _Writer:
    """`ws.sock` as simple-websocket writes to it: whole frames, one writer at a time, and
    a client that stops reading dropped instead of blocking its writers for ever.

    simple-websocket writes a frame with one `sock.send()`, which under back-pressure
    writes part of it and forgets the rest (the stream is corrupt from then on), and two
    greenlets writing at once make gevent raise ConcurrentObjectUseError. Here a write is
    a `sendall` under `lock`; `Channel.send` holds the lock while the frame is built too,
    so frames go out in the order they were made (permessage-deflate depends on it). A
    write that cannot finish within `timeout_s` shuts the socket down: the reader sees it
    end, and the handler ends every answer.
    """

    def __init__(self, sock: Any, timeout_s: float):
        self._sock = sock
        self._timeout_s = timeout_s
        self.lock = gevent.lock.RLock()

    def send(self, data: bytes, flags: int = 0) -> int:
        with self.lock:
            timer = gevent.Timeout(self._timeout_s)
            timer.start()
            try:
                self._sock.sendall(data, flags)
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                self.hang_up()
                raise TimeoutError(f"the client read nothing for {self._timeout_s} s") from None
            finally:
                timer.close()
        return len(data)

    def hang_up(self) -> None:
        """Shut the socket down: its reader wakes to the end, and the handler ends."""
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Departure:
    """The socket's answers learn here that their client left (`relay.disconnect.watch`
    takes it in place of a socket to watch): from simple-websocket's reader the moment it
    sees the close frame or the end of the socket (`_ReaderSignal`), and again (which
    changes nothing) from the handler when `receive()` says the socket closed."""

    def __init__(self) -> None:
        self._watchers: list[Callable[[], object]] = []

    def watch(self, on_gone: Callable[[], object]) -> "_Unwatch":
        self._watchers.append(on_gone)
        return _Unwatch(self._watchers, on_gone)

    def left(self) -> None:
        """Tell every viewer still watching (each stops its generation, or starts its grace)."""
        for on_gone in list(self._watchers):
            on_gone()


class _ReaderSignal:
    """simple-websocket's `event`, which its reader sets for every message it parsed and
    once the socket closed. The reader acts on two of them itself, at once: a close (the
    answers hear of it) and a message (`on_message`: a cancel stops its answer).

    Without it they waited for the handler: after the reader had parsed the rest of what
    it read (and replied to a close frame), the handler's wake-up waited its turn on the
    loop: a WebSocket stop took about 0.5 ms longer to reach the provider than an HTTP
    client's FIN. The handler still acts on every message, in order, as before.
    """

    def __init__(
        self,
        ws: Server,
        on_closed: Callable[[], object],
        on_message: Callable[[str | bytes], object],
    ):
        self._ws = ws
        self._event = ws.event
        self._on_closed: Callable[[], object] | None = on_closed
        self._on_message = on_message

    def set(self) -> None:
        try:
            if not self._ws.connected:
                if self._on_closed is not None:
                    on_closed, self._on_closed = self._on_closed, None
                    on_closed()
            elif self._ws.input_buffer:  # told again of a message: a second stop is a no-op
                self._on_message(self._ws.input_buffer[-1])
        finally:
            self._event.set()  # whatever happened, `receive()` must not wait for ever

    def __getattr__(self, name: str) -> Any:
        return getattr(self._event, name)


class _Unwatch:
    __slots__ = ("_on_gone", "_watchers")

    def __init__(self, watchers: list[Callable[[], object]], on_gone: Callable[[], object]):
        self._watchers, self._on_gone = watchers, on_gone

    def close(self) -> None:
        with suppress(ValueError):
            self._watchers.remove(self._on_gone)


class Answer:
    """One answer streaming on a socket: its events and the greenlet that sends them."""

    __slots__ = ("events", "greenlet", "id")

    def __init__(self, generation_id: str, events: Any):
        self.id = generation_id
        self.events = events
        self.greenlet: gevent.Greenlet | None = None


class Channel:
    """One WebSocket's messages, answers and writes."""

    def __init__(self, ws: Server, stopwire: StopwireState, user_id: str, limit_key: str):
        self.ws = ws
        self.writer = ws.sock = _Writer(ws.sock, WRITE_TIMEOUT_S)
        # Pings unacknowledged for two heartbeats: the client's network is gone.
        with suppress(OSError):  # already closed: the first receive() says so
            disconnect.give_up_after(self.writer, 2 * stopwire.settings.heartbeat_s)
        self.stopwire = stopwire
        self.user_id = user_id
        self.limit_key = limit_key  # what its rate limit counts (the identity, or the address)
        self.limit = stopwire.settings.max_body_bytes
        self.answers: dict[str, Answer] = {}  # streaming on this socket, by generation id
        self.departure = Departure()  # what its answers' viewers watch, as SSE's their socket
        ws.event = _ReaderSignal(ws, self.departure.left, self.cancel_at_once)
        self.done: set[str] = set()  # answers whose `done` this socket sent
        self.actions = {"prompt": self.prompt, "cancel": self.cancel, "resume": self.resume}

    def ping_forever(self, interval_s: float) -> None:
        """A ping every heartbeat, from a greenlet of its own.

        Not simple-websocket's `ping_interval`: with it, its reader waits in a selector,
        which under gevent delays every message it reads (a cancel while the provider is
        silent: p99 3.8 ms, 1.2 ms without; bench/transports.py). A client that did not
        answer the last ping is told 1008 and dropped, as simple-websocket would.
        """
        while True:
            gevent.sleep(interval_s)
            if not self.ws.pong_received:
                self.close(CloseReason.POLICY_VIOLATION)
                self.writer.hang_up()  # its reader wakes to the end of the socket
                return
            self.ws.pong_received = False  # set again when the pong is read
            try:
                with self.writer.lock:
                    self.writer.send(self.ws.ws.send(Ping()))
            except OSError:
                return  # gone: the reader has seen it too

    def serve(self) -> None:
        """Act on the client's messages, in order, until the socket closes."""
        while True:
            message = self.ws.receive()
            if message is not None:
                self.handle(message)

    def handle(self, raw: str | bytes) -> None:
        """One message; a bad one (or one the API refuses) is answered with an `error`."""
        body: dict[str, Any] = {}
        try:
            body = self._parse(raw)
            kind = body.get("type")
            action = self.actions.get(kind) if isinstance(kind, str) else None
            if action is None:
                raise ApiError(400, '"type" must be "prompt", "cancel" or "resume"')
            if kind != "cancel":  # a stop is never refused: it ends what costs
                self._count_request()
            action(body)
        except ApiError as exc:
            self.send_error(exc, body)
        except ConnectionClosed:
            raise
        except Exception:  # the HTTP API answers these with a 500; the socket goes on
            log.exception("a WebSocket message failed")
            self.send_error(ApiError(500, INTERNAL["message"]), body)

    def _count_request(self) -> None:
        """A message is a request, counted against the rate limit as the HTTP one is."""
        limit = self.stopwire.message_limit
        if limit is None:
            return
        retry_after = limit.take(self.limit_key)
        if retry_after is not None:
            self.stopwire.metrics.refused.labels("rate").inc()
            message = f"too many requests ({limit}); see retry_after"
            raise ApiError(429, message, retry_after=retry_after)

    # -- the messages ----------------------------------------------------------------

    def prompt(self, body: dict[str, Any]) -> None:
        """Start an answer as `POST /chat` does; its `meta` goes out before any later reply."""
        wait_turn()  # a new answer's turn in the loop comes before any of its work (relay/turns)
        with self.stopwire.admitted() as generation_id:
            request_ = ask(body, generation_id)
            generation = self.stopwire.generation_for(request_)
            events = self.stopwire.run(generation, self.departure, request_["message_id"] or "")
            meta = next(events)  # started: from now on closing `events` stops it
        self._start(generation.id, events, meta)

    def cancel(self, body: dict[str, Any]) -> None:
        """Stop an answer at once (on whichever worker), then send its `done`, unless its
        own greenlet on this socket did."""
        generation_id, seen = _cancel_of(body)
        summary = stop_summary(self.user_id, generation_id, seen)
        answer = self.answers.get(generation_id)
        if answer is not None and answer.greenlet is not None:
            # It sends what was received before the stop, then `done`, at once.
            answer.greenlet.join(DONE_WAIT_S)
            answer.greenlet.kill(block=True, timeout=END_WAIT_S)  # stuck writing: no more
        self._send_done(generation_id, summary)

    def cancel_at_once(self, raw: str | bytes) -> None:
        """From simple-websocket's reader, the moment it parsed a message: a cancel of an
        answer streaming on this worker stops it now. Anything else (another message, an
        answer elsewhere, a bad cancel) waits for the handler, which acts on every message
        in order and answers it; a cancel it finds already stopped it answers the same."""
        if not isinstance(raw, str) or '"cancel"' not in raw:
            return
        try:
            body = self._parse(raw)
            if body.get("type") != "cancel":
                return
            generation_id, seen = _cancel_of(body)
            generation = self.stopwire.registry.live(self.user_id, generation_id)
            if generation is not None:
                generation.stop("user_stop", seen_chars=seen)
        except ApiError:
            pass  # the handler answers it with an `error`
        except Exception:  # nothing may end the reader; the handler acts on it again
            log.exception("a cancel failed in the WebSocket reader")

    def resume(self, body: dict[str, Any]) -> None:
        """An answer's events after `last_event_id` (all, with `meta`, without it): live
        here or on a sibling, pending, or ended and replayed from what was saved."""
        generation_id = text(body.get("generation_id"), '"generation_id"')
        after = _offset(body.get("last_event_id"))
        if generation_id in self.answers:
            raise ApiError(409, f"generation {generation_id!r} already streams on this socket")
        events = open_events(self.user_id, generation_id, after, self.departure)
        self.done.discard(generation_id)
        self._start(generation_id, events)

    # -- answers -------------------------------------------------------------------

    def _start(self, generation_id: str, events: Any, first: RelayEvent | None = None) -> None:
        answer = self.answers[generation_id] = Answer(generation_id, events)
        if first is not None:
            self.send_event(answer, first)
        answer.greenlet = gevent.spawn(self._stream, answer)

    def _stream(self, answer: Answer) -> None:
        """One answer's events to the client (its own greenlet) until `done`."""
        try:
            for event in answer.events:
                self.send_event(answer, event)
        except ConnectionClosed:
            pass  # the handler sees the socket end too, and ends every answer
        except Exception:
            log.exception("streaming %s over a WebSocket failed", answer.id)
            with suppress(Exception):
                self.send({"type": "error", "generation_id": answer.id, "error": INTERNAL})
        finally:
            answer.events.close()  # its viewer leaves: stopped, unless it has a grace
            if self.answers.get(answer.id) is answer:
                del self.answers[answer.id]

    def end_answers(self) -> None:
        """The socket is gone: close every answer's events, as a closed SSE stream does.

        Each viewer leaves; a generation whose last viewer left stops (after its grace,
        if it asked for one) and is saved before this returns."""
        answers = list(self.answers.values())
        self.departure.left()  # from here: each stops now, not after a kill's round trip
        greenlets = [a.greenlet for a in answers if a.greenlet]
        gevent.joinall(greenlets, timeout=END_WAIT_S)
        gevent.killall(greenlets, timeout=END_WAIT_S)  # one stuck writing, say
        for answer in answers:
            with suppress(ValueError):  # still running in a greenlet that would not die
                answer.events.close()  # one never sent from a greenlet (meta's send failed)

    def shut_down(self) -> None:
        """The worker is stopping and its answers were interrupted: once their `done`
        went out, close with 1012 (service restart) so the client reconnects elsewhere,
        instead of holding the worker until its graceful timeout."""
        greenlets = [a.greenlet for a in self.answers.values() if a.greenlet is not None]
        gevent.joinall(greenlets, timeout=DONE_WAIT_S)
        self.close(CloseReason.SERVICE_RESTART)

    # -- writing -------------------------------------------------------------------

    def send_event(self, answer: Answer, event: RelayEvent) -> None:
        """A relay event as a message; keepalives are not sent (pings keep the socket)."""
        if event.kind == "token":
            self.send(
                {"type": "token", "generation_id": answer.id, "text": event.data, "id": event.at}
            )
        elif event.kind == "done":
            self._send_done(answer.id, event.data)
        elif event.kind == "error":
            self.send({"type": "error", "generation_id": answer.id, "error": event.data})
        elif event.kind != "keepalive":
            self.send({"type": event.kind, **event.data})

    def _send_done(self, generation_id: str, summary: dict[str, Any]) -> None:
        if generation_id not in self.done:  # a cancel and the answer's own end: one `done`
            self.done.add(generation_id)
            self.send({"type": "done", **summary})

    def send_error(self, exc: ApiError, body: dict[str, Any]) -> None:
        """An API error as the HTTP API words it, with the ids the message named."""
        message: dict[str, Any] = {"type": "error"}
        for key in ("generation_id", "conversation_id"):
            if isinstance(body.get(key), str):
                message[key] = body[key]
        message["error"] = error_response(exc.status, exc.message).get_json()["error"]
        message["status"] = exc.status
        if exc.retry_after is not None:
            message["retry_after"] = exc.retry_after
        self.send(message)

    def send(self, message: dict[str, Any]) -> None:
        """One message, its frame built and written whole under the writer's lock.

        ConnectionClosed when the socket is gone or the write failed."""
        try:
            with self.writer.lock:
                try:
                    self.ws.send(compact_json(message))
                except UnicodeEncodeError:  # a lone surrogate: escaped, it is valid UTF-8
                    self.ws.send(json.dumps(message))
        except OSError as exc:
            raise ConnectionClosed(CloseReason.ABNORMAL_CLOSURE, str(exc)) from exc

    def close(self, code: int) -> None:
        with suppress(Exception):
            self.ws.close(code)

    def _parse(self, raw: str | bytes) -> dict[str, Any]:
        size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
        if size > self.limit:
            raise ApiError(413, f"a message must be at most {self.limit} bytes")
        return json_object(raw, "a message")


def _cancel_of(body: dict[str, Any]) -> tuple[str, int | None]:
    """A cancel's answer and how much of it the user saw; ApiError 400 when malformed."""
    return text(body.get("generation_id"), '"generation_id"'), seen_chars(body)


def _offset(value: Any) -> int | None:
    """`last_event_id`: the `id` of a token (a string of digits is taken too)."""
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:
        value = int(value)
    if type(value) is not int or not 0 <= value <= MAX_SEEN_CHARS:
        raise ApiError(400, '"last_event_id" must be the "id" of a token of this answer')
    return value
