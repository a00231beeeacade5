"""Who is asking: every request has an owner, and sees only what it owns.

An identity is resolved once per request, in this order:

1. ``Authorization: Bearer <key>`` when `STOPWIRE_CLIENT_KEYS` is set: ``key:<name>``
   (keys may be named, ``team-a:key1``); a wrong key is a 401.
2. The host's hook, ``Stopwire(identity=callable)``: ``user:<what it returns>``;
   ``None`` means "not allowed", a 401.
3. Without a hook, the browser's signed cookie (Flask's session): ``browser:<random>``,
   issued to a request that has none. With client keys set, only the page issues one
   (`issue_browser_identity`): an API caller with neither cookie nor key gets a 401.

Cookie and hook identities travel with the browser on their own, so requests that
change something must come from the same origin (`Sec-Fetch-Site`, else `Origin`).
An identity issued just now was not presented by the client: limits then count the
client's address instead, so dropping the cookie does not escape them.
"""

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Flask, g, request, session

from flask_stopwire.web.errors import ApiError

IdentityHook = Callable[[], object]

SESSION_KEY = "stopwire_user"
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Identity:
    """The owner of a request; `limit_key` is what its limits count."""

    user_id: str
    limit_key: str
    ambient: bool  # sent by the browser on its own (cookie, host session): check origin
    presented: bool = True  # False: issued by this very request, which sent no cookie


def current_identity(hook: IdentityHook | None, client_keys: tuple[str, ...]) -> Identity:
    """This request's identity (resolved once); raises ApiError 401/403."""
    if "stopwire_identity" not in g:
        identity = _resolve(hook, client_keys)
        if identity.ambient and request.method not in _SAFE_METHODS:
            require_same_origin()
        g.stopwire_identity = identity
    return g.stopwire_identity


def issue_browser_identity() -> str:
    """The browser's identity, issued now (a long-lived signed cookie) if it has none."""
    if SESSION_KEY not in session:
        session[SESSION_KEY] = "browser:" + secrets.token_urlsafe(16)
        session.permanent = True
    return session[SESSION_KEY]


def key_names(client_keys: tuple[str, ...]) -> dict[str, str]:
    """Each client key and the name its identity carries (`name:key`, or a digest)."""
    names = {}
    for entry in client_keys:
        name, _, key = entry.rpartition(":")
        names[key] = name or hashlib.sha256(key.encode()).hexdigest()[:12]
    return names


def ensure_secret_key(app: Flask, configured: str) -> None:
    """Give the app a key to sign identity cookies with, unless it has one.

    STOPWIRE_SECRET_KEY if set, else a key made once and kept in the instance folder,
    so every worker and every restart agree.
    """
    if app.secret_key:
        return
    if configured:
        app.secret_key = configured
        return
    path = os.path.join(app.instance_path, "secret_key")
    os.makedirs(app.instance_path, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32))
    with open(path) as file:
        app.secret_key = file.read().strip()


def _resolve(hook: IdentityHook | None, client_keys: tuple[str, ...]) -> Identity:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if client_keys and (scheme or token):
        name = _key_name(scheme, token.strip(), client_keys)
        return Identity(f"key:{name}", f"key:{name}", ambient=False)
    if hook is not None:
        user = hook()
        if user is None or user == "":
            raise ApiError(401, "sign in first")
        return Identity(f"user:{user}", f"user:{user}", ambient=True)
    presented = session.get(SESSION_KEY)
    if isinstance(presented, str):
        return Identity(presented, presented, ambient=True)
    if client_keys:
        raise ApiError(401, "send Authorization: Bearer <key>")
    return Identity(
        issue_browser_identity(), f"addr:{request.remote_addr}", ambient=True, presented=False
    )


def _key_name(scheme: str, token: str, client_keys: tuple[str, ...]) -> str:
    if scheme.lower() == "bearer":
        for key, name in key_names(client_keys).items():
            if hmac.compare_digest(token.encode(), key.encode()):
                return name
    raise ApiError(401, "invalid or missing API key")


def require_same_origin() -> None:
    """ApiError 403 unless the request comes from this origin (`Sec-Fetch-Site`, else
    `Origin`). `current_identity` asks it of ambient identities on unsafe methods; a
    WebSocket handshake is a GET that goes on to start answers, so it asks too."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        if site not in ("same-origin", "none"):
            raise ApiError(403, "cross-site requests are refused")
        return
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise ApiError(403, "cross-site requests are refused")
