// Shared by the portal and the console: the REST API with the user's bearer token, and
// DOM building without innerHTML (text from the API is never parsed as markup).

const TOKEN_KEY = "deskbroker.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// One call of the REST API. The answer's JSON (null for 204); a problem document's
// sentence as an ApiError otherwise. A 401 drops the token: the page asks to log in.
export async function api(method, path, body, extra = {}) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(`/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: extra.credentials || "omit",
  });
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    if (response.status === 401) setToken(null);
    const message = (data && (data.detail || data.title)) || `the broker answered ${response.status}`;
    throw new ApiError(response.status, typeof message === "string" ? message : JSON.stringify(message));
  }
  if (extra.withStatus) return { status: response.status, data };
  return data;
}

// h("button", {class: "x", onclick: f}, "text", child...) builds an element.
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

// A message line in a live region, so screen readers hear it too.
export function say(where, text, kind = "info") {
  clear(where, text ? h("p", { class: `note ${kind}`, role: kind === "error" ? "alert" : "status" }, text) : null);
}

export function minutes(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 90) return `about ${Math.max(1, Math.round(seconds))} seconds`;
  const m = Math.round(seconds / 60);
  return `about ${m} minute${m === 1 ? "" : "s"}`;
}

// The login form both pages share: user name and password, the organisation (tenant) in
// a fold, and the domain selector when the tenant has several password sources
// (GET /auth/sources); with ``oidc``, a button per OpenID Connect source. A second factor
// when the source asks for one. Calls done(loginAnswer) at the end.
export function loginForm(done, { oidc = false } = {}) {
  const status = h("div", { class: "status", "aria-live": "polite" });
  const user = h("input", { id: "login-user", name: "username", autocomplete: "username", required: true });
  const pass = h("input", { id: "login-password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const given = new URLSearchParams(location.search).get("tenant") || "";
  const tenant = h("input", { id: "login-tenant", name: "tenant", autocomplete: "organization", value: given });
  const source = h("select", { id: "login-source", name: "source" });
  const sourceRow = h("div", { class: "hidden field" }, h("label", { for: "login-source" }, "Domain"), source);
  const redirects = h("div", { class: "actions" });
  const form = h(
    "form",
    { class: "card login", "aria-label": "Log in" },
    h("h2", {}, "Log in"),
    h("label", { for: "login-user" }, "User name"), user,
    h("label", { for: "login-password" }, "Password"), pass,
    sourceRow,
    h("details", { open: given ? true : null },
      h("summary", {}, "Organisation"),
      h("label", { for: "login-tenant" }, "Organisation (tenant)"), tenant),
    h("button", { type: "submit", class: "primary" }, "Log in"),
    redirects,
    status,
  );
  const loadChoices = async () => {
    const params = tenant.value.trim() ? `?${new URLSearchParams({ tenant: tenant.value.trim() })}` : "";
    let sources = [];
    try {
      sources = (await api("GET", `/auth/sources${params}`)).sources;
    } catch (error) {
      say(status, error.message, "error");
    }
    const passwords = sources.filter((s) => s.kind === "password");
    clear(source, h("option", { value: "" }, "any"),
      passwords.map((s) => h("option", { value: s.name }, s.domain ? `${s.domain} (${s.name})` : s.name)));
    sourceRow.classList.toggle("hidden", passwords.length < 2);
    clear(redirects, oidc ? sources.filter((s) => s.kind === "redirect").map((s) =>
      h("button", { type: "button", onclick: () => {
        const back = new URLSearchParams({ redirect: "/portal/?signin=oidc" });
        const t = tenant.value.trim() ? `&${new URLSearchParams({ tenant: tenant.value.trim() })}` : "";
        location.assign(`/api/v1/auth/oidc/${encodeURIComponent(s.name)}/start?${back}${t}`);
      } }, `Sign in with ${s.name}`)) : []);
  };
  tenant.addEventListener("change", loadChoices);
  loadChoices();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    say(status, "Logging in…");
    const body = { username: user.value, password: pass.value };
    if (tenant.value.trim()) body.tenant = tenant.value.trim();
    if (source.value) body.source = source.value;
    try {
      const answer = await api("POST", "/auth/login", body, { withStatus: true });
      pass.value = "";
      if (answer.status === 202) {
        form.replaceWith(secondFactorForm(answer.data, done));
        return;
      }
      setToken(answer.data.token);
      done(answer.data);
    } catch (error) {
      say(status, error.message, "error");
    }
  });
  return form;
}

// Draws an otpauth:// URI as a QR code on a canvas (qrcode-generator, from npm).
export function qrCanvas(text) {
  const qr = window.qrcode(0, "M");
  qr.addData(text);
  qr.make();
  const count = qr.getModuleCount();
  const scale = 6;
  const margin = 4;
  const size = (count + margin * 2) * scale;
  const canvas = h("canvas", { width: size, height: size, class: "qr", role: "img", "aria-label": "QR code for your authenticator app" });
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff";
  g.fillRect(0, 0, size, size);
  g.fillStyle = "#000";
  for (let r = 0; r < count; r += 1) {
    for (let c = 0; c < count; c += 1) {
      if (qr.isDark(r, c)) g.fillRect((c + margin) * scale, (r + margin) * scale, scale, scale);
    }
  }
  return canvas;
}

export function enrolment(answer) {
  return h("div", { class: "enrolment" },
    qrCanvas(answer.uri),
    h("p", {}, "Scan this code with your authenticator app, or type the secret: "),
    h("code", { class: "secret" }, answer.secret));
}

function secondFactorForm(challenge, done) {
  const status = h("div", { class: "status", "aria-live": "polite" });
  const code = h("input", { id: "totp-code", inputmode: "numeric", autocomplete: "one-time-code", required: true });
  const holder = h("div");
  const form = h("form", { class: "card login", "aria-label": "One-time code" },
    h("h2", {}, "One-time code"),
    h("p", {}, challenge.message),
    holder,
    h("label", { for: "totp-code" }, "Code from your authenticator app"), code,
    h("button", { type: "submit", class: "primary" }, "Continue"),
    status);
  if (challenge.enrol) {
    api("POST", "/auth/login/totp/enrol", { challenge: challenge.challenge })
      .then((answer) => clear(holder, enrolment(answer)))
      .catch((error) => say(status, error.message, "error"));
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const answer = await api("POST", "/auth/login/totp", { challenge: challenge.challenge, code: code.value.trim() });
      setToken(answer.token);
      done(answer);
    } catch (error) {
      say(status, error.message, "error");
    }
  });
  return form;
}

export async function logout() {
  try {
    await api("POST", "/auth/logout");
  } catch {
    // The token may be gone already: logging out locally is what matters.
  }
  setToken(null);
  location.reload();
}
