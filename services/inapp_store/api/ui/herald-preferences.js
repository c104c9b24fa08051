// <herald-preferences>: a user's preference center (channel switches, per-event-type
// choices, quiet hours), a framework-free Web Component served by Herald's read API at
// /ui/herald-preferences.js.
//
//   <script type="module" src="https://herald.example.com/ui/herald-preferences.js"></script>
//   <herald-preferences api-url="https://herald.example.com" user="user-42" token="hs1....">
//   </herald-preferences>
//
// It reads and writes GET/PUT /v1/users/{user_id}/preferences with the user's session token.
// Mandatory event types (security, legal) are shown locked. DOM events (bubbling, composed):
// herald:saved (detail: the saved preferences), herald:error (detail: {status, type, message}).
// Styling: the same CSS custom properties as <herald-inbox> (--herald-accent, --herald-font...).

import { element, HeraldElement, HeraldError, heraldFetch } from "./herald-inbox.js";

const CHANNELS = [
  ["inapp", "In-app"],
  ["email", "Email"],
  ["sms", "SMS"],
  ["webhook", "Webhook"],
  ["slack", "Slack"],
];

const STYLE = `
:host {
  display: block;
  font-family: var(--herald-font, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif);
  font-size: var(--herald-font-size, 1rem);
  color: var(--herald-fg, #1f2937);
  line-height: 1.4;
}
:host([hidden]) { display: none; }
*, *::before, *::after { box-sizing: border-box; }
[hidden] { display: none !important; }
button, input { font: inherit; color: inherit; }
:focus-visible { outline: 3px solid var(--herald-focus, #2563eb); outline-offset: 2px; }
fieldset {
  margin: 0 0 1rem; padding: 0.75rem 1rem 1rem;
  border: 1px solid var(--herald-border, #d1d5db); border-radius: var(--herald-radius, 0.75rem);
}
legend { font-weight: 700; padding: 0 0.35rem; }
.hint { margin: 0.25rem 0 0.5rem; font-size: 0.875rem; color: var(--herald-muted, #4b5563); }
.switches { display: flex; flex-wrap: wrap; gap: 0.5rem 1.5rem; }
label { display: inline-flex; align-items: center; gap: 0.45rem; cursor: pointer; }
input[type="checkbox"] {
  width: 1.1rem; height: 1.1rem; margin: 0; accent-color: var(--herald-accent, #1d4ed8);
}
input:disabled, input:disabled + span { cursor: not-allowed; }
table { width: 100%; border-collapse: collapse; }
th, td { padding: 0.45rem 0.4rem; text-align: left; vertical-align: top; }
thead th { font-size: 0.8rem; text-transform: uppercase; letter-spacing: 0.03em; color: var(--herald-muted, #4b5563); }
tbody tr + tr th, tbody tr + tr td { border-top: 1px solid var(--herald-divider, #f3f4f6); }
td.channel, th.channel { text-align: center; width: 4.5rem; }
.type-name { font-weight: 600; }
.type-description { display: block; font-weight: 400; font-size: 0.85rem; color: var(--herald-muted, #4b5563); }
.locked {
  display: inline-block; margin-left: 0.4rem; padding: 0 0.4rem; border-radius: 999px;
  font-size: 0.75rem; font-weight: 600;
  background: var(--herald-locked-bg, #f3f4f6); color: var(--herald-locked-fg, #374151);
}
.times { display: flex; flex-wrap: wrap; gap: 0.75rem 1.5rem; margin-top: 0.5rem; }
input[type="time"] {
  padding: 0.3rem 0.45rem; border: 1px solid var(--herald-border, #9ca3af); border-radius: 0.375rem;
  background: var(--herald-bg, #ffffff);
}
.bar { display: flex; align-items: center; flex-wrap: wrap; gap: 0.75rem; }
.save {
  padding: 0.5rem 1.1rem; border-radius: 0.5rem; cursor: pointer; font-weight: 600;
  border: 1px solid var(--herald-accent, #1d4ed8);
  background: var(--herald-accent, #1d4ed8); color: var(--herald-accent-fg, #ffffff);
}
.save:disabled { opacity: 0.7; cursor: progress; }
.saved { color: var(--herald-success-fg, #166534); font-weight: 600; }
.error {
  margin: 0 0 1rem; padding: 0.6rem 0.8rem; border-radius: 0.5rem; font-size: 0.875rem;
  background: var(--herald-error-bg, #fef2f2); color: var(--herald-error-fg, #991b1b);
  border: 1px solid var(--herald-error-border, #fecaca);
}
.state { color: var(--herald-muted, #4b5563); }
`;

