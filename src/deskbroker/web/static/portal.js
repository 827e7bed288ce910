// The user portal: log in, see your desktops and queue places with live status, connect,
// release; OpenID Connect sign-in lands here; authenticator enrolment with its QR code.
import { api, clear, enrolment, h, loginForm, logout, minutes, say, setToken, token } from "/static/common.js";

const main = document.getElementById("main");
const bar = document.getElementById("user-bar");
const REFRESH_MS = 5000;
let refresher = null;
let lastOffers = [];

function download(descriptor) {
  const blob = new Blob([descriptor.content], { type: descriptor.media_type });
  const link = h("a", { href: URL.createObjectURL(blob), download: descriptor.filename, class: "hidden" });
  document.body.append(link);
  link.click();
  setTimeout(() => {
    URL.revokeObjectURL(link.href);
    link.remove();
  }, 1000);
}

async function connect(desktop, status) {
  say(status, `Connecting to ${desktop.name}…`);
  try {
    // Say this is a browser: the plan then gives its HTML5 desktop (or, with no gateway, a file).
    const answer = await api("POST", `/client/desktops/${encodeURIComponent(desktop.id)}/connect`, { client: "browser" }, { withStatus: true });
    if (answer.status === 202) {
      say(status, `${answer.data.message} (${minutes(answer.data.estimate_s)}); trying again shortly.`);
      setTimeout(() => connect(desktop, status), Math.max(1, answer.data.retry_after_s) * 1000);
      return;
    }
    const descriptor = answer.data;
    if (descriptor.launch_url) {
      say(status, `Opening ${desktop.name} in this browser…`);
      location.assign(descriptor.launch_url);
      return;
    }
    download(descriptor);
    say(status, `${descriptor.filename} is downloaded: open it with your ${descriptor.protocol.toUpperCase()} viewer (${descriptor.host}:${descriptor.port}).`, "ok");
  } catch (error) {
    say(status, error.message, "error");
  }
}

async function release(desktop, status) {
  if (!confirm(`Give ${desktop.name} back? Unsaved work on it may be lost.`)) return;
  try {
    await api("POST", `/client/desktops/${encodeURIComponent(desktop.id)}/release`);
    say(status, `${desktop.name} is released.`, "ok");
    refresh();
  } catch (error) {
    say(status, error.message, "error");
  }
}

// The power buttons a policy may give a user (the desktop's power_actions).
const POWER_WORDS = {
  start: { label: "Start", done: "is starting" },
  stop: { label: "Shut down", done: "is shutting down", ask: "Shut down %s? Unsaved work on it is lost." },
  reboot: { label: "Restart", done: "is restarting", ask: "Restart %s? Unsaved work on it is lost." },
};

async function power(desktop, action) {
  const words = POWER_WORDS[action];
  const status = document.getElementById("portal-status");
  if (words.ask && !confirm(words.ask.replace("%s", desktop.name))) return;
  try {
    await api("POST", `/client/desktops/${encodeURIComponent(desktop.id)}/power`, { action });
    say(status, `${desktop.name} ${words.done}.`, "ok");
    refresh();
  } catch (error) {
    say(status, error.message, "error");
  }
}

const STATE_WORDS = {
  running: "ready",
  building: "being built",
  stopped: "stopped: connecting starts it",
  suspended: "suspended: connecting resumes it",
  error: "in error: ask your helpdesk",
  unknown: "state unknown",
};

// "In 20 minutes: suspend (power plan, after disconnect)".
function planWords(next) {
  if (!next || !next.action || !next.due_at) return null;
  const seconds = Math.max(0, (new Date(next.due_at) - Date.now()) / 1000);
  const action = next.action.replaceAll("_", " ");
  return h("p", { class: "plan" }, `In ${minutes(seconds)}: ${action} (${next.plan} plan, after ${next.trigger})`);
}

function desktopCard(desktop, next) {
  const status = h("div", { class: "status", "aria-live": "polite" });
  return h("li", { class: "card desktop", dataset: { desktop: desktop.id } },
    h("h3", {}, desktop.name),
    h("p", { class: `state state-${desktop.power_state}` }, STATE_WORDS[desktop.power_state] || desktop.power_state),
    planWords(next),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "primary", onclick: () => connect(desktop, status) }, `Connect to ${desktop.name}`),
      (desktop.power_actions || []).filter((a) => POWER_WORDS[a]).map((a) =>
        h("button", { type: "button", onclick: () => power(desktop, a) }, `${POWER_WORDS[a].label} ${desktop.name}`)),
      h("button", { type: "button", onclick: () => release(desktop, status) }, "Release")),
    status);
}

