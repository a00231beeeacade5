// The HTTP API: JSON calls, and streamed answers read as server-sent events.
// Paths are relative, so the page also works when served under a prefix.

/** An error the API reported (`{"error": {"type", "message"}}`) or the network caused. */
export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
  }
}

const JSON_HEADERS = { "Content-Type": "application/json" };

async function errorFrom(response) {
  try {
    const body = await response.json();
    if (body && body.error) {
      return new ApiError(response.status, body.error.type, body.error.message);
    }
  } catch {
    // Not JSON (a proxy's error page): fall through to the status line.
  }
  return new ApiError(response.status, "http_error", `the server answered ${response.status}`);
}

async function call(method, path, body, options = {}) {
  const init = { method, ...options };
  if (body !== undefined) {
    init.headers = JSON_HEADERS;
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await errorFrom(response);
  return response.status === 204 ? null : response.json();
}

const conversation = (id) => `api/conversations/${encodeURIComponent(id)}`;
const message = (cid, mid) => `${conversation(cid)}/messages/${encodeURIComponent(mid)}`;

export function listConversations({ limit = 50, before = null } = {}) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (before) query.set("before", before);
  return call("GET", `api/conversations?${query}`);
}

export function getConversation(id) {
  return call("GET", conversation(id));
}

export function deleteConversation(id) {
  return call("DELETE", conversation(id));
}

/** Stop a generation; resolves to its final summary (the same object as `done`). */
export function stopGeneration(generationId, seenChars) {
  const path = `api/generations/${encodeURIComponent(generationId)}/stop`;
  // keepalive: the stop still goes out if the page is closed right after the click.
  return call("POST", path, { seen_chars: seenChars }, { keepalive: true });
}

/** The stop for a page that is going away; the API accepts only application/json. */
export function beaconStop(generationId, seenChars) {
  const path = `api/generations/${encodeURIComponent(generationId)}/stop`;
  const body = new Blob([JSON.stringify({ seen_chars: seenChars })], { type: "application/json" });
  return navigator.sendBeacon(path, body);
}

/**
 * Start an answer and yield its events: the request is saved first
 * (`POST api/generations`), then its events are read from the URL every later view of
 * it uses too, so a load balancer that routes those by generation id (as
 * deploy/nginx.conf does) sends a reconnect to the host running the answer.
 */
export async function* chat(body, signal) {
  const created = await call("POST", "api/generations", body, { signal });
  const { generation_id, conversation_id, message_id } = created;
  // Its `meta`, known now: a Stop before the first token can already name it.
  yield { type: "meta", id: "0", data: { generation_id, conversation_id, message_id } };
  yield* await viewEvents(generation_id, 0, signal);
}

export function regenerate(conversationId, messageId, signal) {
  return streamEvents(`${message(conversationId, messageId)}/regenerate`, {}, signal);
}

export function continueMessage(conversationId, messageId, signal) {
  return streamEvents(`${message(conversationId, messageId)}/continue`, {}, signal);
}

/**
 * POST `body` and yield the answer's events as `{type, data, id}`, data parsed from JSON.
 * Rejects with an ApiError for an error answer, with an AbortError once `signal` aborts.
 */
export async function* streamEvents(path, body, signal) {
  const response = await fetch(path, {
    method: "POST",
    headers: { ...JSON_HEADERS, Accept: "text/event-stream" },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await errorFrom(response);
  yield* parsedEvents(response);
}

/**
 * Come back to a generation whose stream dropped: resolves, once the server has
 * answered, to the events after `lastId` (the id of the last event received, sent as
 * `Last-Event-ID`): the text missed as one token, the live rest, then `done`.
 * Rejects with an ApiError for an error answer, a TypeError when the network fails.
 */
export function resumeEvents(generationId, lastId, signal) {
  return viewEvents(generationId, lastId, signal);
}

/** A generation's events, all of them (`lastId` null) or those after `lastId`. */
async function viewEvents(generationId, lastId, signal) {
  const path = `api/generations/${encodeURIComponent(generationId)}/events`;
  const headers = { Accept: "text/event-stream" };
  if (lastId !== null) headers["Last-Event-ID"] = String(lastId);
  const response = await fetch(path, { headers, cache: "no-store", signal });
  if (!response.ok) throw await errorFrom(response);
  return parsedEvents(response); // 204 (it had everything): no body, no events
}

async function* parsedEvents(response) {
  if (!response.body) return;
  for await (const event of readEvents(response.body)) {
    yield { type: event.type, id: event.id, data: JSON.parse(event.data) };
  }
}

/**
 * The events in a byte stream, read as the SSE specification says: lines end in
 * CRLF, LF or CR; comments (`: keepalive`) are skipped; an event the stream ends in
 * the middle of is dropped, since the stream was cut.
 */
export async function* readEvents(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "";
  let data = [];
  let id = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      // A CR at the very end may be the first half of a CRLF: keep it for the next chunk.
      const end = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
      const lines = buffer.slice(0, end).split(/\r\n|\r|\n/);
      buffer = lines.pop() + buffer.slice(end);
      for (const line of lines) {
        if (line === "") {
          if (data.length) yield { type: type || "message", data: data.join("\n"), id };
          type = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let fieldValue = colon < 0 ? "" : line.slice(colon + 1);
        if (fieldValue.startsWith(" ")) fieldValue = fieldValue.slice(1);
        if (field === "event") type = fieldValue;
        else if (field === "data") data.push(fieldValue);
        else if (field === "id" && !fieldValue.includes("\0")) id = fieldValue;
      }
    }
  } finally {
    // Leaving early (a stale run, an abort) releases the connection.
    reader.cancel().catch(() => {});
  }
}
