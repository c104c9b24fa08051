// <herald-inbox>: a notification bell with its unread count and a dropdown inbox, live over
// Server-Sent Events. A framework-free Web Component (an ES module, no build step) served by
// Herald's read API at /ui/herald-inbox.js.
//
//   <script type="module" src="https://herald.example.com/ui/herald-inbox.js"></script>
//   <herald-inbox api-url="https://herald.example.com" user="user-42" token="hs1...."></herald-inbox>
//
// Attributes: api-url (the read API; default: this page's origin), user, token (a session
// token your backend minted: POST /v1/users/{user_id}/session), page-size (default 20), open.
// DOM events (bubbling, composed): herald:click (detail: the notification), herald:read
// (detail: the notification after a read/unread change), herald:archive, herald:error
// (detail: {status, type, message}). Styling: CSS custom properties (--herald-accent,
// --herald-font, ... below) and ::part(bell | badge | panel | item).

const SVG = "http://www.w3.org/2000/svg";
const ICONS = {
  bell:
    "M12 22a2.5 2.5 0 0 0 2.5-2.5h-5A2.5 2.5 0 0 0 12 22Zm7-6v-5a7 7 0 0 0-5.5-6.84V3.5a1.5 " +
    "1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2Z",
  archive:
    "M20.54 5.23 19.15 3.55A1.5 1.5 0 0 0 18 3H6a1.5 1.5 0 0 0-1.16.55L3.46 5.23A1.98 1.98 0 " +
    "0 0 3 6.5V19a2 2 0 0 0 2 2h14a2 2 0 0 0 2-2V6.5c0-.48-.17-.93-.46-1.27ZM12 17.5 6.5 " +
    "12H10v-2h4v2h3.5L12 17.5ZM5.12 5l.81-1h12l.94 1H5.12Z",
  read: "M9 16.17 4.83 12l-1.42 1.41L9 19 21 7l-1.41-1.41L9 16.17Z",
  unread: "M12 7a5 5 0 1 0 0 10 5 5 0 0 0 0-10Z",
};
const STREAM_EVENTS = [
  "notification.created",
  "notification.read",
  "notification.unread",
  "notification.archived",
  "notification.unarchived",
  "notifications.read_all",
  "resync",
  "session.expired",
];
const DEFAULT_PAGE_SIZE = 20;
const MAX_PAGE_SIZE = 100;

