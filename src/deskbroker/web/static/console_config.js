// The console's configuration views: centers, images, pools (with their history),
// policies, identity sources and rules (with the explain tool), tenants, roles and users.
import { api, ApiError } from "/static/common.js";
import { editButton, planEditor, policyEditor, poolEditor, protocolPlanEditor, sourceEditor, userEditor } from "/static/console_edit.js";
import { act, button, chart, form, h, section, table, when } from "/static/console_ui.js";

const q = encodeURIComponent;

async function all(path) {
  return (await api("GET", `/admin/${path}?limit=1000`)).items;
}

const byName = (rows) => rows.map((r) => [r.id, r.name]);

async function centers(body, ctx) {
  const rows = await all("centers");
  body.append(table([
    { key: "name", label: "Name" }, { key: "kind", label: "Kind" },
    { key: "status", label: "Status", render: (c) => `${c.status}${c.status_message ? `: ${c.status_message}` : ""}` },
    { key: "last_scan_at", label: "Last scan", render: (c) => when(c.last_scan_at) },
    { key: "vouched_by_global_admin", label: "Vouched", render: vouchWords },
  ], rows, {
    caption: "centers",
    actions: (c) => [
      // Only a global administrator in person vouches (the API refuses anyone else).
      ctx.role === "global_admin" ? vouchButton(ctx, c) : null,
      ctx.can("centers:scan") ? button(`Test connection to ${c.name}`, act(ctx, async () => {
        const catalog = await api("GET", `/admin/centers/${q(c.id)}/catalog`);
        const counts = Object.entries(catalog).filter(([, v]) => Array.isArray(v)).map(([k, v]) => `${v.length} ${k}`);
        return `${c.name} answers: ${counts.join(", ") || "connected"}.`;
      })) : null,
      ctx.can("centers:scan") ? button(`Scan ${c.name} now`, act(ctx, () => api("POST", `/admin/centers/${q(c.id)}/scan`), `A scan of ${c.name} is queued.`)) : null,
      ctx.can("centers:delete") ? button(`Delete center ${c.name}`, act(ctx, async () => {
        if (!confirm(`Delete center ${c.name}?`)) return false;
        try {
          await api("DELETE", `/admin/centers/${q(c.id)}`);
        } catch (error) {
          // Desktops still waiting for the center to terminate them: a cloud gone for
          // good never will, so offer the forced delete, saying what it leaves behind.
          if (!(error instanceof ApiError) || error.status !== 409 || !error.message.includes("still removing")) throw error;
          if (!confirm(`${error.message}.\n\nIf its cloud is gone for good, delete it anyway? The broker stops tracking those machines (they may still exist); the event center.machines_abandoned lists them for a clean-up by hand.`)) return false;
          await api("DELETE", `/admin/centers/${q(c.id)}?force=true`);
          return `Deleted ${c.name}; the machines it was still removing are listed in the event log (center.machines_abandoned).`;
        }
        return `Deleted ${c.name}.`;
      }), "danger") : null,
    ],
  }));
  if (!ctx.can("centers:create")) return;
  const add = form("Add an OpenStack center", [
    { name: "name", label: "Name", required: true },
    { name: "auth_url", label: "Keystone URL (v3)", required: true, help: "e.g. https://keystone.example.org:5000/v3" },
    { name: "project_name", label: "Project", required: true },
    { name: "username", label: "User", required: true },
    { name: "password", label: "Password", type: "password", required: true },
    { name: "user_domain_name", label: "User domain", value: "Default" },
    { name: "project_domain_name", label: "Project domain", value: "Default" },
    { name: "default_network", label: "Network for new desktops" },
    { name: "scan_interval_s", label: "Scan every (seconds)", type: "number", value: 60 },
  ], "Add and test", async (v) => {
    const params = { auth_url: v.auth_url, project_name: v.project_name, username: v.username, user_domain_name: v.user_domain_name, project_domain_name: v.project_domain_name };
    if (v.default_network) params.default_network = v.default_network;
    const made = await api("POST", "/admin/centers", { name: v.name, kind: "openstack", params, secrets: { password: v.password }, scan_interval_s: v.scan_interval_s || 60 });
    const catalog = await api("GET", `/admin/centers/${q(made.id)}/catalog`);
    const counts = Object.entries(catalog).filter(([, x]) => Array.isArray(x)).map(([k, x]) => `${x.length} ${k}`);
    await ctx.refresh(`Center ${made.name} is added and answers (${counts.join(", ")}).`);
    return "";
  });
  body.append(add.node);
}