function queueCard(entry) {
  return h("li", { class: "card queued" },
    h("h3", {}, entry.pool_name || "A desktop"),
    h("p", { class: "state state-queued" }, `Queued: number ${entry.position} (${minutes(entry.estimate_s)})`),
    h("p", {}, entry.message));
}

async function refresh() {
  const list = document.getElementById("desktops");
  if (!list) return;
  try {
    const [mine, plans] = await Promise.all([api("GET", "/client/desktops"), api("GET", "/client/plans")]);
    const next = Object.fromEntries(plans.items.map((p) => [p.desktop_id, p]));
    const cards = [...mine.desktops.map((d) => desktopCard(d, next[d.id])), ...mine.queue.map(queueCard)];
    // Offers of the login that are neither held nor queued (e.g. "no desktop yet").
    for (const offer of lastOffers) {
      const known = mine.desktops.some((d) => d.pool_id === offer.pool_id) || mine.queue.some((q) => q.pool_id === offer.pool_id);
      if (!known && offer.status !== "assigned") cards.push(h("li", { class: "card" }, h("h3", {}, offer.pool_name), h("p", {}, offer.message)));
    }
    if (!cards.length) cards.push(h("li", { class: "card empty" }, "You have no desktop. Log in again later, or ask your helpdesk."));
    clear(list, cards);
  } catch (error) {
    if (!token()) return showLogin();
    say(document.getElementById("portal-status"), error.message, "error");
  }
}

function securitySection() {
  const status = h("div", { class: "status", "aria-live": "polite" });
  const holder = h("div");
  const code = h("input", { id: "enrol-code", inputmode: "numeric", autocomplete: "one-time-code" });
  const confirmForm = h("form", { class: "hidden", "aria-label": "Confirm the authenticator" },
    h("label", { for: "enrol-code" }, "First code from the app"), code,
    h("button", { type: "submit" }, "Confirm"));
  confirmForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("POST", "/me/totp/confirm", { code: code.value.trim() });
      clear(holder);
      confirmForm.classList.add("hidden");
      say(status, "Your authenticator app is set up: sign-ins will ask for its code.", "ok");
    } catch (error) {
      say(status, error.message, "error");
    }
  });
  const start = h("button", { type: "button", id: "enrol-start" }, "Set up an authenticator app");
  start.addEventListener("click", async () => {
    try {
      const answer = await api("POST", "/me/totp");
      clear(holder, enrolment(answer));
      confirmForm.classList.remove("hidden");
      code.focus();
    } catch (error) {
      say(status, error.message, "error");
    }
  });
  return h("section", { class: "card", "aria-labelledby": "security-title" },
    h("h2", { id: "security-title" }, "Second factor"), start, holder, confirmForm, status);
}

function showDesktops(login) {
  if (login && login.offers) lastOffers = login.offers;
  clear(bar,
    h("span", {}, login && login.username ? `Signed in as ${login.username}` : "Signed in"),
    h("button", { type: "button", onclick: logout }, "Log out"));
  clear(main,
    h("h2", {}, "Your desktops"),
    h("div", { id: "portal-status", "aria-live": "polite" }),
    h("ul", { id: "desktops", class: "cards" }),
    securitySection());
  refresh();
  clearInterval(refresher);
  refresher = setInterval(refresh, REFRESH_MS);
}

function showLogin() {
  clearInterval(refresher);
  clear(bar);
  clear(main, loginForm(showDesktops, { oidc: true }));
  document.getElementById("login-user").focus();
}

async function start() {
  const params = new URLSearchParams(location.search);
  if (params.get("signin") === "oidc") {
    // The callback left a one-time code in an HttpOnly cookie scoped to the exchange:
    // trade it for the token once; no token was ever in a URL.
    history.replaceState(null, "", "/portal/");
    try {
      const answer = await api("POST", "/auth/oidc/exchange", undefined, { credentials: "same-origin" });
      setToken(answer.token);
      return showDesktops(answer);
    } catch (error) {
      showLogin();
      say(main.querySelector(".login .status"), `The sign-in did not finish: ${error.message}`, "error");
      return;
    }
  }
  if (!token()) return showLogin();
  try {
    const me = await api("GET", "/client/me");
    showDesktops(me);
  } catch {
    showLogin();
  }
}

start();
