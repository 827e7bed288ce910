// The admin console's shell: log in, learn what the role allows (GET /client/grants),
// and show one view per section. Every button calls the REST API with the user's token,
// so the API's permission checks are the console's; a button the role does not allow
// is simply not drawn.
import { api, clear, h, loginForm, logout, say, token } from "/static/common.js";
import { VIEWS } from "/static/console_views.js";

const main = document.getElementById("main");
const bar = document.getElementById("user-bar");
const nav = document.getElementById("nav");

const grants = { set: new Set(), role: "" };

export function can(permission) {
  return grants.set.has(permission);
}

function current() {
  const name = location.hash.replace(/^#/, "") || "dashboard";
  return VIEWS.find((v) => v.id === name) || VIEWS[0];
}

function drawNav() {
  const active = current();
  clear(nav, h("ul", {},
    VIEWS.filter((v) => v.needs.some(can)).map((v) =>
      h("li", {}, h("a", { href: `#${v.id}`, "aria-current": v === active ? "page" : null }, v.title)))));
}

async function show(note) {
  drawNav();
  const view = current();
  const status = h("div", { class: "status", "aria-live": "polite" });
  const body = h("div");
  clear(main, h("h2", { id: "view-title" }, view.title), status, body);
  if (!view.needs.some(can)) {
    say(status, `Your role ${grants.role} does not show ${view.title.toLowerCase()}.`);
    return;
  }
  try {
    await view.draw(body, { can, role: grants.role, status, refresh: show });
    if (typeof note === "string" && note) say(status, note, "ok");
  } catch (error) {
    say(status, error.message, "error");
  }
}

async function signedIn() {
  try {
    const mine = await api("GET", "/client/grants");
    grants.set = new Set(mine.permissions);
    grants.role = mine.role;
    clear(bar, h("span", {}, `${mine.username} (${mine.role})`), h("button", { type: "button", onclick: logout }, "Log out"));
    if (!grants.set.size) {
      clear(nav);
      clear(main, h("p", { class: "note" }, "Your account has no administrative role: your desktops are in the portal."),
        h("a", { href: "/portal/" }, "Open the portal"));
      return;
    }
    show();
  } catch (error) {
    if (!token()) return showLogin();
    say(main, error.message, "error");
  }
}

function showLogin() {
  clear(bar);
  clear(nav);
  clear(main, loginForm(signedIn));
  document.getElementById("login-user").focus();
}

window.addEventListener("hashchange", () => {
  if (token()) show();
});

if (token()) signedIn();
else showLogin();
