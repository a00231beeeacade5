// The DOM behind a few functions. Every string from the model, the user or the
// server reaches the page as text (textContent, Text nodes, attributes): never as HTML.

const $ = (selector, scope = document) => scope.querySelector(selector);

const ROLE_NAMES = { user: "You", assistant: "Model", system: "System" };

const BADGES = {
  stopped: "Stopped",
  error: "Error",
  interrupted: "Interrupted",
};

const ACTIONS = {
  stopped: ["regenerate", "continue"],
  interrupted: ["regenerate", "continue"],
  error: ["retry"],
};

const SIGNALS = {
  user_stop: "Stop",
  client_disconnect: "the page left",
};

const REASONS = {
  shutdown: "The server shut down before this answer finished.",
  worker_lost: "The server stopped unexpectedly before this answer finished.",
  connection_lost: "The connection ended before this answer finished.",
};

/** "provider closed 0.4 ms after Stop · 0 tokens after Stop" */
export function receiptText(receipt) {
  const ms = Number(receipt.stop_to_close_ms);
  const shown = ms < 10 ? ms.toFixed(1) : Math.round(ms).toString();
  const after = SIGNALS[receipt.signal] || "the stop";
  const tokens = receipt.tokens_after_stop;
  return `provider closed ${shown} ms after ${after} · ${tokens} token${tokens === 1 ? "" : "s"} after ${after}`;
}

/** One message on the page: its text grows as tokens arrive. */
export class MessageView {
  constructor(element) {
    this.element = element;
    this.textNode = document.createTextNode("");
    $(".message-text", element).append(this.textNode);
    this.state = $(".message-state", element);
    this.badge = $(".badge", element);
    this.detail = $(".message-detail", element);
    this.actions = $(".message-actions", element);
  }

  append(text) {
    this.textNode.appendData(text);
  }

  setText(text) {
    this.textNode.data = text;
  }

  get text() {
    return this.textNode.data;
  }

  /** Show a status: its visible label, a detail line and the actions it allows. */
  show(status, { detail = "", actions = ACTIONS[status] || [] } = {}) {
    this.element.dataset.status = status;
    this.element.setAttribute("aria-busy", String(status === "streaming"));
    const badge = BADGES[status] || "";
    this.badge.textContent = badge;
    this.badge.hidden = !badge;
    this.state.hidden = !badge && !detail;
    this.detail.textContent = detail;
    this.setActions(actions);
  }

  setActions(actions) {
    for (const button of this.actions.querySelectorAll("button")) {
      button.hidden = !actions.includes(button.dataset.action);
    }
    this.actions.hidden = actions.length === 0;
  }
}

/** Explains a final status in words; `error` is `{type, message}` when there is one;
 * `away`: stopped because this page's stream stayed away past the server's grace. */
export function describe({ status, reason, receipt, error, away = false }) {
  if (status === "stopped") {
    if (away) return "The connection stayed away too long: the server stopped the answer and saved it.";
    if (receipt) return receiptText(receipt);
    return error
      ? `The server did not confirm the stop: ${error.message}`
      : "Stopped before the server answered.";
  }
  if (status === "error") {
    return error ? error.message : `The answer failed (${reason || "unknown error"}).`;
  }
  if (status === "interrupted") {
    return REASONS[reason] || "This answer was interrupted before it finished.";
  }
  if (status === "streaming") return "Still being written (in another tab, or just stopped)…";
  return "";
}

export class View {
  constructor() {
    this.form = $("#composer");
    this.input = $("#composer-input");
    this.send = $("#send");
    this.messages = $("#messages");
    this.scroller = $("#scroller");
    this.empty = $("#empty");
    this.title = $("#chat-title");
    this.status = $("#status");
    this.sidebar = $("#sidebar");
    this.sidebarToggle = $("#toggle-sidebar");
    this.conversations = $("#conversations");
    this.conversationsNote = $("#conversations-note");
    this.loadMore = $("#load-more");
    this.newChat = $("#new-chat");
    this.messageTemplate = $("#message-template");
    this.conversationTemplate = $("#conversation-template");
    this.busy = false;
    this.sidebarToggle.addEventListener("click", () => this.toggleSidebar());
  }