let sheet = null;
function styles() {
  if (sheet === null) {
    sheet = new CSSStyleSheet();
    sheet.replaceSync(STYLE);
  }
  return sheet;
}

function checkbox(label, props, visibleLabel = true) {
  const input = element("input", { type: "checkbox", ...props });
  if (!visibleLabel) {
    input.setAttribute("aria-label", label);
    return input;
  }
  return element("label", {}, input, element("span", { text: label }));
}

export class HeraldPreferences extends HeraldElement {
  static observedAttributes = ["api-url", "user", "token"];

  #prefs = null;
  #session = 0;
  #savedTimer = null;
  #ui;

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    root.adoptedStyleSheets = [styles()];
    const ui = {};
    ui.error = element("div", { class: "error", role: "alert", "data-testid": "herald-pref-error", hidden: true });
    ui.loading = element("p", { class: "state", "data-testid": "herald-pref-loading", text: "Loading preferences…", hidden: true });
    ui.form = element("form", { novalidate: true, hidden: true, onsubmit: (event) => this.#onSubmit(event) });
    root.append(ui.error, ui.loading, ui.form);
    this.#ui = ui;
  }

  /** The preferences as last loaded or saved (the API's JSON), or null. */
  get preferences() {
    return this.#prefs === null ? null : structuredClone(this.#prefs);
  }

  connectedCallback() {
    this.scheduleReload();
  }

  disconnectedCallback() {
    this.#session += 1;
    clearTimeout(this.#savedTimer);
  }

  attributeChangedCallback(_name, before, after) {
    if (before !== after && this.isConnected) this.scheduleReload();
  }

  reload() {
    this.load();
  }

  #path() {
    return `/v1/users/${encodeURIComponent(this.user)}/preferences`;
  }

  /** (Re)load the user's preferences. */
  async load() {
    const session = ++this.#session;
    this.#prefs = null;
    this.#showError(null);
    this.#ui.form.hidden = true;
    if (!this.user || !this.token) return;
    this.#ui.loading.hidden = false;
    try {
      const prefs = await heraldFetch(this.apiUrl, this.token, this.#path());
      if (session !== this.#session) return;
      this.#prefs = prefs;
      this.#renderForm();
    } catch (error) {
      if (session === this.#session) this.#fail(error);
    } finally {
      if (session === this.#session) this.#ui.loading.hidden = true;
    }
  }

  // --- the form ------------------------------------------------------------------------

  #renderForm() {
    const prefs = this.#prefs;
    const form = this.#ui.form;
    const types = prefs.event_types ?? [];

    const switches = element("div", { class: "switches" },
      ...CHANNELS.map(([channel, label]) =>
        checkbox(label, {
          name: `channel-${channel}`,
          role: "switch",
          "data-testid": `herald-pref-channel-${channel}`,
          checked: Boolean(prefs[`${channel}_enabled`]),
        }),
      ),
    );
    const channels = element("fieldset", {},
      element("legend", { text: "Channels" }),
      element("p", { class: "hint", text: "Turn a channel off to get nothing on it (except required notices)." }),
      switches,
    );

    const head = element("tr", {},
      element("th", { scope: "col", text: "Notification" }),
      ...CHANNELS.map(([, label]) => element("th", { scope: "col", class: "channel", text: label })),
    );
    const typeInputs = new Map();
    const rows = types.map((type) => {
      const inputs = new Map();
      typeInputs.set(type.code, inputs);
      const offered = new Set(type.channels ?? []);
      const chosen = new Set(type.enabled ? type.chosen_channels ?? [] : []);
      const name = element("th", { scope: "row" },
        element("span", { class: "type-name", text: type.name || type.code }),
        type.locked ? element("span", { class: "locked", text: "Required" }) : "",
        type.description ? element("span", { class: "type-description", text: type.description }) : "",
      );
      const cells = CHANNELS.map(([channel, label]) => {
        const available = offered.has(channel);
        const what = `${label} for ${type.name || type.code}`;
        const input = checkbox(
          available ? (type.locked ? `${what} (required)` : what) : `${what} (not sent on this channel)`,
          {
            "data-testid": `herald-pref-${type.code}-${channel}`,
            "data-type": type.code,
            "data-channel": channel,
            checked: type.locked ? available : available && chosen.has(channel),
            disabled: type.locked || !available,
          },
          false,
        );
        inputs.set(channel, input);
        return element("td", { class: "channel" }, input);
      });
      return element("tr", { "data-type": type.code }, name, ...cells);
    });
    const table = element("table", {},
      element("thead", {}, head),
      element("tbody", {}, ...rows),
    );
    const perType = element("fieldset", {},
      element("legend", { text: "Notifications" }),
      types.length
        ? element("p", { class: "hint", text: "Choose where each kind of notification reaches you. Required ones cannot be turned off." })
        : element("p", { class: "hint", text: "There are no notification types to choose from." }),
      types.length ? table : "",
    );

    const quiet = prefs.quiet_hours_start !== null && prefs.quiet_hours_start !== undefined;
    const quietToggle = checkbox("Pause email and SMS during quiet hours", {
      name: "quiet",
      "data-testid": "herald-pref-quiet",
      checked: quiet,
      onchange: () => this.#syncQuiet(),
    });
    const start = element("input", { type: "time", name: "quiet-start", "data-testid": "herald-pref-quiet-start", value: prefs.quiet_hours_start ?? "22:00", required: true });
    const end = element("input", { type: "time", name: "quiet-end", "data-testid": "herald-pref-quiet-end", value: prefs.quiet_hours_end ?? "07:00", required: true });
    const zone = prefs.timezone || "UTC";
    const times = element("div", { class: "times" },
      element("label", {}, element("span", { text: "From" }), start),
      element("label", {}, element("span", { text: "Until" }), end),
    );
    const quietSet = element("fieldset", {},
      element("legend", { text: "Quiet hours" }),
      quietToggle,
      times,
      element("p", { class: "hint", "data-testid": "herald-pref-timezone", text: `Times are in your time zone, ${zone}. In-app notifications still arrive.` }),
    );

    const save = element("button", { type: "submit", class: "save", "data-testid": "herald-pref-save", text: "Save preferences" });
    const saved = element("span", { class: "saved", role: "status", "aria-live": "polite" });
    const bar = element("div", { class: "bar" }, save, saved);

    form.replaceChildren(channels, perType, quietSet, bar);
    this.#ui.save = save;
    this.#ui.saved = saved;
    this.#ui.quietTimes = [start, end];
    this.#ui.typeInputs = typeInputs;
    this.#ui.quietToggle = quietToggle.querySelector("input");
    this.#syncQuiet();
    form.hidden = false;
  }

  #syncQuiet() {
    const on = this.#ui.quietToggle.checked;
    for (const input of this.#ui.quietTimes) input.disabled = !on;
  }

  /** The PUT body from the form (what is not shown keeps its stored value). */
  #body() {
    const form = this.#ui.form;
    const prefs = this.#prefs;
    const body = {};
    for (const [channel] of CHANNELS) {
      body[`${channel}_enabled`] = form.elements[`channel-${channel}`].checked;
    }
    if (this.#ui.quietToggle.checked) {
      const [start, end] = this.#ui.quietTimes.map((input) => input.value.slice(0, 5));
      if (!start || !end) throw new HeraldError(422, "validation", "Quiet hours need a start and an end time.");
      if (start === end) throw new HeraldError(422, "validation", "Quiet hours must start and end at different times.");
      body.quiet_hours_start = start;
      body.quiet_hours_end = end;
    } else {
      body.quiet_hours_start = null;
      body.quiet_hours_end = null;
    }
    const overrides = {};
    const shown = new Set();
    for (const type of prefs.event_types ?? []) {
      shown.add(type.code);
      if (type.locked) continue; // mandatory: the user's choices do not apply
      const offered = type.channels ?? [];
      const inputs = this.#ui.typeInputs.get(type.code);
      const checked = offered.filter((channel) => inputs?.get(channel)?.checked);
      const before = type.enabled ? (type.chosen_channels ?? []).filter((c) => offered.includes(c)) : [];
      const changed = checked.length !== before.length || checked.some((c) => !before.includes(c));
      const stored = prefs.event_overrides?.[type.code];
      if (!changed && !stored) continue; // the defaults, untouched
      if (!changed && stored) {
        overrides[type.code] = stored;
      } else if (checked.length === 0) {
        overrides[type.code] = { enabled: false };
      } else {
        overrides[type.code] = { enabled: true, channels: checked.length === offered.length ? null : checked };
      }
    }
    // Choices for event types not listed (inactive ones) are kept as they are.
    for (const [code, choice] of Object.entries(prefs.event_overrides ?? {})) {
      if (!shown.has(code)) overrides[code] = choice;
    }
    body.event_overrides = overrides;
    return body;
  }

  async #onSubmit(event) {
    event.preventDefault();
    if (!this.#prefs) return;
    const session = this.#session;
    this.#showError(null);
    this.#ui.saved.textContent = "";
    this.#ui.saved.removeAttribute("data-testid");
    let body;
    try {
      body = this.#body();
    } catch (error) {
      this.#fail(error);
      return;
    }
    this.#ui.save.disabled = true;
    try {
      const saved = await heraldFetch(this.apiUrl, this.token, this.#path(), { method: "PUT", body });
      if (session !== this.#session) return;
      this.#prefs = saved;
      this.#renderForm();
      // The new form's status line: announced, and findable by tests as the saved state.
      this.#ui.saved.textContent = "Saved.";
      this.#ui.saved.setAttribute("data-testid", "herald-pref-saved");
      this.dispatchEvent(new CustomEvent("herald:saved", { detail: structuredClone(saved), bubbles: true, composed: true }));
      clearTimeout(this.#savedTimer);
      const line = this.#ui.saved;
      this.#savedTimer = setTimeout(() => {
        line.textContent = "";
        line.removeAttribute("data-testid");
      }, 8000);
    } catch (error) {
      if (session === this.#session) this.#fail(error);
    } finally {
      if (this.#ui.save) this.#ui.save.disabled = false;
    }
  }

  #fail(error) {
    const problem = error instanceof HeraldError ? error : new HeraldError(0, "error", String(error?.message ?? error));
    this.dispatchEvent(new CustomEvent("herald:error", { detail: { status: problem.status, type: problem.type, message: problem.message }, bubbles: true, composed: true }));
    if (problem.fatal) this.#ui.form.hidden = true;
    this.#showError(problem.message);
  }

  #showError(message) {
    this.#ui.error.hidden = !message;
    this.#ui.error.textContent = message ?? "";
  }
}

if (!customElements.get("herald-preferences")) customElements.define("herald-preferences", HeraldPreferences);