// Whether a global administrator vouches for the center's cloud: only then do pools offered
// to a global administrator take its desktops by their filters alone.
function vouchWords(c) {
  if (c.vouched_by_global_admin === true) return "yes";
  return c.vouched_by_global_admin === false ? "no" : "no (not recorded)";
}

function vouchButton(ctx, c) {
  const vouched = c.vouched_by_global_admin === true;
  const label = vouched ? `Withdraw the vouch for ${c.name}` : `Vouch for ${c.name}`;
  return button(label, act(ctx, async () => {
    const question = vouched
      ? `Withdraw your vouch for ${c.name}? Pools offered to a global administrator that take desktops by their filters alone let go of its desktops at once.`
      : `Vouch for ${c.name}? Only if you know who controls its cloud: pools offered to a global administrator will take its desktops by their filters alone.`;
    if (!confirm(question)) return false;
    await api("PATCH", `/admin/centers/${q(c.id)}`, { vouched_by_global_admin: !vouched });
    return vouched ? `You no longer vouch for ${c.name}.` : `You vouch for ${c.name}.`;
  }));
}

async function images(body) {
  body.append(table([
    { key: "name", label: "Name" }, { key: "os", label: "OS" }, { key: "center_id", label: "Center" }, { key: "external_id", label: "Id in the center" },
  ], await all("images"), { caption: "images" }));
}

export async function poolChart(pool, hours = 24) {
  const history = await api("GET", `/admin/pools/${q(pool.id)}/history?hours=${hours}`);
  const labels = history.points.map((p) => new Date(p.at).toLocaleTimeString());
  const series = (key, label) => ({ label, data: history.points.map((p) => p[key]) });
  const box = chart("line", labels, [series("total", "total"), series("unassigned", "unassigned"), series("in_flight", "being built"), series("waiting_users", "users waiting")], { title: `${pool.name}: ${history.points.length} samples` });
  box.dataset.pool = pool.id;
  return box;
}

function limitsText(p) {
  const prov = p.provisioning || {};
  if (!prov.enabled) return "no provisioning";
  return `keeps ${prov.min_unassigned} free, at most ${prov.max_total}`;
}

async function pools(body, ctx) {
  const rows = await all("pools");
  const charts = h("div", { id: "pool-charts" });
  const editing = h("div", { id: "pool-editor" });
  const centerRows = ctx.can("centers:read") && (ctx.can("pools:create") || ctx.can("pools:update")) ? await all("centers") : [];
  body.append(table([
    { key: "name", label: "Name" }, { key: "status_message", label: "Status" },
    { key: "provisioning", label: "Limits", render: limitsText }, { key: "last_error", label: "Last error" },
  ], rows, {
    caption: "pools",
    actions: (p) => [
      button(`History of ${p.name}`, async () => charts.replaceChildren(section(`History of ${p.name}`, await poolChart(p)))),
      ctx.can("pools:update") ? editButton(`Edit ${p.name}`, editing, () => poolEditor(ctx, centerRows, ctx.refresh, p)) : null,
    ],
  }), editing, charts);
  if (!ctx.can("pools:create")) return;
  body.append(poolEditor(ctx, centerRows, ctx.refresh));
}