const STYLE = `
:host {
  display: inline-block;
  position: relative;
  font-family: var(--herald-font, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif);
  font-size: var(--herald-font-size, 1rem);
  color: var(--herald-fg, #1f2937);
  line-height: 1.4;
}
:host([hidden]) { display: none; }
*, *::before, *::after { box-sizing: border-box; }
[hidden] { display: none !important; }
button { font: inherit; color: inherit; }
button:focus-visible {
  outline: 3px solid var(--herald-focus, #2563eb);
  outline-offset: 2px;
}
.sr {
  position: absolute; width: 1px; height: 1px; margin: -1px; padding: 0; border: 0;
  overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap;
}
.bell {
  position: relative; display: inline-flex; align-items: center; justify-content: center;
  width: var(--herald-bell-size, 2.5rem); height: var(--herald-bell-size, 2.5rem);
  border-radius: 999px; border: 1px solid var(--herald-border, #d1d5db);
  background: var(--herald-bg, #ffffff); color: var(--herald-fg, #1f2937); cursor: pointer;
}
.bell:hover { background: var(--herald-hover, #f3f4f6); }
.bell svg { width: 65%; height: 65%; fill: currentColor; }
.bell.failed { border-color: var(--herald-error-fg, #991b1b); }
.badge {
  position: absolute; top: -0.4rem; right: -0.4rem; min-width: 1.3rem; height: 1.3rem;
  padding: 0 0.3rem; border-radius: 999px; font-size: 0.75rem; font-weight: 700;
  line-height: 1.3rem; text-align: center;
  background: var(--herald-badge-bg, #b91c1c); color: var(--herald-badge-fg, #ffffff);
}
.panel {
  position: var(--herald-panel-position, absolute); top: 100%; right: 0;
  z-index: var(--herald-z-index, 1000); margin-top: 0.5rem;
  width: var(--herald-panel-width, 24rem); max-width: calc(100vw - 1rem);
  max-height: var(--herald-panel-max-height, 30rem);
  display: flex; flex-direction: column; overflow: hidden;
  background: var(--herald-bg, #ffffff); color: var(--herald-fg, #1f2937);
  border: 1px solid var(--herald-border, #d1d5db); border-radius: var(--herald-radius, 0.75rem);
  box-shadow: var(--herald-shadow, 0 10px 30px rgb(0 0 0 / 0.15));
}
.head {
  display: flex; align-items: center; justify-content: space-between; gap: 0.5rem;
  padding: 0.6rem 0.9rem; border-bottom: 1px solid var(--herald-border, #d1d5db);
}
.head h2 { margin: 0; font-size: 1rem; font-weight: 700; }
.text-button {
  border: 0; background: none; cursor: pointer; padding: 0.25rem 0.45rem;
  border-radius: 0.375rem; font-size: 0.875rem; color: var(--herald-accent, #1d4ed8);
}
.text-button:hover { background: var(--herald-hover, #f3f4f6); }
.body { overflow-y: auto; flex: 1 1 auto; min-height: 0; }
ul { list-style: none; margin: 0; padding: 0; }
.item {
  display: flex; align-items: stretch;
  border-bottom: 1px solid var(--herald-divider, #f3f4f6);
  background: var(--herald-bg, #ffffff);
}
.item[data-read="false"] { background: var(--herald-unread-bg, #eff6ff); }
.open {
  flex: 1 1 auto; min-width: 0; display: flex; gap: 0.6rem; align-items: flex-start;
  padding: 0.7rem 0.3rem 0.7rem 0.9rem; border: 0; background: none; text-align: left;
  cursor: pointer;
}
.dot {
  flex: none; width: 0.55rem; height: 0.55rem; margin-top: 0.45rem; border-radius: 50%;
}
.item[data-read="false"] .dot { background: var(--herald-accent, #1d4ed8); }
.text { display: flex; flex-direction: column; gap: 0.15rem; min-width: 0; }
.title { font-weight: 650; overflow-wrap: anywhere; }
.item[data-read="true"] .title { font-weight: 500; }
.message, .time { color: var(--herald-muted, #4b5563); overflow-wrap: anywhere; }
.message { font-size: 0.875rem; }
.time { font-size: 0.75rem; }
.actions {
  flex: none; display: flex; flex-direction: column; justify-content: center; gap: 0.2rem;
  padding: 0.35rem 0.5rem 0.35rem 0;
}
.icon {
  display: inline-flex; align-items: center; justify-content: center;
  width: 2rem; height: 2rem; border: 0; border-radius: 0.375rem; background: none;
  color: var(--herald-muted, #4b5563); cursor: pointer;
}
.icon:hover { background: var(--herald-hover, #e5e7eb); color: var(--herald-fg, #1f2937); }
.icon svg { width: 1.1rem; height: 1.1rem; fill: currentColor; }
.state {
  margin: 0; padding: 1.5rem 1rem; text-align: center; color: var(--herald-muted, #4b5563);
}
.error {
  display: flex; gap: 0.5rem; align-items: flex-start; justify-content: space-between;
  margin: 0.6rem; padding: 0.6rem 0.8rem; border-radius: 0.5rem; font-size: 0.875rem;
  background: var(--herald-error-bg, #fef2f2); color: var(--herald-error-fg, #991b1b);
  border: 1px solid var(--herald-error-border, #fecaca);
}
.error .text-button { color: var(--herald-error-fg, #991b1b); text-decoration: underline; }
.foot { padding: 0.5rem; text-align: center; border-top: 1px solid var(--herald-divider, #f3f4f6); }
`;

let sheet = null;
function styles() {
  if (sheet === null) {
    sheet = new CSSStyleSheet();
    sheet.replaceSync(STYLE);
  }
  return sheet;
}

/** An error answer of the API (RFC 9457 problem details), or the network failing. */
export class HeraldError extends Error {
  constructor(status, type, message) {
    super(message);
    this.name = "HeraldError";
    this.status = status;
    this.type = type;
  }

  /** Whether retrying cannot help: the credential is refused. */
  get fatal() {
    return this.status === 401 || this.status === 403;
  }

  get expired() {
    return this.status === 401 && String(this.type).endsWith(":session-expired");
  }

