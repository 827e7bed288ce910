// The console's day-to-day views: dashboard, desktops, sessions, events, jobs. The
// configuration views are in console_config.js. Each view names the permissions that
// show it (any one) and draws itself from the REST API.
import { api } from "/static/common.js";
import { act, button, chart, csv, form, h, saveFile, say, section, selected, table, when } from "/static/console_ui.js";
import { CONFIG_VIEWS, poolChart } from "/static/console_config.js";

const q = encodeURIComponent;

async function all(path) {
  const sep = path.includes("?") ? "&" : "?";
  return (await api("GET", `/admin/${path}${sep}limit=1000`)).items;
}

function count(rows, key) {
  const found = {};
  for (const r of rows) found[r[key]] = (found[r[key]] || 0) + 1;
  return found;
}

async function dashboard(body, ctx) {
  const stats = h("div", { class: "stats" });
  body.append(stats);
  const stat = (label, value) => stats.append(h("div", { class: "card stat" }, h("div", { class: "number" }, value), h("div", {}, label)));
  if (ctx.can("desktops:read")) {
    const desktops = await all("desktops");
    const byState = count(desktops, "power_state");
    stat("desktops", desktops.length);
    stat("assigned", desktops.filter((d) => d.assigned_user_id).length);
    body.append(section("Desktops by state", chart("bar", Object.keys(byState), [{ label: "desktops", data: Object.values(byState) }], { title: "desktops by power state" })));
  }
  if (ctx.can("sessions:read")) {
    const sessions = await all("sessions");
    stat("live sessions", sessions.filter((s) => s.state !== "logged_out").length);
  }
  if (ctx.can("events:read")) {
    // Logins per minute over the last hour, from the event log.
    const since = new Date(Date.now() - 60 * 60 * 1000);
    const params = new URLSearchParams({ kind: "login", since: since.toISOString(), limit: "1000" });
    const logins = (await api("GET", `/admin/events?${params}`)).items;
    const perMinute = new Array(60).fill(0);
    for (const e of logins) {
      const slot = Math.floor((new Date(e.at) - since) / 60000);
      if (slot >= 0 && slot < 60) perMinute[slot] += 1;
    }
    const labels = perMinute.map((_, i) => new Date(since.getTime() + i * 60000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
    stat("logins in the last hour", logins.length);
    body.append(section("Logins per minute (last hour)", chart("bar", labels, [{ label: "logins", data: perMinute, backgroundColor: "#1d4f91" }], { title: "logins per minute" })));
  }
  const problems = [];
  if (ctx.can("centers:read")) {
    for (const c of await all("centers")) {
      if (c.status && c.status !== "ok") problems.push(`Center ${c.name}: ${c.status_message || c.status}`);
    }
  }
  if (ctx.can("pools:read")) {
    const pools = await all("pools");
    for (const p of pools) if (p.last_error) problems.push(`Pool ${p.name}: ${p.last_error}`);
    const charts = h("div");
    body.append(section("Pool fill (last 24 hours)", charts));
    for (const p of pools.slice(0, 4)) charts.append(await poolChart(p));
  }
  if (ctx.can("jobs:read")) {
    for (const j of await all("jobs")) if (j.failures > 0 && j.last_error) problems.push(`Job ${j.kind} ${j.target_id || ""}: ${j.last_error}`);
  }
  body.prepend(section("Needs attention", problems.length ? h("ul", { id: "problems" }, problems.map((p) => h("li", { class: "note error" }, p))) : h("p", { class: "note ok" }, "Nothing needs attention.")));
}

const POWER = ["start", "stop", "suspend", "resume", "reboot"];

async function desktops(body, ctx) {
  const search = h("input", { id: "desktop-search", type: "search", placeholder: "part of a name or address" });
  const state = h("select", { id: "desktop-state" }, ["", "running", "stopped", "suspended", "building", "error", "unknown"].map((s) => h("option", { value: s }, s || "any")));
  const avail = h("select", { id: "desktop-availability" }, ["", "available", "unavailable"].map((s) => h("option", { value: s }, s || "any")));
  const holder = h("div");
  const toolbar = h("div", { class: "toolbar" },
    h("div", {}, h("label", { for: "desktop-search" }, "Search"), search),
    h("div", {}, h("label", { for: "desktop-state" }, "Power state"), state),
    h("div", {}, h("label", { for: "desktop-availability" }, "Availability"), avail));
  const bulk = h("div", { class: "actions", "aria-label": "Bulk actions" });
  body.append(toolbar, bulk, holder);
  let rows = [];
  const draw = () => {
    const text = search.value.trim().toLowerCase();
    const shown = rows.filter((d) => (!text || `${d.name} ${d.address}`.toLowerCase().includes(text))
      && (!state.value || d.power_state === state.value) && (!avail.value || d.availability === avail.value));
    holder.replaceChildren(table([
      { key: "name", label: "Name" }, { key: "address", label: "Address" }, { key: "power_state", label: "Power" },
      { key: "availability", label: "Availability" }, { key: "assigned_user_id", label: "Held by" }, { key: "agent_state", label: "Agent" },
    ], shown, { select: true, caption: "desktops" }));
  };
  const onEach = (label, fn) => act(ctx, async () => {
    const ids = selected(holder);
    if (!ids.length) return "Select desktops first.";
    const failed = [];
    for (const id of ids) {
      try {
        await fn(id);
      } catch (error) {
        failed.push(`${rows.find((d) => d.id === id)?.name || id}: ${error.message}`);
      }
    }
    if (failed.length) throw new Error(`${label} failed for ${failed.join("; ")}`);
    return `${label}: done for ${ids.length} desktop(s).`;
  });
  if (ctx.can("desktops:power")) {
    const action = h("select", { id: "bulk-power", "aria-label": "Power action" }, POWER.map((p) => h("option", { value: p }, p)));
    bulk.append(action, button("Power", onEach("Power", (id) => api("POST", `/admin/desktops/${q(id)}/power`, { action: action.value }))));
  }
  if (ctx.can("desktops:update")) {
    bulk.append(button("Make available", onEach("Make available", (id) => api("PATCH", `/admin/desktops/${q(id)}`, { availability: "available" }))));
    bulk.append(button("Make unavailable", onEach("Make unavailable", (id) => api("PATCH", `/admin/desktops/${q(id)}`, { availability: "unavailable" }))));
  }
  if (ctx.can("assignments:delete")) bulk.append(button("Release", onEach("Release", (id) => api("DELETE", `/admin/assignments/${q(id)}`))));
  if (ctx.can("desktops:delete")) bulk.append(button("Delete", onEach("Delete", (id) => api("DELETE", `/admin/desktops/${q(id)}`)), "danger"));
  for (const input of [search, state, avail]) input.addEventListener("input", draw);
  rows = await all("desktops");
  draw();
}

async function sessions(body, ctx) {
  const rows = await all("sessions");
  const users = ctx.can("users:read") ? Object.fromEntries((await all("users")).map((u) => [u.id, u.username])) : {};
  const desks = ctx.can("desktops:read") ? Object.fromEntries((await all("desktops")).map((d) => [d.id, d.name])) : {};
  body.append(table([
    { key: "user_id", label: "User", render: (s) => users[s.user_id] || s.username || s.user_id },
    { key: "desktop_id", label: "Desktop", render: (s) => desks[s.desktop_id] || s.desktop_id },
    { key: "state", label: "State" }, { key: "client_address", label: "From" },
    { key: "started_at", label: "Since", render: (s) => when(s.started_at || s.created_at) },
  ], rows, {
    caption: "sessions",
    actions: ["sessions:lock", "sessions:logoff", "sessions:end"].some(ctx.can) ? (s) => {
      if (s.state === "logged_out") return [];
      const who = users[s.user_id] || s.username || "the user";
      // Lock and log off go through the desktop's agent (202: queued, in the API's words);
      // "End" is for a session whose agent no longer reports.
      return [
        ctx.can("sessions:lock") ? button(`Lock ${who}'s session`, act(ctx, async () => `Lock sent: ${(await api("POST", `/admin/sessions/${q(s.id)}/lock`)).message}.`)) : null,
        ctx.can("sessions:logoff") ? button(`Log off ${who}`, act(ctx, async () => {
          if (!confirm(`Log ${who} off? Unsaved work is lost.`)) return false;
          const sent = await api("POST", `/admin/sessions/${q(s.id)}/logoff`);
          return `Log-off sent: ${sent.message}.`;
        }), "danger") : null,
        ctx.can("sessions:end") ? button(`End ${who}'s session`, act(ctx, async () => {
          if (!confirm("End this session in the broker? Do this when its desktop's agent no longer reports.")) return false;
          await api("POST", `/admin/sessions/${q(s.id)}/end`, { reason: "ended from the console" });
        }, "The session is ended."), "danger") : null,
      ];
    } : undefined,
  }));
  const live = rows.filter((s) => s.state !== "logged_out");
  if (ctx.can("sessions:message") && live.length) {
    body.append(form("Send a message", [
      { name: "session_id", label: "To", options: live.map((s) => [s.id, `${users[s.user_id] || s.username || s.user_id} on ${desks[s.desktop_id] || s.desktop_id}`]) },
      { name: "message", label: "Message", required: true },
    ], "Send", async (v) => `Message sent: ${(await api("POST", `/admin/sessions/${q(v.session_id)}/message`, { message: v.message })).message}.`).node);
  }
}

const EVENT_COLUMNS = ["at", "kind", "actor", "user_id", "desktop_id", "pool_id", "detail"];

async function events(body, ctx) {
  const kind = h("input", { id: "event-kind", placeholder: "e.g. login, login_failed" });
  const since = h("input", { id: "event-since", type: "datetime-local" });
  const holder = h("div");
  let rows = [];
  const load = async () => {
    const params = new URLSearchParams({ limit: "1000" });
    if (kind.value.trim()) params.set("kind", kind.value.trim());
    if (since.value) params.set("since", new Date(since.value).toISOString());
    rows = (await api("GET", `/admin/events?${params}`)).items;
    holder.replaceChildren(table(EVENT_COLUMNS.map((c) => ({ key: c, label: c, render: c === "at" ? (e) => when(e.at) : undefined })), rows, { caption: "events" }));
  };
  const filter = h("form", { class: "toolbar", "aria-label": "Filter events" },
    h("div", {}, h("label", { for: "event-kind" }, "Kind"), kind),
    h("div", {}, h("label", { for: "event-since" }, "Since"), since),
    h("button", { type: "submit" }, "Filter"),
    button("Export CSV", () => saveFile("deskbroker-events.csv", "text/csv", csv(rows, EVENT_COLUMNS))));
  filter.addEventListener("submit", (event) => {
    event.preventDefault();
    load().catch((error) => say(ctx.status, error.message, "error"));
  });
  body.append(filter, holder);
  await load();
}

async function jobs(body, ctx) {
  if (ctx.can("nodes:read")) {
    // A node whose heartbeat is older than a few seconds is about to be reaped by another.
    const age = (n) => Math.round((Date.now() - new Date(n.heartbeat_at)) / 1000);
    body.append(section("Cluster nodes", table([
      { key: "id", label: "Node" }, { key: "host", label: "Host" }, { key: "pid", label: "PID" },
      { key: "http_workers", label: "HTTP workers" }, { key: "version", label: "Version" },
      { key: "started_at", label: "Started", render: (n) => when(n.started_at) },
      { key: "heartbeat_at", label: "Last heartbeat", render: (n) => `${age(n)} s ago` },
    ], await all("nodes"), { caption: "cluster nodes" })));
  }
  if (!ctx.can("jobs:read")) return;
  body.append(section("Background jobs", table([
    { key: "kind", label: "Kind" }, { key: "target_id", label: "Target" }, { key: "lease_owner", label: "Node" },
    { key: "next_run_at", label: "Next run", render: (j) => when(j.next_run_at) }, { key: "runs", label: "Runs" },
    { key: "failures", label: "Failures" }, { key: "last_error", label: "Last error" },
  ], await all("jobs"), { caption: "jobs" })));
  if (ctx.can("provisioning-tasks:read")) {
    body.append(section("Provisioning tasks", table([
      { key: "desktop_name", label: "Desktop" }, { key: "state", label: "State" }, { key: "pool_id", label: "Pool" },
      { key: "updated_at", label: "Changed", render: (t) => when(t.updated_at) }, { key: "error", label: "Error" },
    ], await all("provisioning-tasks"), { caption: "provisioning tasks" })));
  }
}

export const VIEWS = [
  { id: "dashboard", title: "Dashboard", needs: ["desktops:read", "pools:read", "sessions:read"], draw: dashboard },
  { id: "desktops", title: "Desktops", needs: ["desktops:read"], draw: desktops },
  { id: "sessions", title: "Sessions", needs: ["sessions:read"], draw: sessions },
  ...CONFIG_VIEWS,
  { id: "events", title: "Events and audit", needs: ["events:read"], draw: events },
  { id: "jobs", title: "Nodes and jobs", needs: ["jobs:read", "nodes:read"], draw: jobs },
];