async function policies(body, ctx) {
  const poolRows = await all("pools");
  const names = Object.fromEntries(byName(poolRows));
  const policyEditing = h("div", { id: "policy-editor" });
  const plans = ctx.can("protocol-plans:read") ? await Promise.all(["protocol-plans", "power-plans", "release-plans"].map((k) => all(k).then((rows) => rows.map((r) => ({ ...r, kind: k }))))) : null;
  body.append(table([
    { key: "name", label: "Name" },
    { key: "entries", label: "Pools", render: (p) => (p.entries || []).map((e) => `${names[e.pool_id] || e.pool_id} (${e.assignment}, ${e.desktops}${(e.user_power_actions || []).length ? `, users may ${e.user_power_actions.join("/")}` : ""})`).join(", ") },
    { key: "max_desktops_per_user", label: "Desktops per user" },
  ], await all("policies"), {
    caption: "policies",
    actions: ctx.can("policies:update") ? (p) => [editButton(`Edit policy ${p.name}`, policyEditing, () => policyEditor(p, poolRows, plans, ctx.refresh))] : undefined,
  }), policyEditing);
  if (ctx.can("protocol-plans:read")) {
    const editing = h("div", { id: "plan-editor" });
    const ruleText = (p) => p.kind === "protocol-plans" ? (p.protocols || []).map((x) => x.protocol).join(", ") : (p.rules || []).map((r) => `on ${r.event} after ${r.after_minutes} min: ${r.action}`).join("; ");
    body.append(section("Plans", table([{ key: "kind", label: "Kind" }, { key: "name", label: "Name" }, { key: "rules", label: "Rules", render: ruleText }], (plans || []).flat(), {
      caption: "plans",
      actions: (p) => [ctx.can(`${p.kind}:update`) ? editButton(`Edit ${p.name}`, editing, () => p.kind === "protocol-plans" ? protocolPlanEditor(ctx.refresh, p) : planEditor(p.kind, ctx.refresh, p)) : null],
    }), editing));
    if (ctx.can("protocol-plans:create")) body.append(protocolPlanEditor(ctx.refresh));
    for (const kind of ["power-plans", "release-plans"]) {
      if (ctx.can(`${kind}:create`)) body.append(planEditor(kind, ctx.refresh));
    }
  }
  if (!ctx.can("policies:create")) return;
  body.append(form("Add a policy", [
    { name: "name", label: "Name", required: true },
    { name: "pool_id", label: "Pool", options: byName(poolRows) },
    { name: "desktops", label: "Desktops per user", type: "number", value: 1, min: 1 },
    { name: "assignment", label: "Assignment", options: [["persistent", "persistent"], ["pooled", "pooled"]] },
    { name: "user_start", label: "Users may start their desktop", type: "checkbox" },
    { name: "user_stop", label: "Users may shut it down", type: "checkbox" },
    { name: "user_reboot", label: "Users may restart it", type: "checkbox" },
  ], "Add policy", async (v) => {
    const user_power_actions = ["start", "stop", "reboot"].filter((a) => v[`user_${a}`]);
    const made = await api("POST", "/admin/policies", { name: v.name, entries: [{ pool_id: v.pool_id, desktops: v.desktops || 1, assignment: v.assignment, user_power_actions }] });
    await ctx.refresh(`Policy ${made.name} is added.`);
    return "";
  }).node);
}

