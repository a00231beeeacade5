// The page's behaviour: conversations, sending, streaming and an honest Stop.
//
// One run per request, each with its own AbortController: a run only ever aborts
// itself, so a late timer or answer of an older run cannot touch a newer one.
//
// A new answer asks the server for a grace (RESUME_GRACE_S): when its stream drops
// without a Stop (offline, a proxy's cut) the answer runs on that long, and the run
// comes back for it with the id of the last event it has, each attempt with an
// AbortController of its own. Event ids count the characters of the answer sent, so
// the text resumes exactly where it was cut.

import * as api from "./api.js";
import { View, describe } from "./view.js";

// After Stop the stream is aborted once the stop request has answered (so the
// server records the user's stop, not a disconnect), or after this long.
const ABORT_GRACE_MS = 1000;
// A turn right after a stop waits (at most this long) for the stop to be recorded.
const SETTLE_WAIT_MS = 3000;
// How often a conversation with an answer streaming elsewhere is read again.
const STREAMING_POLL_MS = 1500;
const PAGE_SIZE = 50;
const TITLE_CHARS = 60;
// How long the server keeps an answer running while this page's stream is away.
const RESUME_GRACE_S = 20;
// Reconnecting is tried until this long after the grace must have run out...
const RESUME_SLACK_MS = 2000;
// ...waiting this long before the first attempt, then twice as long each time, up to the most.
const RETRY_FIRST_MS = 500;
const RETRY_MOST_MS = 2000;

const view = new View();

const state = {
  conversationId: null, // the conversation shown, once the server has named it
  title: "",
  conversations: [], // [{id, title}], newest first
  next: null, // cursor for older conversations
  listNote: "", // why the list could not be loaded, if it could not
  entries: new Map(), // message key -> entry
  run: null, // the answer streaming now
  settling: null, // the last stop request, which a new turn waits for
  screen: 0, // bumped on every switch, so late answers for an old screen go nowhere
};

let lastKey = 0;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Characters as the server counts them (code points, not UTF-16 units). */
function codePoints(text) {
  let count = 0;
  for (const _ of text) count += 1;
  return count;
}

/** `text` without its first `count` characters (code points). */
function skipCodePoints(text, count) {
  return Array.from(text).slice(count).join("");
}

function titleFor(content) {
  return content.split(/\s+/).filter(Boolean).join(" ").slice(0, TITLE_CHARS);
}

// -- messages -------------------------------------------------------------------

function addEntry(role, fields) {
  const key = String(++lastKey);
  const entry = {
    key,
    role,
    content: "",
    status: "complete",
    messageId: null,
    conversationId: null,
    prompt: "",
    ...fields,
  };
  entry.view = view.addMessage(key, role, entry.content);
  state.entries.set(key, entry);
  return entry;
}

function latestEntry() {
  return [...state.entries.values()].pop();
}

/** Only the latest answer can be retried, regenerated or continued (the server's rule). */
function actionsFor(entry) {
  if (entry !== latestEntry()) return [];
  if (entry.status === "error") return ["retry"];
  if (entry.status === "stopped" || entry.status === "interrupted") {
    // Continue needs the saved message; without a store only Regenerate can work.
    return entry.messageId ? ["regenerate", "continue"] : ["regenerate"];
  }
  return [];
}

function showEntry(entry, summary) {
  view.follow(() =>
    entry.view.show(entry.status, { detail: describe(summary), actions: actionsFor(entry) }),
  );
}

// -- one streamed answer ----------------------------------------------------------

async function send(content) {
  if (!content.trim() || state.run) return;
  view.clearInput();
  if (!state.title) {
    state.title = titleFor(content);
    view.setTitle(state.title);
  }
  latestEntry()?.view.setActions([]);
  addEntry("user", { content });
  const answer = addEntry("assistant", { prompt: content, status: "streaming" });
  const body = chatBody(content);
  renderList();
  await stream(answer, (signal) => api.chat(body, signal), { keep: false, resumable: true });
}

/** Stream an answer into `entry`; `keep` its text (continue) or replace it.
 * `resumable`: the request asked for a grace, so a dropped stream is come back to. */