  static from(status, problem) {
    const type = problem?.type ?? "about:blank";
    if (status === 401 && String(type).endsWith(":session-expired")) {
      return new HeraldError(status, type, "Your session has expired. Sign in again to see your notifications.");
    }
    const texts = {
      401: "You are not signed in: the notification service refused the credential.",
      403: "You are not allowed to see these notifications.",
      404: "Not found.",
      429: "Too many requests; try again in a moment.",
    };
    const text = texts[status] ?? (status >= 500 ? "The notification service is unavailable right now." : problem?.detail ?? `Request failed (HTTP ${status}).`);
    return new HeraldError(status, type, text);
  }
}

/** A request to the read API with the user's token; the JSON answer or a HeraldError. */
export async function heraldFetch(apiUrl, token, path, { method = "GET", body, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers["X-User-Token"] = token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(apiUrl + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      signal,
    });
  } catch (error) {
    if (error?.name === "AbortError") throw error;
    throw new HeraldError(0, "network", "Cannot reach the notification service.");
  }
  if (response.ok) return response.status === 204 ? null : response.json();
  let problem = null;
  try {
    problem = await response.json();
  } catch {
    problem = null;
  }
  throw HeraldError.from(response.status, problem);
}

/** The read API's base URL from an api-url attribute (no trailing slash). */
export function baseUrl(attribute) {
  const value = (attribute ?? "").trim();
  return (value || globalThis.location?.origin || "").replace(/\/+$/, "");
}

/** A sort key of an API timestamp, in microseconds (JavaScript dates stop at milliseconds). */
function micros(text) {
  const match = /^(.*?:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$/.exec(text ?? "");
  if (!match) return Date.parse(text) * 1000 || 0;
  const seconds = Date.parse(match[1] + (match[3] ?? "Z"));
  return seconds * 1000 + Number((match[2] ?? "").padEnd(6, "0").slice(0, 6));
}

/** Inbox order: newest first, then by id (descending), as the API pages. */
function newerFirst(a, b) {
  const delta = micros(b.created_at) - micros(a.created_at);
  if (delta !== 0) return delta;
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

const UNITS = [
  ["year", 365 * 24 * 3600],
  ["month", 30 * 24 * 3600],
  ["week", 7 * 24 * 3600],
  ["day", 24 * 3600],
  ["hour", 3600],
  ["minute", 60],
];

/** "just now", "5 minutes ago", "yesterday"... in the page's language. */
export function relativeTime(date, now = Date.now(), locale = undefined) {
  const seconds = Math.round((date.getTime() - now) / 1000);
  if (Math.abs(seconds) < 45) return "just now";
  let format;
  try {
    format = new Intl.RelativeTimeFormat(locale, { numeric: "auto" });
  } catch {
    format = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
  }
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size) return format.format(Math.round(seconds / size), unit);
  }
  return format.format(Math.round(seconds / 60) || -1, "minute");
}

function icon(name) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", ICONS[name]);
  svg.append(path);
  return svg;
}

/** A DOM element: `class`, `text`, `on<event>` handlers, boolean and other attributes. */
export function element(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

/**
 * What both components share: the connection attributes (`api-url`, `user`, `token`) and one
 * (re)load per burst of attribute changes (setting all three at once loads once).
 * Subclasses implement `reload()`.
 */
export class HeraldElement extends HTMLElement {
  #scheduled = false;

  get apiUrl() {
    return baseUrl(this.getAttribute("api-url"));
  }

  get user() {
    return this.getAttribute("user") ?? "";
  }

  get token() {
    return this.getAttribute("token") ?? "";
  }

  /** Call `reload()` once, after the current burst of changes, if still connected. */
  scheduleReload() {
    if (this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      if (this.isConnected) this.reload();
    });
  }

  reload() {}
}

let instances = 0;

export class HeraldInbox extends HeraldElement {
  static observedAttributes = ["api-url", "user", "token", "page-size", "open"];

