// The console's edit forms: a pool (add or change, with the broker's preview of what the
// definition would take before it is saved), a person, an identity source and the
// power and release plans. Each form sends what the REST API takes; its refusals are
// shown in the form, in the API's own words.
import { api } from "/static/common.js";
import { button, form, h, say, section, table } from "/static/console_ui.js";

const q = encodeURIComponent;

// What the form says of the limits at once, before asking the broker.
function limitsSentence(v) {
  if (!v.enabled) return "No desktops are built: the pool holds what its centers' scans find.";
  const min = v.min_unassigned ?? 0;
  const max = v.max_total ?? 0;
  return `The broker builds desktops while fewer than ${min} are free, and stops at ${max} in total${max < min ? " (that total is below the free count: the total wins)" : ""}.`;
}

// The pool's definition as the API takes it, from the form (and, for an edit, the pool).
function definition(v, pool) {
  const prov = { ...((pool && pool.provisioning) || {}) };
  const parameters = { ...(prov.parameters || {}), name_template: v.name_template };
  for (const key of ["image", "flavor"]) {
    if (v[key]) parameters[key] = v[key];
    else delete parameters[key];
  }
  Object.assign(prov, { enabled: v.enabled, center_id: v.center_id || null, min_unassigned: v.min_unassigned || 0, max_total: v.max_total || 0, parameters });
  const out = { name: v.name, center_ids: v.center_id ? [v.center_id] : [], provisioning: prov };
  if (pool) {
    // What the form does not show is kept as it is.
    out.filters = pool.filters || [];
    out.desktop_ids = pool.desktop_ids || [];
    out.parent_pool_id = pool.parent_pool_id || null;
  }
  return out;
}

function previewNode(seen) {
  return section("Preview", h("p", { class: "note" }, seen.summary),
    table([
      { key: "name", label: "Desktop" }, { key: "power_state", label: "Power" },
      { key: "user", label: "Held by", render: (d) => d.user || "" },
      { key: "other_pools", label: "Also in", render: (d) => d.other_pools.join(", ") },
    ], seen.desktops, { caption: "desktops the pool would take" }));
}

// A pool form: "Add a pool" (pool undefined) or "Edit NAME". onSaved(message) redraws.
export function poolEditor(ctx, centers, onSaved, pool) {
  const prov = (pool && pool.provisioning) || {};
  const params = prov.parameters || {};
  const title = pool ? `Edit ${pool.name}` : "Add a pool";
  const sentence = h("p", { class: "note", "aria-live": "polite" });
  const shown = h("div", { "aria-live": "polite" });
  const names = Object.fromEntries(centers.map((c) => [c.id, c.name]));
  const firstCenter = (pool && pool.center_ids && pool.center_ids[0]) || "";
  const fields = [
    { name: "name", label: "Name", required: true, value: pool ? pool.name : "" },
    { name: "center_id", label: "Center", options: [...(pool && !names[firstCenter] && firstCenter ? [[firstCenter, firstCenter]] : []), ...(pool ? [["", "none"]] : []), ...centers.map((c) => [c.id, c.name])], value: firstCenter },
    { name: "enabled", label: "Provision desktops", type: "checkbox", value: pool ? Boolean(prov.enabled) : true },
    { name: "min_unassigned", label: "Keep this many free", type: "number", value: pool ? prov.min_unassigned ?? 0 : 2, min: 0 },
    { name: "max_total", label: "Never more than", type: "number", value: pool ? prov.max_total ?? 0 : 5, min: 0 },
    { name: "image", label: "Image", value: params.image || "" },
    { name: "flavor", label: "Flavor", value: params.flavor || "" },
    { name: "name_template", label: "Desktop names", value: params.name_template || "{POOL}-{SEQUENCE:3}" },
  ];
  const editor = form(title, fields, pool ? "Save changes" : "Add pool", async (v) => {
    const body = definition(v, pool);
    if (pool) {
      const saved = await api("PATCH", `/admin/pools/${q(pool.id)}`, body);
      await onSaved(`Pool ${saved.name} is saved.`);
    } else {
      const made = await api("POST", "/admin/pools", body);
      await onSaved(`Pool ${made.name} is added.`);
    }
    return "";
  });
  const status = editor.node.querySelector(".status");
  const preview = button(`Preview ${pool ? pool.name : "the pool"}`, async () => {
    const ask = definition(editor.values(), pool);
    if (pool) Object.assign(ask, { pool_id: pool.id, tenant_id: pool.tenant_id });
    try {
      shown.replaceChildren(previewNode(await api("POST", "/admin/pools/preview", ask)));
      say(status, "");
    } catch (error) {
      shown.replaceChildren();
      say(status, error.message, "error");
    }
  });
  editor.node.querySelector(".actions").append(preview);
  const tell = () => {
    sentence.textContent = limitsSentence(editor.values());
  };
  editor.node.addEventListener("input", tell);
  tell();
  editor.node.querySelector(".grid-form").after(sentence);
  editor.node.append(shown);
  return editor.node;
}

