"""Saved conversations turned into provider requests: the history rule and its targets."""

import pytest

from flask_stopwire.history import (
    CONTINUE_INSTRUCTION,
    WrongTarget,
    check_target,
    continue_messages,
    provider_messages,
)
from flask_stopwire.providers.base import Message


def msg(id_: str, role: str, content: str, status: str = "complete") -> dict:
    return {"id": id_, "role": role, "content": content, "status": status}


def conversation(last_status: str = "stopped", last_content: str = "Partial answer ") -> list:
    return [
        msg("m1", "user", "First question"),
        msg("m2", "assistant", "First answer"),
        msg("m3", "user", "Second question"),
        msg("m4", "assistant", last_content, last_status),
    ]


# -- provider_messages -----------------------------------------------------------------


def test_provider_messages_keeps_order_and_roles():
    saved = [
        msg("s", "system", "Be brief."),
        msg("u1", "user", "Hi"),
        msg("a1", "assistant", "Hello!"),
        msg("u2", "user", "Bye"),
    ]
    assert provider_messages(saved) == [
        Message("system", "Be brief."),
        Message("user", "Hi"),
        Message("assistant", "Hello!"),
        Message("user", "Bye"),
    ]


@pytest.mark.parametrize("status", ["stopped", "interrupted", "error"])
def test_partial_answers_are_included_as_saved(status):
    saved = [
        msg("u1", "user", "Count to ten"),
        msg("a1", "assistant", "One, two, thr", status),
        msg("u2", "user", "Go on "),
    ]
    assert provider_messages(saved) == [
        Message("user", "Count to ten"),
        Message("assistant", "One, two, thr"),
        Message("user", "Go on "),
    ]


@pytest.mark.parametrize("status", ["complete", "stopped", "interrupted", "error"])
def test_empty_answers_are_left_out(status):
    saved = [
        msg("u1", "user", "Hi"),
        msg("a1", "assistant", "", status),
        msg("u2", "user", "Hello?"),
    ]
    assert provider_messages(saved) == [Message("user", "Hi"), Message("user", "Hello?")]


def test_streaming_answers_are_left_out_even_with_text():
    saved = [
        msg("u1", "user", "Hi"),
        msg("a1", "assistant", "Hel", "streaming"),
    ]
    assert provider_messages(saved) == [Message("user", "Hi")]


def test_whitespace_in_saved_text_is_kept():
    saved = [msg("u1", "user", "  spaced  \n"), msg("a1", "assistant", "\tanswer \n", "stopped")]
    assert provider_messages(saved) == [
        Message("user", "  spaced  \n"),
        Message("assistant", "\tanswer \n"),
    ]


def test_provider_messages_of_nothing():
    assert provider_messages([]) == []


def test_provider_messages_ignores_extra_fields():
    saved = [{**msg("u1", "user", "Hi"), "versions": [{"content": "old"}], "usage": None}]
    assert provider_messages(saved) == [Message("user", "Hi")]


# -- check_target ----------------------------------------------------------------------


def wrong(saved, message_id, action) -> WrongTarget:
    with pytest.raises(WrongTarget) as caught:
        check_target(saved, message_id, action)
    return caught.value


@pytest.mark.parametrize("action", ["regenerate", "continue"])
def test_unknown_message(action):
    error = wrong(conversation(), "m9", action)
    assert error.status == 404
    assert str(error) == "no message 'm9' in this conversation"


@pytest.mark.parametrize("action", ["regenerate", "continue"])
def test_a_user_message(action):
    saved = [*conversation(), msg("m5", "user", "Third question")]
    error = wrong(saved, "m5", action)
    assert error.status == 422
    assert str(error) == f"only an assistant's answer can be {action}d"


@pytest.mark.parametrize("action", ["regenerate", "continue"])
def test_a_streaming_answer(action):
    error = wrong(conversation("streaming", "Part"), "m4", action)
    assert error.status == 409
    assert str(error) == "this answer is still streaming; stop it first"


@pytest.mark.parametrize("action", ["regenerate", "continue"])
def test_not_the_latest_answer(action):
    saved = conversation("complete", "Second answer")
    saved[1] = msg("m2", "assistant", "First ans", "stopped")
    error = wrong(saved, "m2", action)
    assert error.status == 409
    assert str(error) == f"only the latest answer can be {action}d"