async function stream(entry, start, { keep, resumable = false }) {
  const run = {
    entry,
    keep,
    screen: state.screen,
    controller: new AbortController(),
    generationId: null,
    shown: 0, // characters of this generation shown: what `seen_chars` counts
    stopped: false,
    held: "", // tokens that arrived after Stop: shown only if the server says complete
    error: null,
    summary: null,
    graceMs: resumable ? RESUME_GRACE_S * 1000 : 0,
    received: 0, // characters of this generation received: the last event's id
    attempt: null, // the AbortController of the latest reconnect
    reconnecting: false, // its stream dropped and no reconnect has answered yet
    resumed: false, // it came back at least once
    lost: false, // this page dropped the stream itself (offline), to come back for it
    deadline: null, // when to give up coming back (ms), since the stream dropped
    wake: null, // ends the wait before the next reconnect early
  };
  state.run = run;
  view.setBusy(true);
  entry.status = "streaming";
  entry.view.show("streaming", { actions: [] });
  view.announce("Writing an answer.");
  try {
    if (state.settling) await Promise.race([state.settling, sleep(SETTLE_WAIT_MS)]);
    let events = start(run.controller.signal);
    while (events) {
      try {
        for await (const event of events) {
          run.deadline = null; // it is back: a later drop gets a whole grace again
          onEvent(run, event);
        }
        if (run.summary || run.stopped) break;
        throw new TypeError("the stream ended before its last event");
      } catch (error) {
        if (!canResume(run, error)) throw error;
        events = await reconnect(run); // null once stopped meanwhile
      }
    }
  } catch (error) {
    // After Stop an AbortError is the expected end; the stop request reports the outcome.
    if (!run.stopped) finish(run, failure(error));
  } finally {
    if (state.run === run) {
      state.run = null;
      view.setBusy(false);
    }
  }
}

function onEvent(run, event) {
  if (event.type === "meta") onMeta(run, event.data);
  else if (event.type === "token") onToken(run, event.data.text, event.id);
  else if (event.type === "error") run.error = event.data.error;
  else if (event.type === "done") finish(run, event.data);
}

/** The server keeps this run's answer going for a while if its stream drops. */
function waitedFor(run) {
  return Boolean(run.graceMs && run.generationId && !run.stopped && !run.summary);
}

/** A drop to come back from: a network failure (or this page's own drop when it went
 * offline) of a stream whose answer waits for it; never an abort, an API error or a
 * bad event. */
function canResume(run, error) {
  return waitedFor(run) && (run.lost || error instanceof TypeError);
}

/** Come back with the last id received, every RETRY_FIRST_MS..RETRY_MOST_MS, until the
 * server's grace must have run out. Resolves to the resumed events, or null after Stop. */
async function reconnect(run) {
  const { entry } = run;
  run.lost = false;
  run.deadline ??= Date.now() + run.graceMs + RESUME_SLACK_MS;
  if (!run.reconnecting) {
    run.reconnecting = true;
    view.follow(() => entry.view.show("streaming", { detail: "Reconnecting…", actions: [] }));
    view.announce("Connection lost. Reconnecting…");
  }
  let delay = RETRY_FIRST_MS;
  while (!run.stopped) {
    const left = run.deadline - Date.now();
    if (left <= 0) throw gaveUp();
    await pause(run, Math.min(delay, left));
    if (run.stopped) break;
    delay = Math.min(delay * 2, RETRY_MOST_MS);
    const attempt = new AbortController();
    run.attempt = attempt;
    try {
      const events = await api.resumeEvents(run.generationId, run.received, attempt.signal);
      if (run.stopped) break;
      run.reconnecting = false;
      run.resumed = true;
      view.follow(() => entry.view.show("streaming", { actions: [] }));
      view.announce("Reconnected.");
      return events;
    } catch (error) {
      if (run.stopped) break;
      // Network failures and 5xx (a proxy's 502, "streams on another host") pass; not a 4xx.
      if (error instanceof api.ApiError && error.status < 500) throw error;
    }
  }
  return null;
}

/** Wait `ms` before the next reconnect, or less: Stop or the network's return wakes it. */
function pause(run, ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(wake, ms);
    function wake() {
      clearTimeout(timer);
      if (run.wake === wake) run.wake = null;
      resolve();
    }
    run.wake = wake;
  });
}

/** Past the grace the server has stopped the answer and saved what it wrote. */
function gaveUp() {
  const message = navigator.onLine
    ? "The connection was lost and did not come back in time; the server kept the answer as far as it got."
    : "You are offline: the answer stopped where the connection dropped.";
  return new api.ApiError(0, "connection_lost", message);
}

function onMeta(run, meta) {
  const { entry } = run;
  run.generationId = meta.generation_id;
  if (meta.message_id) entry.messageId = meta.message_id;
  if (meta.conversation_id) entry.conversationId = meta.conversation_id;
  if (!run.keep) {
    entry.content = "";
    entry.view.setText("");
  }
  if (meta.conversation_id && run.screen === state.screen) {
    if (state.conversationId !== meta.conversation_id) {
      state.conversationId = meta.conversation_id;
      setHash(meta.conversation_id);
      refreshList();
    }
  }
}

/** `id`: the characters of the answer sent once this token is; what is already here is
 * skipped (a resumed stream starts exactly after it: this is only a guard). */