// Role, groups, disabled and a new password for one person.
export function userEditor(user, roles, onSaved) {
  const builtIn = ["user", "helpdesk", "auditor", "tenant_admin", "global_admin"];
  const choices = [...builtIn, ...roles.map((r) => r.name).filter((n) => !builtIn.includes(n))];
  if (!choices.includes(user.role)) choices.push(user.role);
  return form(`Edit ${user.username}`, [
    { name: "display_name", label: "Display name", value: user.display_name || "" },
    { name: "email", label: "E-mail", value: user.email || "" },
    { name: "role", label: "Role", options: choices.map((r) => [r, r]), value: user.role },
    { name: "groups", label: "Groups (comma separated)", value: (user.groups || []).join(", ") },
    { name: "disabled", label: "Disabled", type: "checkbox", value: user.disabled },
    { name: "password", label: "New password (empty: unchanged)", type: "password" },
  ], "Save changes", async (v) => {
    const change = {
      display_name: v.display_name,
      email: v.email,
      role: v.role,
      groups: v.groups ? v.groups.split(",").map((g) => g.trim()).filter(Boolean) : [],
      disabled: v.disabled,
    };
    if (v.password) change.password = v.password;
    const saved = await api("PATCH", `/admin/users/${q(user.id)}`, change);
    await onSaved(`${saved.username} is saved.`);
    return "";
  }).node;
}

// Name, domain, order, enabled and the second factor of an identity source.
export function sourceEditor(source, onSaved) {
  return form(`Edit source ${source.name}`, [
    { name: "name", label: "Name", required: true, value: source.name },
    { name: "domain", label: "Domain", value: source.domain || "" },
    { name: "position", label: "Order", type: "number", value: source.position, min: 0 },
    { name: "enabled", label: "Enabled", type: "checkbox", value: source.enabled },
    { name: "second_factor", label: "Second factor", options: ["off", "optional", "required"].map((m) => [m, m]), value: source.second_factor },
  ], "Save changes", async (v) => {
    const saved = await api("PATCH", `/admin/identity-sources/${q(source.id)}`, {
      name: v.name, domain: v.domain, position: v.position ?? 0, enabled: v.enabled, second_factor: v.second_factor,
    });
    await onSaved(`Source ${saved.name} is saved.`);
    return "";
  }).node;
}

const PLAN_CHOICES = {
  "power-plans": { events: ["disconnect", "logout", "idle"], actions: ["suspend", "shutdown", "reboot", "nothing"], noun: "power plan" },
  "release-plans": { events: ["disconnect", "logout", "idle", "session_limit"], actions: ["release", "terminate", "keep"], noun: "release plan" },
};

// A power or release plan: every rule it has, one row each, and one empty row to add a
// rule. Choosing "(remove this rule)" drops a rule; what a row does not show (a power
// rule's warning) is kept as it is.
export function planEditor(kind, onSaved, plan) {
  const choice = PLAN_CHOICES[kind];
  const old = (plan && plan.rules) || [];
  const rows = [...old, {}];
  const fields = rows.flatMap((rule, i) => {
    const n = `Rule ${i + 1}`;
    const none = i < old.length ? "(remove this rule)" : "(no new rule)";
    return [
      { name: `event_${i}`, label: `${n}: on`, options: [["", none], ...choice.events.map((e) => [e, e])], value: rule.event || (plan || i ? "" : choice.events[0]) },
      { name: `after_${i}`, label: `${n}: after (minutes)`, type: "number", value: rule.after_minutes ?? 0, min: 0 },
      { name: `action_${i}`, label: `${n}: do`, options: choice.actions.map((a) => [a, a]), value: rule.action },
    ];
  });
  return form(plan ? `Edit ${choice.noun} ${plan.name}` : `Add a ${choice.noun}`, [
    { name: "name", label: "Name", required: true, value: plan ? plan.name : "" },
    ...fields,
  ], plan ? "Save changes" : "Add plan", async (v) => {
    const rules = rows.map((rule, i) => (v[`event_${i}`]
      ? { ...rule, event: v[`event_${i}`], after_minutes: v[`after_${i}`] ?? 0, action: v[`action_${i}`] }
      : null)).filter(Boolean);
    const saved = plan
      ? await api("PATCH", `/admin/${kind}/${q(plan.id)}`, { name: v.name, rules })
      : await api("POST", `/admin/${kind}`, { name: v.name, rules });
    await onSaved(`The ${choice.noun} ${saved.name} is saved.`);
    return "";
  }).node;
}