def test_an_answer_followed_by_a_user_message_is_not_the_latest():
    saved = [
        msg("m1", "user", "Q"),
        msg("m2", "assistant", "A", "stopped"),
        msg("m3", "user", "Q2"),
    ]
    assert wrong(saved, "m2", "regenerate").status == 409


def test_continue_a_complete_answer():
    error = wrong(conversation("complete", "Full answer."), "m4", "continue")
    assert error.status == 422
    assert str(error) == "only a stopped, interrupted or failed answer can be continued"


@pytest.mark.parametrize("status", ["stopped", "interrupted", "error"])
def test_continue_an_empty_answer(status):
    error = wrong(conversation(status, ""), "m4", "continue")
    assert error.status == 422
    assert str(error) == "this answer has no text to continue; regenerate it instead"


@pytest.mark.parametrize("status", ["stopped", "interrupted", "error"])
def test_continue_a_partial_answer(status):
    assert check_target(conversation(status, "Part"), "m4", "continue") == 3


@pytest.mark.parametrize("status", ["complete", "stopped", "interrupted", "error"])
def test_regenerate_the_latest_answer(status):
    assert check_target(conversation(status, "Any text"), "m4", "regenerate") == 3


@pytest.mark.parametrize("status", ["stopped", "error"])
def test_regenerate_an_empty_answer(status):
    assert check_target(conversation(status, ""), "m4", "regenerate") == 3


def test_index_of_the_first_answer():
    saved = [msg("m1", "user", "Q"), msg("m2", "assistant", "A", "interrupted")]
    assert check_target(saved, "m2", "continue") == 1


def test_wrong_target_is_an_exception_with_a_status():
    error = WrongTarget(418, "teapot")
    assert isinstance(error, Exception)
    assert (error.status, error.args) == (418, ("teapot",))


# -- continue_messages -----------------------------------------------------------------


def test_continue_with_prefill():
    saved = conversation("stopped", "The answer is \n ")
    messages, prefix = continue_messages(saved, 3, prefill=True)
    assert messages == [
        Message("user", "First question"),
        Message("assistant", "First answer"),
        Message("user", "Second question"),
        Message("assistant", "The answer is"),
    ]
    assert prefix == "The answer is"


def test_continue_with_prefill_keeps_leading_whitespace():
    saved = [msg("u", "user", "Q"), msg("a", "assistant", "  indented\t", "error")]
    messages, prefix = continue_messages(saved, 1, prefill=True)
    assert messages == [Message("user", "Q"), Message("assistant", "  indented")]
    assert prefix == "  indented"


def test_continue_without_prefill():
    saved = conversation("interrupted", "The answer is \n ")
    messages, prefix = continue_messages(saved, 3, prefill=False)
    assert messages == [
        Message("user", "First question"),
        Message("assistant", "First answer"),
        Message("user", "Second question"),
        Message("assistant", "The answer is \n "),
        Message("user", CONTINUE_INSTRUCTION),
    ]
    assert prefix == "The answer is \n "


def test_continue_instruction_text():
    assert CONTINUE_INSTRUCTION == (
        "Continue your previous reply exactly where it stopped. Do not repeat anything "
        "you already wrote and do not comment on the interruption."
    )


@pytest.mark.parametrize("prefill", [True, False])
def test_continue_applies_the_history_rule_to_earlier_turns(prefill):
    saved = [
        msg("u1", "user", "Q1"),
        msg("a1", "assistant", "", "error"),
        msg("u2", "user", "Q2"),
        msg("a2", "assistant", "Half", "stopped"),
        msg("u3", "user", "Q3"),
        msg("a3", "assistant", "Partial", "stopped"),
    ]
    messages, prefix = continue_messages(saved, 5, prefill)
    history = [
        Message("user", "Q1"),
        Message("user", "Q2"),
        Message("assistant", "Half"),
        Message("user", "Q3"),
    ]
    assert messages[:4] == history
    assert messages[4] == Message("assistant", "Partial")
    assert len(messages) == (5 if prefill else 6)
    assert prefix == "Partial"


def test_continue_leaves_out_what_comes_after_the_index():
    saved = conversation("stopped", "Part")
    messages, _ = continue_messages(saved, 1, prefill=True)
    assert messages == [Message("user", "First question"), Message("assistant", "First answer")]