  #items = new Map(); // id -> notification (the loaded ones)
  #order = []; // ids, newest first
  #rows = new Map(); // id -> <li>
  #cursor = null;
  #loaded = false;
  #unread = 0;
  #generation = 0; // bumped by every local change; stale count answers are dropped
  #error = null;
  #stream = null;
  #streamRetry = 0;
  #timers = new Set();
  #countTimer = null;
  #clock = null;
  #refreshing = null;
  #refreshAgain = false;
  #session = 0; // bumped on every (re)connect: answers of an older session are dropped
  #lastEventId = ""; // the stream's last event id: where a reopened stream resumes
  #ui;

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    root.adoptedStyleSheets = [styles()];
    const id = `herald-inbox-${++instances}`;
    const ui = {};
    ui.badge = element("span", { class: "badge", part: "badge", "data-testid": "herald-badge", "aria-hidden": "true", hidden: "" });
    ui.bell = element(
      "button",
      {
        type: "button",
        class: "bell",
        part: "bell",
        "data-testid": "herald-bell",
        "aria-expanded": "false",
        "aria-controls": `${id}-panel`,
        "aria-label": "Notifications, 0 unread",
        onclick: () => this.toggle(),
      },
      icon("bell"),
      ui.badge,
    );
    ui.title = element("h2", { id: `${id}-title`, text: "Notifications" });
    ui.markAll = element("button", {
      type: "button",
      class: "text-button",
      "data-testid": "herald-mark-all-read",
      text: "Mark all read",
      onclick: () => this.markAllRead(),
    });
    ui.errorText = element("span", { "data-testid": "herald-error-text" });
    ui.retry = element("button", { type: "button", class: "text-button", text: "Retry", onclick: () => this.#reconnect() });
    ui.error = element("div", { class: "error", role: "alert", "data-testid": "herald-error", hidden: "" }, ui.errorText, ui.retry);
    ui.loading = element("p", { class: "state", "data-testid": "herald-loading", text: "Loading…", hidden: "" });
    ui.empty = element("p", { class: "state", "data-testid": "herald-empty", text: "You have no notifications.", hidden: "" });
    ui.list = element("ul", { role: "list", "aria-labelledby": `${id}-title`, onclick: (e) => this.#onListClick(e), onkeydown: (e) => this.#onListKey(e) });
    ui.more = element("button", {
      type: "button",
      class: "text-button",
      "data-testid": "herald-load-more",
      text: "Load more",
      onclick: () => this.loadMore(),
    });
    ui.foot = element("div", { class: "foot", hidden: "" }, ui.more);
    ui.body = element("div", { class: "body" }, ui.error, ui.loading, ui.empty, ui.list, ui.foot);
    ui.panel = element(
      "section",
      { id: `${id}-panel`, class: "panel", part: "panel", "aria-labelledby": `${id}-title`, hidden: "" },
      element("div", { class: "head" }, ui.title, ui.markAll),
      ui.body,
    );
    ui.live = element("div", { class: "sr", role: "status", "aria-live": "polite" });
    root.append(ui.bell, ui.panel, ui.live);
    // Escape anywhere in the component (the bell or the dropdown) closes the dropdown.
    root.addEventListener("keydown", (event) => this.#onEscape(event));
    this.#ui = ui;
  }

  // --- attributes and life cycle -------------------------------------------------------

  get pageSize() {
    const size = Number.parseInt(this.getAttribute("page-size") ?? "", 10);
    return Number.isFinite(size) && size > 0 ? Math.min(size, MAX_PAGE_SIZE) : DEFAULT_PAGE_SIZE;
  }

  get open() {
    return this.hasAttribute("open");
  }

  set open(value) {
    this.toggleAttribute("open", Boolean(value));
  }

  /** The unread count the bell shows. */
  get unreadCount() {
    return this.#unread;
  }

  /** The loaded notifications, newest first. */
  get notifications() {
    return this.#order.map((id) => ({ ...this.#items.get(id) }));
  }

  connectedCallback() {
    this.scheduleReload();
    this.#clock = setInterval(() => this.#renderTimes(), 30_000);
  }

  disconnectedCallback() {
    this.#disconnect();
    clearInterval(this.#clock);
  }

  attributeChangedCallback(name, before, after) {
    if (name === "open") {
      this.#renderOpen();
      return;
    }
    if (before !== after && this.isConnected) this.scheduleReload();
  }

  toggle() {
    this.open = !this.open;
  }

  reload() {
    this.#reconnect();
  }

  #disconnect() {
    this.#session += 1;
    this.#closeStream();
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    clearTimeout(this.#countTimer);
    this.#refreshing = null;
    this.#refreshAgain = false;
  }

  #reconnect() {
    this.#disconnect();
    this.#lastEventId = "";
    this.#items.clear();
    this.#order = [];
    this.#cursor = null;
    this.#loaded = false;
    this.#unread = 0;
    this.#error = null;
    this.#streamRetry = 0;
    this.#render();
    if (!this.user || !this.token) return;
    this.#openStream(); // its "open" event loads the first page and the count
    this.refresh(); // ... and this too, in case the stream cannot open
  }

  #later(fn, ms) {
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      fn();
    }, ms);
    this.#timers.add(timer);
    return timer;
  }

  #path(suffix = "") {
    return `/v1/users/${encodeURIComponent(this.user)}${suffix}`;
  }

