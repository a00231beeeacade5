"""The WebSocket transport from Chromium's own `WebSocket`: the page's cookie identity, two
answers on one socket, a cancel that stops only its own, a close that stops the rest."""

import time

from support import marker, open_page, tokens_after

SOON_S = 1.0  # "closed at once", generously: bench/transports.py measures milliseconds

OPEN_AND_ASK = """async ([first, second]) => {
  const ws = new WebSocket(`ws://${location.host}/api/ws`);
  window.answers = {};  // generation id -> {prompt, text, done}
  window.ws = ws;
  const byPrompt = {};
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === "meta") {
      window.answers[msg.generation_id] = {text: "", done: null};
      (byPrompt.order ||= []).push(msg.generation_id);
    } else if (msg.type === "token") {
      window.answers[msg.generation_id].text += msg.text;
    } else if (msg.type === "done") {
      window.answers[msg.generation_id].done = msg;
    }
  };
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  ws.send(JSON.stringify({type: "prompt", content: first}));
  const waitTokens = async (n) => {
    for (;;) {
      const ids = byPrompt.order || [];
      if (ids.length === n && ids.every((id) => window.answers[id].text.length > 20)) return ids;
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  await waitTokens(1);
  ws.send(JSON.stringify({type: "prompt", content: second}));
  return await waitTokens(2);
}"""

WAIT_DONE = """async (id) => {
  for (;;) {
    const answer = window.answers[id];
    if (answer.done) return answer;
    await new Promise((r) => setTimeout(r, 20));
  }
}"""


def test_a_cancel_stops_only_its_answer_and_the_other_completes(context, server, upstream):
    page = open_page(context, server.url)
    first, second = marker(), marker()
    ids = page.evaluate(
        OPEN_AND_ASK,
        [f"{first} [demo tokens=400 gap=0.02]", f"{second} [demo tokens=60 gap=0.02]"],
    )
    cancelled_at = time.monotonic()
    page.evaluate(
        "(id) => window.ws.send(JSON.stringify({type: 'cancel', generation_id: id}))", ids[0]
    )
    record = upstream.ended(first)
    assert record["ended"] == "client_closed"
    assert record["client_closed_at"] - cancelled_at < SOON_S
    assert tokens_after(record, cancelled_at + 0.2) == 0
    stopped = page.evaluate(WAIT_DONE, ids[0])
    assert (stopped["done"]["status"], stopped["done"]["reason"]) == ("stopped", "user_stop")
    completed = page.evaluate(WAIT_DONE, ids[1])
    assert completed["done"]["status"] == "complete"
    assert len(completed["text"].split()) == 60
    assert upstream.ended(second)["ended"] == "complete"
    assert page.errors == []


def test_closing_the_socket_stops_every_answer_on_it(context, server, upstream):
    page = open_page(context, server.url)
    first, second = marker(), marker()
    page.evaluate(
        OPEN_AND_ASK,
        [f"{first} [demo tokens=400 gap=0.02]", f"{second} [demo tokens=400 gap=0.02]"],
    )
    closed_at = time.monotonic()
    page.evaluate("() => window.ws.close()")
    for prompt in (first, second):
        record = upstream.ended(prompt)
        assert record["ended"] == "client_closed"
        assert record["client_closed_at"] - closed_at < SOON_S
    assert page.errors == []
