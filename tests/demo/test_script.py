"""The demo's directives and the words it says."""

import pytest

from flask_stopwire.demo.script import MAX_TOKENS, MAX_WAIT_S, PROSE, Script, parse, words

DEFAULTS = Script()


def test_defaults():
    assert Script() == Script(
        ttft=0.3,
        headers_delay=0.0,
        gap=0.03,
        tokens=120,
        silence_after=-1,
        silence=0.0,
        status=200,
        fail="",
        fail_after=-1,
        echo=False,
    )


def test_no_directive_keeps_defaults_and_text():
    assert parse("Hello there", DEFAULTS) == (DEFAULTS, "Hello there")


@pytest.mark.parametrize(
    ("directive", "changes"),
    [
        ("ttft=2", {"ttft": 2.0}),
        ("headers_delay=0.5", {"headers_delay": 0.5}),
        ("gap=0.02", {"gap": 0.02}),
        ("tokens=50", {"tokens": 50}),
        ("silence=5:10", {"silence_after": 5, "silence": 10.0}),
        ("status=429", {"status": 429}),
        ("fail=drop:3", {"fail": "drop", "fail_after": 3}),
        ("fail=malformed:0", {"fail": "malformed", "fail_after": 0}),
        ("fail=error:7", {"fail": "error", "fail_after": 7}),
        ("echo", {"echo": True}),
        ("ttft=-1", {"ttft": 0.0}),
        ("gap=-0.5", {"gap": 0.0}),
        ("tokens=-3", {"tokens": 0}),
    ],
)
def test_each_directive(directive, changes):
    script, text = parse(f"Say this [demo {directive}]", DEFAULTS)
    assert script == Script(**changes)
    assert text == "Say this"


def test_several_directives_in_one():
    script, text = parse(
        "[demo ttft=2 gap=0.02 tokens=50 silence=5:10 status=429 fail=drop:3 echo] Go", DEFAULTS
    )
    assert script == Script(
        ttft=2.0,
        gap=0.02,
        tokens=50,
        silence_after=5,
        silence=10.0,
        status=429,
        fail="drop",
        fail_after=3,
        echo=True,
    )
    assert text == "Go"


def test_unspecified_settings_keep_the_given_defaults():
    defaults = Script(ttft=0.0, gap=0.0, tokens=8)
    script, _ = parse("[demo tokens=3]", defaults)
    assert script == Script(ttft=0.0, gap=0.0, tokens=3)


@pytest.mark.parametrize(
    "word",
    [
        "ttft=abc",
        "ttft=",
        "tokens=1.5",
        "status=teapot",
        "silence=5",
        "silence=a:b",
        "silence=1:2:3",
        "fail=explode:3",
        "fail=drop",
        "fail=drop:x",
        "bogus=1",
        "=3",
        "ttft",
    ],
)
def test_malformed_words_are_ignored(word):
    script, text = parse(f"Hi [demo {word} tokens=4]", DEFAULTS)
    assert script == Script(tokens=4)
    assert text == "Hi"


def test_directive_is_removed_from_the_text():
    assert parse("[demo echo] Say this", DEFAULTS)[1] == "Say this"
    assert parse("Say this [demo echo]", DEFAULTS)[1] == "Say this"
    assert parse("  [demo]  ", DEFAULTS) == (DEFAULTS, "")


def test_only_a_whole_word_demo_is_a_directive():
    assert parse("[demonstration tokens=3]", DEFAULTS) == (DEFAULTS, "[demonstration tokens=3]")


def test_words_count():
    assert len(words(Script(tokens=7), "")) == 7
    assert len(words(DEFAULTS, "")) == 120
    assert words(Script(tokens=0), "") == []


def test_words_are_the_prose_with_leading_spaces():
    assert words(Script(tokens=5), "ignored") == ["A", " stop", " button", " should", " stop"]


def test_words_join_to_readable_text_across_repetitions():
    prose = PROSE.split()
    tokens = 2 * len(prose) + 3
    said = words(Script(tokens=tokens), "")
    assert len(said) == tokens
    assert said[0] == "A"
    assert all(word.startswith(" ") for word in said[1:])
    assert "".join(said) == " ".join((prose * 3)[:tokens])


def test_words_echo_the_user_text():
    said = words(Script(echo=True, tokens=1), "Say  hello\nto me")
    assert said == ["Say", "  hello", "\nto", " me"]
    assert "".join(said) == "Say  hello\nto me"


def test_words_echo_strips_the_first_token_only():
    assert words(Script(echo=True), "  Hi there") == ["Hi", " there"]


def test_words_echo_of_nothing_says_the_prose():
    said = words(Script(echo=True), "")
    assert "".join(said) == " ".join(PROSE.split())


@pytest.mark.parametrize(
    ("directive", "field", "expected"),
    [
        ("tokens=99999999", "tokens", MAX_TOKENS),
        ("tokens=-3", "tokens", 0),
        ("gap=1e9", "gap", MAX_WAIT_S),
        ("ttft=inf", "ttft", MAX_WAIT_S),
        ("ttft=nan", "ttft", 0.0),
        ("headers_delay=-1", "headers_delay", 0.0),
        ("silence=2:1e12", "silence", MAX_WAIT_S),
    ],
)
def test_directives_are_bounded(directive, field, expected):
    script, _ = parse(f"Hi [demo {directive}]", DEFAULTS)
    assert getattr(script, field) == expected