  async #call(suffix, options) {
    return heraldFetch(this.apiUrl, this.token, this.#path(suffix), options);
  }

  // --- the stream ----------------------------------------------------------------------

  #openStream() {
    this.#closeStream();
    const session = this.#session;
    // A stream this component reopens itself resumes where the last one stopped (the
    // browser's own reconnections send Last-Event-ID by themselves).
    const resume = this.#lastEventId ? `&last_event_id=${encodeURIComponent(this.#lastEventId)}` : "";
    const url = `${this.apiUrl}${this.#path("/stream")}?token=${encodeURIComponent(this.token)}${resume}`;
    const stream = new EventSource(url);
    this.#stream = stream;
    // Every (re)connection may have missed events: refetch what is shown. The browser itself
    // reconnects after a dropped connection (sending Last-Event-ID when the server gave ids).
    stream.addEventListener("open", () => {
      this.#streamRetry = 0;
      this.refresh();
    });
    for (const name of STREAM_EVENTS) {
      stream.addEventListener(name, (event) => {
        if (session !== this.#session) return;
        if (event.lastEventId) this.#lastEventId = event.lastEventId;
        let data = {};
        try {
          data = JSON.parse(event.data || "{}");
        } catch {
          data = {};
        }
        this.#onStreamEvent(name, data);
      });
    }
    stream.addEventListener("error", () => {
      if (stream.readyState !== EventSource.CLOSED || session !== this.#session) return;
      // Refused (401/403/429/503) or not an event stream: the browser gave up. Find out why
      // with an ordinary request; reconnect later unless the credential is refused.
      this.#closeStream();
      this.#probe(session);
    });
  }

  #closeStream() {
    if (this.#stream !== null) {
      this.#stream.close();
      this.#stream = null;
    }
  }

