// The demo page's script (/ui/demo?user=...): hands the components the session token the
// server minted for this page, wires the "Send a test event" button, and logs the
// components' DOM events. A file, not an inline script: the page's CSP allows none.

const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? "";

const user = meta("herald-user");
const token = meta("herald-token");

for (const element of document.querySelectorAll("herald-inbox, herald-preferences")) {
  element.setAttribute("api-url", window.location.origin);
  element.setAttribute("token", token);
}

const log = document.getElementById("log");

function record(line) {
  const entry = document.createElement("li");
  entry.textContent = `${new Date().toLocaleTimeString()} ${line}`;
  log.prepend(entry);
  while (log.childElementCount > 50) log.lastElementChild.remove();
}

document.addEventListener("herald:click", (event) => {
  record(`herald:click ${event.detail.id} "${event.detail.title}"`);
});
document.addEventListener("herald:read", (event) => {
  record(`herald:read ${event.detail.id} read=${event.detail.is_read}`);
});
document.addEventListener("herald:error", (event) => {
  record(`herald:error ${event.detail.status ?? ""} ${event.detail.message}`);
});
document.addEventListener("herald:saved", () => record("herald:saved preferences"));

const button = document.getElementById("publish");
const status = document.getElementById("publish-status");

button.addEventListener("click", async () => {
  button.disabled = true;
  status.textContent = "Publishing…";
  try {
    const response = await fetch(`/ui/demo/publish?user=${encodeURIComponent(user)}`, {
      method: "POST",
      headers: { Accept: "application/json" },
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
    status.textContent = `Published event ${body.event_id}.`;
    record(`published comment.created ${body.event_id}`);
  } catch (error) {
    status.textContent = `Could not publish: ${error.message}`;
  } finally {
    button.disabled = false;
  }
});