async function identity(body, ctx) {
  const sources = await all("identity-sources");
  const sourceNames = Object.fromEntries(byName(sources));
  const sourceEditing = h("div", { id: "source-editor" });
  body.append(section("Identity sources", table([
    { key: "name", label: "Name" }, { key: "kind", label: "Kind" }, { key: "domain", label: "Domain" }, { key: "enabled", label: "Enabled" },
    { key: "second_factor", label: "Second factor" },
  ], sources, {
    caption: "identity sources",
    actions: ctx.can("identity-sources:update") ? (src) => [editButton(`Edit source ${src.name}`, sourceEditing, () => sourceEditor(src, ctx.refresh))] : undefined,
  }), sourceEditing));
  const policyRows = ctx.can("policies:read") ? await all("policies") : [];
  const policyNames = Object.fromEntries(byName(policyRows));
  if (ctx.can("assignment-rules:read")) {
    body.append(section("Assignment rules", table([
      { key: "position", label: "#" }, { key: "name", label: "Name" },
      { key: "identity_source_id", label: "Source", render: (r) => sourceNames[r.identity_source_id] || r.identity_source_id },
      { key: "conditions", label: "When" }, { key: "policy_id", label: "Policy", render: (r) => policyNames[r.policy_id] || "" }, { key: "role", label: "Role" },
    ], await all("assignment-rules"), { caption: "assignment rules" })));
  }
  if (ctx.can("assignment-rules:create")) {
    body.append(form("Add a rule", [
      { name: "identity_source_id", label: "Source", options: byName(sources) },
      { name: "name", label: "Name", required: true },
      { name: "group", label: "Group (empty: everyone)" },
      { name: "policy_id", label: "Policy", options: [["", "none"], ...byName(policyRows)] },
      { name: "role", label: "Role", options: ["user", "helpdesk", "auditor", "tenant_admin"].map((r) => [r, r]) },
    ], "Add rule", async (v) => {
      const rule = { identity_source_id: v.identity_source_id, name: v.name, role: v.role, policy_id: v.policy_id || null };
      if (v.group) rule.conditions = { group: v.group };
      await api("POST", "/admin/assignment-rules", rule);
      await ctx.refresh(`Rule ${v.name} is added.`);
    return "";
    }).node);
  }
  if (ctx.can("explain:read")) {
    const out = h("pre", { class: "card", "aria-live": "polite" });
    const explain = form("Explain: what would this user get?", [
      { name: "username", label: "User name", required: true },
      { name: "client_address", label: "From address" },
      { name: "at", label: "At (HH:MM)" },
    ], "Explain", async (v) => {
      const ask = { username: v.username };
      if (v.client_address) ask.client_address = v.client_address;
      if (v.at) ask.at = v.at;
      out.textContent = JSON.stringify(await api("POST", "/admin/explain", ask), null, 2);
      return "";
    });
    body.append(explain.node, out);
  }
}

async function tenants(body) {
  body.append(table([{ key: "name", label: "Name" }, { key: "created_at", label: "Since", render: (t) => when(t.created_at) }], await all("tenants"), { caption: "tenants" }));
}

async function people(body, ctx) {
  if (ctx.can("users:read")) {
    const roleRows = ctx.can("users:update") && ctx.can("roles:read") ? await all("roles") : [];
    const editing = h("div", { id: "user-editor" });
    body.append(section("Users and admins", table([
      { key: "username", label: "User" }, { key: "role", label: "Role" }, { key: "disabled", label: "Disabled" },
      { key: "last_login_at", label: "Last login", render: (u) => when(u.last_login_at) },
    ], await all("users"), {
      caption: "users",
      actions: ctx.can("users:unlock") || ctx.can("users:update") ? (u) => [
        ctx.can("users:unlock") ? button(`Unlock ${u.username}`, act(ctx, () => api("POST", `/admin/users/${q(u.id)}/unlock`), `${u.username} is unlocked.`)) : null,
        ctx.can("users:update") ? editButton(`Edit ${u.username}`, editing, () => userEditor(u, roleRows, ctx.refresh)) : null,
      ] : undefined,
    }), editing));
  }
  if (ctx.can("roles:read")) {
    body.append(section("Custom roles", table([{ key: "name", label: "Name" }, { key: "permissions", label: "Permissions", render: (r) => r.permissions.join(", ") }], await all("roles"), { caption: "roles" })));
  }
}

export const CONFIG_VIEWS = [
  { id: "pools", title: "Pools", needs: ["pools:read"], draw: pools },
  { id: "centers", title: "Centers", needs: ["centers:read"], draw: centers },
  { id: "images", title: "Images", needs: ["images:read"], draw: images },
  { id: "policies", title: "Policies and plans", needs: ["policies:read"], draw: policies },
  { id: "identity", title: "Identity and rules", needs: ["identity-sources:read"], draw: identity },
  { id: "tenants", title: "Tenants", needs: ["tenants:read"], draw: tenants },
  { id: "people", title: "Users and roles", needs: ["users:read", "roles:read"], draw: people },
];
