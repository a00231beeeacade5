"""Turning saved conversations into provider requests: new turns, regenerate, continue.

The history rule: the provider gets the conversation as the user saw it, in order.
Stopped, interrupted and failed answers are included exactly as saved (the partial
text, cut to what the user saw); answers with no text at all are left out, because
providers reject empty turns.
"""

from typing import Any

from flask_stopwire.providers.base import Message

CONTINUE_INSTRUCTION = (
    "Continue your previous reply exactly where it stopped. Do not repeat anything "
    "you already wrote and do not comment on the interruption."
)
CONTINUABLE = ("stopped", "interrupted", "error")


class WrongTarget(Exception):
    """A regenerate or continue aimed at a message it cannot apply to."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def provider_messages(saved: list[dict[str, Any]]) -> list[Message]:
    """Saved messages as the provider should see them (the history rule)."""
    return [
        Message(m["role"], m["content"])
        for m in saved
        if m["content"] and m["status"] != "streaming"
    ]


def check_target(saved: list[dict[str, Any]], message_id: str, action: str) -> int:
    """The index of the answer to regenerate or continue; WrongTarget if it cannot be."""
    index = next((i for i, m in enumerate(saved) if m["id"] == message_id), None)
    if index is None:
        raise WrongTarget(404, f"no message {message_id!r} in this conversation")
    message = saved[index]
    if message["role"] != "assistant":
        raise WrongTarget(422, f"only an assistant's answer can be {action}d")
    if message["status"] == "streaming":
        raise WrongTarget(409, "this answer is still streaming; stop it first")
    if index != len(saved) - 1:
        raise WrongTarget(409, f"only the latest answer can be {action}d")
    if action == "continue" and message["status"] not in CONTINUABLE:
        raise WrongTarget(422, "only a stopped, interrupted or failed answer can be continued")
    if action == "continue" and not message["content"]:
        raise WrongTarget(422, "this answer has no text to continue; regenerate it instead")
    return index


def continue_messages(
    saved: list[dict[str, Any]], index: int, prefill: bool
) -> tuple[list[Message], str]:
    """What to send to continue answer `index`, and the saved text the new text extends.

    With `prefill` (Anthropic) the partial answer is the last turn and the model carries
    it on natively; it must not end in whitespace. Otherwise the fallback: the partial
    answer, then a user turn asking to continue.
    """
    partial = saved[index]["content"]
    history = provider_messages(saved[:index])
    if prefill:
        prefix = partial.rstrip()
        return [*history, Message("assistant", prefix)], prefix
    return [*history, Message("assistant", partial), Message("user", CONTINUE_INSTRUCTION)], partial
