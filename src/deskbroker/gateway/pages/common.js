// Shared by the viewer pages: the ticket from the URL's fragment, status messages.

// The ticket rides in the fragment (#ticket=...), which browsers never send to a server
// nor put in a Referer; it is removed from the address bar at once.
export function takeTicket() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  const ticket = params.get("ticket") || "";
  if (ticket) {
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }
  return ticket;
}

export function socketUrl(path, ticket, extra) {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  const query = new URLSearchParams({ ticket: ticket, ...(extra || {}) });
  return `${scheme}//${window.location.host}${path}?${query}`;
}

// The gateway closes a refused WebSocket with 4403 (ticket refused) or 4503 (unavailable)
// and a reason in words.
export function closeMessage(code, reason) {
  if (code === 4403) return `Refused by the gateway: ${reason}`;
  if (code === 4503) return `Unavailable: ${reason}`;
  return reason ? `Disconnected: ${reason}` : "Disconnected";
}

export function setStatus(state, message) {
  const status = document.getElementById("status");
  document.body.dataset.state = state;
  status.textContent = message;
  status.classList.toggle("hidden", state === "connected");
}
