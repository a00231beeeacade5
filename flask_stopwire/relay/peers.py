"""Stops that reach whichever gunicorn worker holds the generation, without Redis.

Each worker that streams serves a unix socket in a run directory shared by the
workers of one gunicorn master (mode 0700, so only this user can stop anything).
A stop for an id this worker does not hold is asked of every peer socket in turn.
The protocol is one JSON line each way::

    -> {"op": "stop", "id": "gen_...", "user_id": "...", "seen_chars": 120}
    <- {"found": true, "summary": {...}}   or   {"found": false}

or, for a viewer that came back to a worker not streaming its answer, a line of
events after the answer::

    -> {"op": "view", "id": "gen_...", "user_id": "...", "after": 120}
    <- {"found": true}  then  ["token", "text", 128]  ...  ["done", {...}, 128]

The viewing worker relays those events to its client; when the client leaves it
closes the connection, which the streaming worker sees as that viewer leaving.

A socket that refuses connections belongs to a worker that died: it is removed.
"""

import contextlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
from gevent.server import StreamServer

from flask_stopwire.relay import disconnect
from flask_stopwire.relay.generation import RelayEvent

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 5.0  # a peer waits up to 3 s for the stop to be recorded
_MAX_LINE = 4096

StopLocal = Callable[[str, str, int | None], dict[str, Any] | None]
ViewLocal = Callable[[str, str, int | None, Any], Iterator[RelayEvent] | None]


def default_run_dir() -> str:
    """One directory per gunicorn master: its workers share their parent's pid."""
    return os.path.join(tempfile.gettempdir(), f"stopwire-{os.getuid()}-{os.getppid()}")


class Peers:
    """This worker's stop socket, and the way to ask its siblings."""

    def __init__(self, run_dir: str, stop_local: StopLocal, view_local: ViewLocal | None = None):
        self.run_dir = Path(run_dir or default_run_dir())
        self._stop_local = stop_local
        self._view_local = view_local
        self._server: StreamServer | None = None
        self._pid: int | None = None

    @property
    def own_path(self) -> Path:
        return self.run_dir / f"worker-{os.getpid()}.sock"

    def serve(self) -> None:
        """Start listening, once per process (a forked child starts its own)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        _make_private_dir(self.run_dir)
        path = self.own_path
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(128)
        # StreamServer accepts until the socket would block: a blocking one (a process
        # gevent has not patched) would hang the event loop in accept() forever.
        listener.setblocking(False)
        self._server = StreamServer(listener, self._handle)
        self._server.start()

    def close(self) -> None:
        """Stop serving and remove this worker's socket."""
        if self._server is not None and self._pid == os.getpid():
            self._server.stop(timeout=0)
            self.own_path.unlink(missing_ok=True)
        self._server, self._pid = None, None

    def stop_elsewhere(
        self, user_id: str, generation_id: str, seen_chars: int | None
    ) -> dict[str, Any] | None:
        """Ask each sibling worker to stop the id; the first that holds it answers."""
        request = {"op": "stop", "id": generation_id, "user_id": user_id, "seen_chars": seen_chars}
        for path in self._siblings():
            answer = _ask(path, request)
            if answer and answer.get("found"):
                return answer["summary"]
        return None

    def view_elsewhere(
        self, user_id: str, generation_id: str, after: int | None, client_sock: Any
    ) -> Iterator[RelayEvent] | None:
        """The events after `after` of the sibling worker streaming the id, or None."""
        request = {"op": "view", "id": generation_id, "user_id": user_id, "after": after}
        for path in self._siblings():
            conn = _open_view(path, request)
            if conn is not None:
                return _relay_view(conn, client_sock)
        return None

    def _siblings(self) -> list[Path]:
        if not self.run_dir.is_dir():
            return []
        return [p for p in sorted(self.run_dir.glob("worker-*.sock")) if p != self.own_path]

    def _handle(self, conn: socket.socket, _address: Any) -> None:
        reader = conn.makefile("rb")
        try:
            with gevent.Timeout(ASK_TIMEOUT_S):
                request = json.loads(reader.readline(_MAX_LINE))
                user_id, generation_id = str(request["user_id"]), str(request["id"])
                if request.get("op") == "view":
                    viewing = self._view(user_id, generation_id, request.get("after"), conn)
                else:
                    summary = self._stop(user_id, generation_id, request.get("seen_chars"))
                    viewing = None
                    reply = {"found": summary is not None, "summary": summary}
                    conn.sendall(json.dumps(reply).encode() + b"\n")
            if viewing is not None:
                _send_view(conn, viewing)
        except (ValueError, KeyError, TypeError, OSError, gevent.Timeout) as exc:
            log.warning("bad request from a peer: %r", exc)
        finally:
            reader.close()
            conn.close()

    def _stop(self, user_id: str, generation_id: str, seen_chars: Any) -> dict[str, Any] | None:
        seen_chars = seen_chars if isinstance(seen_chars, int) else None
        return self._stop_local(user_id, generation_id, seen_chars)

    def _view(
        self, user_id: str, generation_id: str, after: Any, conn: socket.socket
    ) -> Iterator[RelayEvent] | None:
        after = after if isinstance(after, int) and after >= 0 else None
        viewing = None
        if self._view_local is not None:
            viewing = self._view_local(user_id, generation_id, after, conn)
        conn.sendall(json.dumps({"found": viewing is not None}).encode() + b"\n")
        return viewing


def _send_view(conn: socket.socket, viewing: Iterator[RelayEvent]) -> None:
    """Stream a local viewer's events to the sibling relaying them (it watches `conn`)."""
    try:
        for event in viewing:
            conn.sendall(json.dumps([event.kind, event.data, event.at]).encode() + b"\n")
    finally:
        viewing.close()  # type: ignore[attr-defined]


def _open_view(path: Path, request: dict[str, Any]) -> socket.socket | None:
    """A connection to a sibling that streams the answer, its events to follow; or None."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(ASK_TIMEOUT_S)
    try:
        conn.connect(str(path))
        conn.sendall(json.dumps(request).encode() + b"\n")
        if _read_line(conn) == {"found": True}:
            conn.settimeout(None)  # events come as slowly as the provider's
            return conn
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # its worker is gone
    except (OSError, ValueError) as exc:
        log.warning("peer %s did not answer a view: %r", path.name, exc)
    conn.close()
    return None


def _read_line(conn: socket.socket) -> Any:
    line = b""
    while not line.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            raise OSError("the peer closed the connection")
        line += chunk
    return json.loads(line)


def _relay_view(conn: socket.socket, client_sock: Any) -> Iterator[RelayEvent]:
    """A sibling's events for our client; our client leaving closes the connection."""
    watcher = None
    if client_sock is not None:
        watcher = disconnect.watch(client_sock, lambda: _hang_up(conn))
    reader = conn.makefile("rb")
    try:
        for line in reader:
            kind, data, at = json.loads(line)
            yield RelayEvent(kind, data, at)
    except (OSError, ValueError):
        return  # the sibling died, or we hung up: the client is told nothing more
    finally:
        if watcher is not None:
            watcher.close()
        reader.close()
        conn.close()


def _hang_up(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


def _ask(path: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(ASK_TIMEOUT_S)
    try:
        conn.connect(str(path))
        conn.sendall(json.dumps(request).encode() + b"\n")
        with conn.makefile("rb") as reader:
            return json.loads(reader.readline(1 << 20) or b"null")
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # its worker is gone
    except (OSError, ValueError) as exc:
        log.warning("peer %s did not answer a stop: %r", path.name, exc)
    finally:
        conn.close()
    return None


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user; set STOPWIRE_RUN_DIR")