  async #probe(session) {
    try {
      await this.#call("/notifications/unread-count");
    } catch (error) {
      if (session !== this.#session) return;
      if (error instanceof HeraldError && error.fatal) {
        this.#fail(error);
        return;
      }
    }
    if (session !== this.#session) return;
    const delay = Math.min(30_000, 1000 * 2 ** this.#streamRetry) * (0.75 + Math.random() / 2);
    this.#streamRetry += 1;
    this.#later(() => this.#openStream(), delay);
  }

  #onStreamEvent(name, data) {
    switch (name) {
      case "notification.created":
        if (data && data.id && !data.archived_at) this.#arrived(data);
        break;
      case "notification.read":
      case "notification.unread":
        this.#setRead(data.id, name === "notification.read", data.read_at ?? null);
        break;
      case "notification.archived":
        this.#removeLocal(data.id);
        break;
      case "notifications.read_all": {
        const until = micros(data.read_at);
        for (const item of this.#items.values()) {
          if (!item.is_read && micros(item.created_at) <= until) {
            item.is_read = true;
            item.read_at = data.read_at;
          }
        }
        this.#renderList();
        break;
      }
      case "session.expired":
        // The stream ends; so does every request with this token. A new token attribute
        // (after the page's backend minted one) reconnects.
        this.#fail(HeraldError.from(401, { type: "urn:herald:problem:session-expired" }));
        return;
      default: // notification.unarchived, resync
        this.refresh();
        return;
    }
    this.#reconcileCount();
  }

  #arrived(item) {
    if (this.#items.has(item.id)) return;
    const oldest = this.#items.get(this.#order.at(-1));
    // Older than what is loaded while more pages remain: "load more" brings it in its place.
    if (oldest && this.#cursor && newerFirst(item, oldest) > 0) return;
    this.#items.set(item.id, item);
    this.#order.push(item.id);
    this.#order.sort((a, b) => newerFirst(this.#items.get(a), this.#items.get(b)));
    if (!item.is_read) this.#setUnread(this.#unread + 1);
    this.#ui.live.textContent = `New notification: ${item.title}`;
    this.#renderList();
  }

  // --- loading -------------------------------------------------------------------------

  /** Refetch the first page and the unread count (keeping further pages already loaded). */
  async refresh() {
    if (this.#refreshing) {
      this.#refreshAgain = true;
      return this.#refreshing;
    }
    const session = this.#session;
    this.#refreshing = (async () => {
      do {
        this.#refreshAgain = false;
        const generation = this.#generation;
        if (!this.#loaded) this.#renderState();
        try {
          const [page, count] = await Promise.all([
            this.#call(`/notifications?limit=${this.pageSize}`),
            this.#call("/notifications/unread-count"),
          ]);
          if (session !== this.#session) return;
          this.#mergeFirstPage(page);
          if (generation === this.#generation) this.#setUnread(count.unread);
          else this.#reconcileCount();
          this.#error = null;
          this.#render();
        } catch (error) {
          if (session !== this.#session) return;
          this.#fail(error);
          // A passing failure (network, 5xx, 429): try again shortly.
          if (!(error instanceof HeraldError && error.fatal)) this.#later(() => this.refresh(), 5000);
          return;
        }
      } while (this.#refreshAgain && session === this.#session);
    })();
    try {
      await this.#refreshing;
    } finally {
      if (session === this.#session) this.#refreshing = null;
    }
  }

  #mergeFirstPage(page) {
    const fresh = page.items ?? [];
    const oldest = fresh.at(-1);
    let keep = [];
    if (this.#loaded && oldest && page.next_cursor) {
      // Pages loaded beyond the first stay (with their cursor); the first page is replaced.
      keep = this.#order.filter((id) => newerFirst(this.#items.get(id), oldest) > 0);
    }
    const items = new Map(fresh.map((item) => [item.id, item]));
    for (const id of keep) if (!items.has(id)) items.set(id, this.#items.get(id));
    this.#items = items;
    this.#order = [...items.keys()].sort((a, b) => newerFirst(items.get(a), items.get(b)));
    if (keep.length === 0) this.#cursor = page.next_cursor ?? null;
    this.#loaded = true;
  }

  /** The next page (cursor pagination): appended, never repeated. */
  async loadMore() {
    if (!this.#cursor || this.#ui.more.disabled) return;
    const session = this.#session;
    this.#ui.more.disabled = true;
    this.#ui.more.textContent = "Loading…";
    try {
      const cursor = encodeURIComponent(this.#cursor);
      const page = await this.#call(`/notifications?limit=${this.pageSize}&cursor=${cursor}`);
      if (session !== this.#session) return;
      for (const item of page.items ?? []) {
        if (!this.#items.has(item.id)) {
          this.#items.set(item.id, item);
          this.#order.push(item.id);
        }
      }
      this.#cursor = page.next_cursor ?? null;
      this.#renderList();
    } catch (error) {
      if (session === this.#session) this.#fail(error);
    } finally {
      this.#ui.more.disabled = false;
      this.#ui.more.textContent = "Load more";
    }
  }

  #reconcileCount(delay = 300) {
    clearTimeout(this.#countTimer);
    const session = this.#session;
    this.#countTimer = setTimeout(async () => {
      const generation = this.#generation;
      try {
        const count = await this.#call("/notifications/unread-count");
        if (session !== this.#session) return;
        if (generation === this.#generation) this.#setUnread(count.unread);
        else this.#reconcileCount();
      } catch (error) {
        if (session === this.#session && error instanceof HeraldError && error.fatal) this.#fail(error);
      }
    }, delay);
  }

  // --- actions -------------------------------------------------------------------------

  /** Mark a notification read (true) or unread (false). */
  async markRead(id, read = true) {
    const item = this.#items.get(id);
    if (!item) return;
    const before = { is_read: item.is_read, read_at: item.read_at };
    this.#generation += 1;
    this.#setRead(id, read, read ? new Date().toISOString() : null);
    try {
      const updated = await this.#call(`/notifications/${encodeURIComponent(id)}/${read ? "read" : "unread"}`, { method: "POST" });
      const current = this.#items.get(id);
      if (current) Object.assign(current, updated);
      this.#emit("herald:read", { ...updated });
    } catch (error) {
      this.#generation += 1;
      this.#setRead(id, before.is_read, before.read_at);
      this.#fail(error);
    }
    this.#reconcileCount();
  }

  /** Archive a notification: it leaves the inbox. */
  async archive(id) {
    const item = this.#items.get(id);
    if (!item) return;
    this.#generation += 1;
    const next = this.#neighbour(id);
    this.#removeLocal(id);
    next?.focus();
    try {
      const updated = await this.#call(`/notifications/${encodeURIComponent(id)}/archive`, { method: "POST" });
      this.#emit("herald:archive", { ...updated });
    } catch (error) {
      this.#generation += 1;
      if (!(error instanceof HeraldError && error.status === 404)) {
        this.#items.set(id, item);
        this.#order.push(id);
        this.#order.sort((a, b) => newerFirst(this.#items.get(a), this.#items.get(b)));
        if (!item.is_read) this.#setUnread(this.#unread + 1);
        this.#renderList();
        this.#fail(error);
      }
    }
    this.#reconcileCount();
  }

  /** Mark every notification read. */
  async markAllRead() {
    const before = [...this.#items.values()].filter((item) => !item.is_read);
    const unread = this.#unread;
    this.#generation += 1;
    const now = new Date().toISOString();
    for (const item of before) {
      item.is_read = true;
      item.read_at = now;
    }
    this.#setUnread(0);
    this.#renderList();
    try {
      await this.#call("/notifications/read-all", { method: "POST" });
      this.#ui.live.textContent = "All notifications marked read.";
    } catch (error) {
      this.#generation += 1;
      for (const item of before) {
        item.is_read = false;
        item.read_at = null;
      }
      this.#setUnread(unread);
      this.#renderList();
      this.#fail(error);
    }
    this.#reconcileCount();
  }

  #open(id) {
    const item = this.#items.get(id);
    if (!item) return;
    this.#emit("herald:click", { ...item });
    if (!item.is_read) this.markRead(id, true);
  }

  #setRead(id, read, readAt) {
    const item = this.#items.get(id);
    if (!item || item.is_read === read) return;
    item.is_read = read;
    item.read_at = readAt;
    this.#setUnread(this.#unread + (read ? -1 : 1));
    this.#renderRow(id);
  }

  #removeLocal(id) {
    const item = this.#items.get(id);
    if (!item) return;
    this.#items.delete(id);
    this.#order = this.#order.filter((other) => other !== id);
    if (!item.is_read) this.#setUnread(this.#unread - 1);
    this.#renderList();
  }

  #fail(error) {
    const problem = error instanceof HeraldError ? error : new HeraldError(0, "error", String(error?.message ?? error));
    this.#emit("herald:error", { status: problem.status, type: problem.type, message: problem.message });
    if (problem.fatal) {
      // The credential is refused (e.g. the session expired): nothing more will work.
      this.#disconnect();
      this.#items.clear();
      this.#order = [];
      this.#cursor = null;
      this.#unread = 0;
    }
    this.#error = problem;
    this.#render();
  }

  #emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail, bubbles: true, composed: true }));
  }

  // --- keyboard and clicks -------------------------------------------------------------

  #onListClick(event) {
    const row = event.target.closest("li[data-id]");
    if (!row) return;
    const id = row.dataset.id;
    const action = event.target.closest("button[data-action]")?.dataset.action;
    if (action === "archive") this.archive(id);
    else if (action === "toggle") this.markRead(id, !this.#items.get(id)?.is_read);
    else this.#open(id);
  }

  #onListKey(event) {
    const buttons = [...this.#ui.list.querySelectorAll("button.open")];
    const index = buttons.indexOf(this.shadowRoot.activeElement?.closest?.("li")?.querySelector("button.open"));
    const moves = { ArrowDown: index + 1, ArrowUp: index - 1, Home: 0, End: buttons.length - 1 };
    if (!(event.key in moves) || buttons.length === 0) return;
    event.preventDefault();
    buttons[Math.max(0, Math.min(buttons.length - 1, moves[event.key]))].focus();
  }

  #onEscape(event) {
    if (event.key === "Escape" && this.open) {
      event.stopPropagation();
      this.open = false;
      this.#ui.bell.focus();
    }
  }

  #neighbour(id) {
    const index = this.#order.indexOf(id);
    const other = this.#order[index + 1] ?? this.#order[index - 1];
    return other ? this.#rows.get(other)?.querySelector("button.open") : this.#ui.bell;
  }

  // --- rendering -----------------------------------------------------------------------

  #setUnread(count) {
    this.#unread = Math.max(0, count);
    const shown = this.#unread > 999 ? "999+" : String(this.#unread);
    this.#ui.badge.textContent = shown;
    this.#ui.badge.hidden = this.#unread === 0;
    const failed = this.#error ? ", unavailable" : "";
    this.#ui.bell.setAttribute("aria-label", `Notifications, ${this.#unread} unread${failed}`);
  }

  #render() {
    this.#renderOpen();
    this.#setUnread(this.#unread);
    this.#ui.bell.classList.toggle("failed", Boolean(this.#error));
    this.#ui.error.hidden = !this.#error;
    this.#ui.errorText.textContent = this.#error ? this.#error.message : "";
    this.#ui.retry.hidden = !this.#error || this.#error.fatal;
    this.#renderList();
  }

  #renderOpen() {
    const open = this.open;
    this.#ui.panel.hidden = !open;
    this.#ui.bell.setAttribute("aria-expanded", String(open));
  }

  #renderState() {
    const fatal = this.#error?.fatal;
    this.#ui.loading.hidden = this.#loaded || Boolean(this.#error) || !this.user || !this.token;
    this.#ui.empty.hidden = !this.#loaded || fatal || this.#order.length > 0;
    this.#ui.foot.hidden = !this.#cursor || fatal;
    this.#ui.markAll.hidden = Boolean(fatal);
  }

  #renderList() {
    const list = this.#ui.list;
    const wanted = new Set(this.#order);
    for (const [id, row] of this.#rows) {
      if (!wanted.has(id)) {
        row.remove();
        this.#rows.delete(id);
      }
    }
    let previous = null;
    for (const id of this.#order) {
      let row = this.#rows.get(id);
      if (!row) {
        row = this.#makeRow(id);
        this.#rows.set(id, row);
      }
      this.#renderRow(id);
      const expected = previous ? previous.nextSibling : list.firstChild;
      if (expected !== row) list.insertBefore(row, expected);
      previous = row;
    }
    this.#renderState();
  }

  #makeRow(id) {
    const open = element("button", { type: "button", class: "open" },
      element("span", { class: "dot", "aria-hidden": "true" }),
      element("span", { class: "text" },
        element("span", { class: "title" }),
        element("span", { class: "message" }),
        element("time", { class: "time" }),
        element("span", { class: "sr state-label" }),
      ),
    );
    const toggle = element("button", { type: "button", class: "icon", "data-action": "toggle", "data-testid": "herald-toggle-read" });
    const archive = element("button", { type: "button", class: "icon", "data-action": "archive", "data-testid": "herald-archive" }, icon("archive"));
    return element("li", { class: "item", part: "item", "data-testid": "herald-item", "data-id": id },
      open,
      element("div", { class: "actions" }, toggle, archive),
    );
  }

