"""What the simulated model says and how it paces itself: pure, no I/O.

A request steers the demo with a directive anywhere in its last user message, e.g.
`[demo ttft=2 gap=0.02 tokens=50 silence=5:10 status=429 fail=drop:3 echo]`:

    ttft=S           seconds from the response headers to the first token
    headers_delay=S  seconds before the response headers are sent
    gap=S            seconds between tokens
    tokens=N         how many tokens to send
    silence=N:S      after N tokens, stay silent for S seconds
    status=CODE      answer with this HTTP error status and an OpenAI-style error body
                     (a 401 quotes back the key it was sent, as some providers do)
    fail=KIND:N      after N tokens: drop (cut the connection), malformed (a broken
                     line) or error (an in-stream error chunk)
    echo             say the user's message (without the directive) instead of prose
"""

import re
from dataclasses import dataclass, replace

PROSE = (
    "A stop button should stop the model, not just the spinner. When you press it, "
    "the request travels from the page to the server, and the server closes its "
    "connection to the provider at once, so no more tokens are generated or billed. "
    "The words you already saw stay on the screen and are saved, marked as stopped, "
    "so you can continue the answer or ask for a new one. This reply comes from a "
    "simulated model: it speaks the same streaming protocol as a real provider, over "
    "a real socket, and it writes down the moment its client went away. "
)

_DIRECTIVE = re.compile(r"\[demo\b([^\]]*)\]")
FAIL_KINDS = ("drop", "malformed", "error")
MAX_TOKENS = 10_000  # per answer, whatever a directive asks
MAX_WAIT_S = 600.0  # any single wait (first token, gap, silence)


@dataclass(frozen=True)
class Script:
    """How one demo answer unfolds."""

    ttft: float = 0.3
    headers_delay: float = 0.0
    gap: float = 0.03
    tokens: int = 120
    silence_after: int = -1
    silence: float = 0.0
    status: int = 200
    fail: str = ""
    fail_after: int = -1
    echo: bool = False


def parse(message: str, defaults: Script) -> tuple[Script, str]:
    """The script a message asks for, and the message without its directive."""
    match = _DIRECTIVE.search(message)
    if not match:
        return defaults, message
    script = defaults
    for word in match.group(1).split():
        key, _, value = word.partition("=")
        script = _apply(script, key, value)
    return script, (message[: match.start()] + message[match.end() :]).strip()


def _bounded(value: float, most: float) -> float:
    """`value` within 0..`most` (NaN counts as 0): a directive cannot make it run forever."""
    return min(most, value) if value > 0 else 0.0


def _apply(script: Script, key: str, value: str) -> Script:
    try:
        if key in ("ttft", "headers_delay", "gap"):
            return replace(script, **{key: _bounded(float(value), MAX_WAIT_S)})
        if key == "tokens":
            return replace(script, tokens=int(_bounded(int(value), MAX_TOKENS)))
        if key == "silence":
            after, seconds = value.split(":")
            silence = _bounded(float(seconds), MAX_WAIT_S)
            return replace(script, silence_after=int(after), silence=silence)
        if key == "status":
            return replace(script, status=int(value))
        if key == "fail":
            kind, after = value.split(":")
            if kind in FAIL_KINDS:
                return replace(script, fail=kind, fail_after=int(after))
        if key == "echo":
            return replace(script, echo=True)
    except ValueError:
        pass
    return script  # unknown or malformed words are ignored, like a model would


def words(script: Script, user_text: str) -> list[str]:
    """The tokens of the answer: words with their leading space."""
    source = user_text if script.echo and user_text else PROSE
    # A space before the first word too, so repeated prose joins as "away. A stop".
    pieces = re.findall(r"\s*\S+", " " + source)
    if not script.echo:
        pieces = (pieces * (script.tokens // len(pieces) + 1))[: script.tokens]
    if pieces:
        pieces[0] = pieces[0].lstrip()
    return pieces
