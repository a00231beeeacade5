"""Stops that reach whichever gunicorn worker holds the generation, without Redis.

Each worker that streams serves a unix socket in a run directory shared by the
workers of one gunicorn master (mode 0700, so only this user can stop anything).
A stop for an id this worker does not hold is asked of every peer socket in turn.
The protocol is one JSON line each way::

    -> {"op": "stop", "id": "gen_...", "user_id": "...", "seen_chars": 120}
    <- {"found": true, "summary": {...}}   or   {"found": false}

A socket that refuses connections belongs to a worker that died: it is removed.
"""

import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from gevent.server import StreamServer

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 5.0  # a peer waits up to 3 s for the stop to be recorded
_MAX_LINE = 4096

StopLocal = Callable[[str, str, int | None], dict[str, Any] | None]


def default_run_dir() -> str:
    """One directory per gunicorn master: its workers share their parent's pid."""
    return os.path.join(tempfile.gettempdir(), f"stopwire-{os.getuid()}-{os.getppid()}")


class Peers:
    """This worker's stop socket, and the way to ask its siblings."""

    def __init__(self, run_dir: str, stop_local: StopLocal):
        self.run_dir = Path(run_dir or default_run_dir())
        self._stop_local = stop_local
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
        if not self.run_dir.is_dir():
            return None
        for path in sorted(self.run_dir.glob("worker-*.sock")):
            if path == self.own_path:
                continue
            answer = _ask(path, request)
            if answer and answer.get("found"):
                return answer["summary"]
        return None

    def _handle(self, conn: socket.socket, _address: Any) -> None:
        reader = conn.makefile("rb")
        try:
            with gevent.Timeout(ASK_TIMEOUT_S):
                request = json.loads(reader.readline(_MAX_LINE))
                seen_chars = request.get("seen_chars")
                seen_chars = seen_chars if isinstance(seen_chars, int) else None
                summary = self._stop_local(str(request["user_id"]), str(request["id"]), seen_chars)
            reply = {"found": summary is not None, "summary": summary}
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except (ValueError, KeyError, TypeError, OSError, gevent.Timeout) as exc:
            log.warning("bad stop request from a peer: %r", exc)
        finally:
            reader.close()
            conn.close()


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
