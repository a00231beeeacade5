"""Answers asked for now and viewed later: EventSource's transport, and every resume.

`POST /generations` saves the request and answers where to view it; any worker that
`GET`s its `events_url` first takes it and starts the provider call. A viewer that
comes back sends the id of the last event it has (`Last-Event-ID`: EventSource does so
by itself) and gets exactly what it lacks, from the worker streaming the answer or,
once it ended, from what was saved.
"""

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request, url_for

from flask_stopwire.formats.sse import END_ID
from flask_stopwire.relay.generation import RelayEvent
from flask_stopwire.relay.turns import wait_turn
from flask_stopwire.state import get_stopwire
from flask_stopwire.web.api import ask, client_socket, events_response, message_summary
from flask_stopwire.web.errors import ApiError, register_json_errors
from flask_stopwire.web.inputs import json_body

generations = Blueprint("stopwire_generations", __name__)
register_json_errors(generations)

RETRY_MS = 1000  # how soon EventSource reconnects after a network error
ELSEWHERE = (
    "this answer streams on another host and is not mirrored (yet); retry, or reach it "
    "through the same load balancer route"
)


@generations.before_request
def _identify() -> None:
    get_stopwire().identity()  # 401/403 before anything else


@generations.post("/generations")
def create() -> tuple[dict[str, Any], int]:
    """Save a request to stream an answer (the body of `POST /chat`); view it at
    `events_url` within `STOPWIRE_ATTACH_TIMEOUT_S`, else it is dropped unasked."""
    wait_turn()  # a new answer's turn in the loop comes before any of its work (relay/turns)
    body = json_body(required=True)
    stopwire = get_stopwire()
    with stopwire.admitted() as generation_id:
        request_ = ask(body, generation_id, wait_s=stopwire.settings.attach_timeout_s)
    events_url = url_for(".events", generation_id=generation_id)
    return {
        "generation_id": generation_id,
        "conversation_id": request_["conversation_id"],
        "message_id": request_["message_id"],
        "events_url": events_url,
    }, 201


@generations.get("/generations/<generation_id>/events")
def events(generation_id: str) -> Response:
    """The answer's events as `text/event-stream`: from the start, or after the
    `Last-Event-ID` header (or `?after=`) a returning viewer sends."""
    last_id = request.headers.get("Last-Event-ID", request.args.get("after"))
    if last_id == END_ID:
        return Response(status=204)  # it had everything: EventSource stops reconnecting
    after = _offset(last_id)
    user_id = get_stopwire().identity().user_id
    viewing = open_events(user_id, generation_id, after, client_socket())
    return events_response(viewing, RETRY_MS)


def open_events(
    user_id: str, generation_id: str, after: int | None, client_sock: Any
) -> Iterator[RelayEvent]:
    """One of `user_id`'s answers' events after `after`, wherever the answer is: a
    pending request (this worker takes it and starts it), live on this worker or a
    sibling, or ended (replayed). Shared by EventSource and the WebSocket's resume;
    `client_sock` is watched for the viewer leaving (None: the caller closes the
    events itself). ApiError 404, or 503 while it streams on another host."""
    wait_turn()  # a pending answer starts here: its turn first, as every start's (relay/turns)
    stopwire = get_stopwire()
    stopwire.start()
    pending = stopwire.store.take_pending(user_id, generation_id, stopwire.recorder.owner)
    if pending is not None:
        generation = stopwire.generation_for(pending)
        message_id = pending["message_id"] or ""
        return stopwire.run(generation, client_sock, message_id, after=after)
    viewing = stopwire.view(user_id, generation_id, after, client_sock)
    if viewing is None:
        viewing = _replay(user_id, generation_id, after, client_sock)
    return viewing


def _replay(
    user_id: str, generation_id: str, after: int | None, client_sock: Any
) -> Iterator[RelayEvent]:
    """An ended answer's events after `after`, from this worker's memory or the store;
    one streaming on another host, from its mirror when there is one."""
    stopwire = get_stopwire()
    ended = stopwire.registry.ended(user_id, generation_id)
    if ended is None:
        answer = stopwire.store.find_answer(user_id, generation_id)
        if answer is None:
            raise ApiError(404, f"no generation {generation_id!r}")
        if answer["status"] == "streaming":
            return _follow_elsewhere(generation_id, after, answer, client_sock)
        ended = message_summary(answer), answer["content"]
    summary, text = ended
    return replay_events(summary, text, after)


def _follow_elsewhere(
    generation_id: str, after: int | None, answer: dict[str, Any], client_sock: Any
) -> Iterator[RelayEvent]:
    """The mirror of an answer another host runs, or 503 (retry) when it has none yet."""
    stopwire = get_stopwire()
    summary = message_summary(answer)
    meta = {k: summary.get(k) for k in ("generation_id", "conversation_id", "message_id")}
    following = None
    if stopwire.mirror is not None:
        heartbeat_s = stopwire.settings.heartbeat_s
        following = stopwire.mirror.follow(generation_id, after, meta, heartbeat_s, client_sock)
    if following is None:
        raise ApiError(503, ELSEWHERE, 1)
    return following


def replay_events(summary: dict[str, Any], text: str, after: int | None) -> Iterator[RelayEvent]:
    """What a viewer lacks of an ended answer: meta (unless it came back), the text
    after `after` as one token, and `done`."""
    if after is None:
        meta = {k: summary.get(k) for k in ("generation_id", "conversation_id", "message_id")}
        yield RelayEvent("meta", meta, 0)
    if text[after or 0 :]:
        yield RelayEvent("token", text[after or 0 :], len(text))
    yield RelayEvent("done", summary, len(text))


def _offset(last_id: str | None) -> int | None:
    if last_id is None or last_id == "":
        return None
    if not (last_id.isascii() and last_id.isdigit()) or len(last_id) > 15:
        raise ApiError(400, "Last-Event-ID must be the id of an event of this answer")
    return int(last_id)