  // -- composer ----------------------------------------------------------------

  /** Enter sends, Shift+Enter is a new line; the button sends or stops. */
  bindComposer({ send, stop }) {
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (this.busy) stop();
      else send(this.input.value);
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
      event.preventDefault();
      if (!this.busy) this.form.requestSubmit();
    });
  }

  /** Escape stops from anywhere on the page. */
  bindEscape(stop) {
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.busy) {
        event.preventDefault();
        stop();
      }
    });
  }

  clearInput() {
    this.input.value = "";
  }

  focusInput() {
    this.input.focus();
  }

  /** While busy the Send button is the Stop button. */
  setBusy(busy) {
    this.busy = busy;
    this.send.textContent = busy ? "Stop generating" : "Send";
    this.send.classList.toggle("stop", busy);
    this.form.classList.toggle("busy", busy);
  }

  announce(text) {
    // Cleared first so the same words twice are announced twice.
    this.status.textContent = "";
    requestAnimationFrame(() => {
      this.status.textContent = text;
    });
  }

  // -- messages ----------------------------------------------------------------

  bindMessageActions(handler) {
    this.messages.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      if (!button) return;
      const item = button.closest(".message");
      handler(button.dataset.action, item.dataset.key);
    });
  }

  setTitle(title) {
    this.title.textContent = title || "New chat";
    document.title = title ? `${title} · Stopwire` : "Stopwire";
  }

  clearMessages() {
    this.messages.replaceChildren();
    this.empty.hidden = false;
  }

  /** Add a message at the end; returns its MessageView. */
  addMessage(key, role, text) {
    const element = this.messageTemplate.content.firstElementChild.cloneNode(true);
    element.dataset.key = key;
    element.classList.add(role);
    $(".message-role", element).textContent = ROLE_NAMES[role] || role;
    const message = new MessageView(element);
    message.setText(text);
    this.messages.append(element);
    this.empty.hidden = true;
    this.scrollToEnd();
    return message;
  }

  /** Run `change`, then keep the end in sight unless the reader had scrolled up to read. */
  follow(change) {
    const el = this.scroller;
    const atEnd = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
    change();
    if (atEnd) this.scrollToEnd();
  }

  scrollToEnd() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  // -- conversation list --------------------------------------------------------

  bindConversations({ open, remove, create, more }) {
    this.conversations.addEventListener("click", (event) => {
      const button = event.target.closest("button");
      if (!button) return;
      const id = button.closest(".conversation").dataset.id;
      if (button.classList.contains("conversation-delete")) remove(id);
      else open(id);
      this.toggleSidebar(false);
    });
    this.newChat.addEventListener("click", () => {
      create();
      this.toggleSidebar(false);
    });
    this.loadMore.addEventListener("click", () => more());
  }

  /** items: [{id, title}]; `currentId` is marked as the page shown. */
  renderConversations(items, currentId, { hasMore = false, note = "" } = {}) {
    const rows = items.map(({ id, title }) => {
      const row = this.conversationTemplate.content.firstElementChild.cloneNode(true);
      const name = title || "New chat";
      row.dataset.id = id;
      const open = $(".conversation-open", row);
      open.textContent = name;
      if (id === currentId) open.setAttribute("aria-current", "page");
      const remove = $(".conversation-delete", row);
      remove.setAttribute("aria-label", `Delete “${name}”`);
      return row;
    });
    this.conversations.replaceChildren(...rows);
    this.loadMore.hidden = !hasMore;
    this.conversationsNote.textContent = note;
    this.conversationsNote.hidden = !note;
  }

  toggleSidebar(open = !this.sidebar.classList.contains("open")) {
    this.sidebar.classList.toggle("open", open);
    this.sidebarToggle.setAttribute("aria-expanded", String(open));
  }
}