function onToken(run, text, id) {
  const end = id === null || id === undefined || id === "" ? NaN : Number(id);
  if (Number.isSafeInteger(end)) {
    if (end <= run.received) return;
    const start = end - codePoints(text);
    if (start < run.received) text = skipCodePoints(text, run.received - start);
    run.received = end;
  } else {
    run.received += codePoints(text);
  }
  if (run.stopped && run.summary?.status !== "complete") {
    run.held += text;
    return;
  }
  run.entry.content += text;
  view.follow(() => run.entry.view.append(text));
  run.shown += codePoints(text);
}

/** The run's outcome: the first summary decided (done event or stop answer) stands. */
function finish(run, summary) {
  if (run.summary) return;
  run.summary = summary;
  const { entry } = run;
  if (summary.status === "complete" && run.held) {
    // The stop lost the race: the answer was already complete, so show all of it.
    const held = run.held;
    entry.content += held;
    view.follow(() => entry.view.append(held));
    run.held = "";
  }
  const error = summary.error || run.error;
  // Stopped because the stream stayed away past the grace: what was written is saved.
  const away = run.resumed && summary.reason === "client_disconnect";
  entry.status = summary.status;
  showEntry(entry, { ...summary, error, away });
  view.announce(announcement(summary.status, describe({ ...summary, error, away })));
  if (summary.status !== "streaming" && run.screen === state.screen && state.conversationId) {
    refreshList();
  }
}

function announcement(status, detail) {
  if (status === "complete") return "Answer complete.";
  if (status === "stopped") return `Stopped. ${detail}`;
  if (status === "error") return `Error: ${detail}`;
  return detail;
}

function failure(error) {
  if (error instanceof api.ApiError) {
    return { status: "error", reason: error.type, error: { type: error.type, message: error.message } };
  }
  if (error instanceof SyntaxError) {
    const message = "The server sent an event this page could not read.";
    return { status: "error", reason: "bad_event", error: { type: "bad_event", message } };
  }
  const message = navigator.onLine
    ? "The connection to the server was lost before the answer finished."
    : "You are offline: the answer stopped where the connection dropped.";
  return { status: "error", reason: "connection_lost", error: { type: "connection_lost", message } };
}

/** Stop the running answer: swap the button now, tell the server what was shown. */
function stop() {
  const run = state.run;
  if (!run) return;
  state.run = null;
  run.stopped = true;
  view.setBusy(false);
  run.entry.status = "stopped";
  view.follow(() =>
    run.entry.view.show("stopped", { detail: "Waiting for the server's receipt…", actions: [] }),
  );
  const abort = () => {
    run.controller.abort();
    run.attempt?.abort();
  };
  if (!run.generationId) {
    // Nothing to name yet: closing the connection is the stop the server sees.
    abort();
    finish(run, { status: "stopped", reason: "user_stop" });
    return;
  }
  const reconnecting = run.reconnecting;
  if (reconnecting) {
    // No stream to wait for: end the reconnect now; the stop request says how it ended.
    abort();
    run.wake?.();
  } else {
    setTimeout(abort, ABORT_GRACE_MS);
  }
  state.settling = api.stopGeneration(run.generationId, run.shown).then(
    (summary) => {
      finish(run, summary);
      // Complete means the last tokens are on their way: let the stream deliver them.
      if (summary.status !== "complete") abort();
      // Or, with the stream away, fetch what this page missed of it.
      else if (reconnecting) fetchRest(run);
    },
    (error) => {
      abort();
      finish(run, { status: "stopped", reason: "user_stop", error: failure(error).error });
    },
  );
}

/** The stop lost the race while the stream was away: the whole answer is saved, so
 * show the rest of it (its `done` is not needed: the stop answered it). */
async function fetchRest(run) {
  const attempt = new AbortController();
  run.attempt = attempt;
  try {
    const events = await api.resumeEvents(run.generationId, run.received, attempt.signal);
    for await (const event of events) {
      if (event.type === "token") onToken(run, event.data.text, event.id);
    }
  } catch {
    const detail = "Complete, but the end could not be loaded: reopen the conversation to see it.";
    view.follow(() => run.entry.view.show("complete", { detail, actions: [] }));
  }
}

/** The browser lost its network: the answer cannot arrive on this stream. One that the
 * server waits for is dropped now and come back for; any other is given up, which
 * also frees the server at once if the connection itself survived. */
function onOffline() {
  const run = state.run;
  if (!run) return;
  if (waitedFor(run)) {
    if (!run.reconnecting) {
      run.lost = true;
      run.controller.abort();
      run.attempt?.abort();
    }
    return;
  }
  state.run = null;
  view.setBusy(false);
  run.controller.abort();
  finish(run, failure(new TypeError("offline")));
}

function onPageHide() {
  const run = state.run;
  if (run && run.generationId && !run.stopped) api.beaconStop(run.generationId, run.shown);
}