// A protocol plan: its protocols in order of preference. An edit keeps the port and the
// settings of each protocol it still lists.
export function protocolPlanEditor(onSaved, plan) {
  const kept = Object.fromEntries(((plan && plan.protocols) || []).map((p) => [p.protocol, p]));
  return form(plan ? `Edit protocol plan ${plan.name}` : "Add a protocol plan", [
    { name: "name", label: "Name", required: true, value: plan ? plan.name : "" },
    { name: "protocols", label: "Protocols, first preferred", required: true, value: Object.keys(kept).join(", "), help: "e.g. html5-vnc, rdp, vnc" },
  ], plan ? "Save changes" : "Add plan", async (v) => {
    const protocols = v.protocols.split(",").map((p) => p.trim().toLowerCase()).filter(Boolean).map((p) => kept[p] || { protocol: p });
    const saved = plan
      ? await api("PATCH", `/admin/protocol-plans/${q(plan.id)}`, { name: v.name, protocols })
      : await api("POST", "/admin/protocol-plans", { name: v.name, protocols });
    await onSaved(`The protocol plan ${saved.name} is saved.`);
    return "";
  }).node;
}

const USER_POWER = [["start", "Users may start their desktop"], ["stop", "Users may shut it down"], ["reboot", "Users may restart it"]];

// A policy's name, desktops per user, and every pool entry it has (the pool, how many of
// its desktops, persistent or pooled, its plans, and what its users may do to their
// desktops' power), one group of fields each, and one empty group to add a pool.
// Choosing "(remove this entry)" as the pool drops an entry; what the form does not show
// of an entry is kept as it is. plans: [protocol plans, power plans, release plans], or
// null when the role cannot read them (the entries' plans are then kept, not shown).
export function policyEditor(policy, pools, plans, onSaved) {
  const old = policy.entries || [];
  const groups = [...old, {}];
  const planKeys = [["protocol_plan_id", "protocol plan"], ["power_plan_id", "power plan"], ["release_plan_id", "release plan"]];
  const fields = groups.flatMap((entry, i) => {
    const n = `Entry ${i + 1}`;
    const allowed = new Set(entry.user_power_actions || []);
    const none = i < old.length ? "(remove this entry)" : "(no new entry)";
    return [
      { name: `pool_${i}`, label: `${n}: pool`, options: [["", none], ...pools.map((p) => [p.id, p.name])], value: entry.pool_id || "" },
      { name: `desktops_${i}`, label: `${n}: desktops of this pool per user`, type: "number", value: entry.desktops ?? 1, min: 1 },
      { name: `assignment_${i}`, label: `${n}: assignment`, options: [["persistent", "persistent"], ["pooled", "pooled"]], value: entry.assignment },
      ...(plans ? planKeys.map(([key, label], k) => ({ name: `${key}_${i}`, label: `${n}: ${label}`, options: [["", "none"], ...plans[k].map((r) => [r.id, r.name])], value: entry[key] || "" })) : []),
      ...USER_POWER.map(([action, label]) => ({ name: `user_${action}_${i}`, label: `${n}: ${label}`, type: "checkbox", value: allowed.has(action) })),
    ];
  });
  return form(`Edit policy ${policy.name}`, [
    { name: "name", label: "Name", required: true, value: policy.name },
    { name: "max_desktops_per_user", label: "Desktops per user (all pools)", type: "number", value: policy.max_desktops_per_user, min: 0 },
    ...fields,
  ], "Save changes", async (v) => {
    const entries = groups.map((entry, i) => (v[`pool_${i}`]
      ? {
        ...entry,
        ...(plans ? Object.fromEntries(planKeys.map(([key]) => [key, v[`${key}_${i}`] || null])) : {}),
        pool_id: v[`pool_${i}`],
        desktops: v[`desktops_${i}`] || 1,
        assignment: v[`assignment_${i}`],
        user_power_actions: USER_POWER.map(([action]) => action).filter((a) => v[`user_${a}_${i}`]),
      }
      : null)).filter(Boolean);
    const saved = await api("PATCH", `/admin/policies/${q(policy.id)}`, {
      name: v.name, max_desktops_per_user: v.max_desktops_per_user ?? 1, entries,
    });
    await onSaved(`Policy ${saved.name} is saved.`);
    return "";
  }).node;
}

// An "Edit X" button that shows its form in `holder` (one editor open at a time).
export function editButton(label, holder, make) {
  return button(label, () => {
    const node = make();
    holder.replaceChildren(node);
    const first = node.querySelector("input, select");
    if (first) first.focus();
  });
}