  #renderRow(id) {
    const row = this.#rows.get(id);
    const item = this.#items.get(id);
    if (!row || !item) return;
    row.dataset.read = String(Boolean(item.is_read));
    row.querySelector(".title").textContent = item.title ?? "";
    row.querySelector(".message").textContent = item.message ?? "";
    row.querySelector(".state-label").textContent = item.is_read ? "" : "Unread";
    const time = row.querySelector("time");
    const created = new Date(item.created_at);
    time.dateTime = item.created_at;
    time.title = created.toLocaleString();
    time.textContent = relativeTime(created);
    const toggle = row.querySelector('[data-action="toggle"]');
    const label = item.is_read ? "Mark as unread" : "Mark as read";
    toggle.setAttribute("aria-label", `${label}: ${item.title ?? ""}`);
    toggle.title = label;
    toggle.replaceChildren(icon(item.is_read ? "unread" : "read"));
    const archive = row.querySelector('[data-action="archive"]');
    archive.setAttribute("aria-label", `Archive: ${item.title ?? ""}`);
    archive.title = "Archive";
  }

  #renderTimes() {
    for (const [id, row] of this.#rows) {
      const item = this.#items.get(id);
      if (item) row.querySelector("time").textContent = relativeTime(new Date(item.created_at));
    }
  }
}

if (!customElements.get("herald-inbox")) customElements.define("herald-inbox", HeraldInbox);