function act(action, key) {
  const entry = state.entries.get(key);
  if (!entry || state.run) return;
  const { conversationId, messageId } = entry;
  if (action === "continue" && messageId) {
    stream(entry, (signal) => api.continueMessage(conversationId, messageId, signal), {
      keep: true,
    });
  } else if (action === "regenerate" || action === "retry") {
    const start =
      conversationId && messageId
        ? (signal) => api.regenerate(conversationId, messageId, signal)
        : (signal) => api.chat(chatBody(entry.prompt), signal);
    stream(entry, start, { keep: false, resumable: !(conversationId && messageId) });
  }
}

function chatBody(content) {
  const body = { content, resume_grace_s: RESUME_GRACE_S };
  if (state.conversationId) body.conversation_id = state.conversationId;
  return body;
}

// -- conversations ------------------------------------------------------------------

function hashId() {
  const match = /^#\/c\/(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

function setHash(id) {
  history.replaceState(null, "", id ? `#/c/${encodeURIComponent(id)}` : location.pathname);
}

function clearScreen() {
  if (state.run) stop();
  state.screen += 1;
  state.entries.clear();
  view.clearMessages();
}

function newChat() {
  clearScreen();
  state.conversationId = null;
  state.title = "";
  view.setTitle("");
  setHash(null);
  renderList();
  view.focusInput();
}

async function openConversation(id, { again = false } = {}) {
  if (!id || (id === state.conversationId && !again)) return;
  clearScreen();
  const screen = state.screen;
  let conversation;
  try {
    conversation = await api.getConversation(id);
  } catch (error) {
    if (screen !== state.screen) return;
    newChat();
    view.announce(
      error.status === 404 ? "That conversation no longer exists." : `Could not open it: ${error.message}`,
    );
    return;
  }
  if (screen !== state.screen) return;
  state.conversationId = id;
  state.title = conversation.title;
  view.setTitle(conversation.title);
  let prompt = "";
  const answers = [];
  for (const message of conversation.messages) {
    if (message.role === "user") prompt = message.content;
    const entry = addEntry(message.role, {
      content: message.content,
      status: message.status,
      messageId: message.id,
      conversationId: id,
      prompt,
    });
    if (message.role === "assistant") answers.push([entry, message]);
  }
  // Once all are in, so that only the latest answer offers its actions.
  for (const [entry, message] of answers) showEntry(entry, message);
  setHash(id);
  renderList();
  if (answers.some(([, message]) => message.status === "streaming")) {
    // Written by another tab, or a stop (this page's own, before a reload) still landing.
    setTimeout(() => {
      if (screen === state.screen && !state.run) openConversation(id, { again: true });
    }, STREAMING_POLL_MS);
  }
}

async function removeConversation(id) {
  if (!id) return;
  try {
    if (id === state.conversationId && state.run) stop();
    await api.deleteConversation(id);
  } catch (error) {
    if (error.status !== 404) {
      view.announce(`Could not delete it: ${error.message}`);
      return;
    }
  }
  state.conversations = state.conversations.filter((c) => c.id !== id);
  if (id === state.conversationId) newChat();
  renderList();
  view.announce("Conversation deleted.");
}

async function refreshList() {
  try {
    const page = await api.listConversations({ limit: PAGE_SIZE });
    state.conversations = page.conversations;
    state.next = page.next;
    state.listNote = "";
  } catch (error) {
    state.listNote = `Could not load the conversations: ${error.message}`;
  }
  renderList();
}

async function loadMore() {
  if (!state.next) return;
  try {
    const page = await api.listConversations({ limit: PAGE_SIZE, before: state.next });
    const known = new Set(state.conversations.map((c) => c.id));
    state.conversations.push(...page.conversations.filter((c) => !known.has(c.id)));
    state.next = page.next;
  } catch (error) {
    view.announce(`Could not load more: ${error.message}`);
  }
  renderList();
}

function renderList() {
  const items = [...state.conversations];
  if (state.conversationId && !items.some((c) => c.id === state.conversationId)) {
    items.unshift({ id: state.conversationId, title: state.title });
  }
  view.renderConversations(items, state.conversationId, {
    hasMore: Boolean(state.next),
    note: state.listNote,
  });
}

// -- start ----------------------------------------------------------------------------

view.bindComposer({ send, stop });
view.bindEscape(stop);
view.bindMessageActions(act);
view.bindConversations({
  open: openConversation,
  remove: removeConversation,
  create: newChat,
  more: loadMore,
});
addEventListener("pagehide", onPageHide);
addEventListener("offline", onOffline);
// Back online: the next reconnect goes now rather than after its wait.
addEventListener("online", () => state.run?.wake?.());
addEventListener("hashchange", () => {
  const id = hashId();
  if (id) openConversation(id);
  else if (state.conversationId) newChat();
});
view.setBusy(false);
view.focusInput();
refreshList();
openConversation(hashId());
