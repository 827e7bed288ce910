// Building blocks of the console's views: tables, forms, charts, CSV.
import { clear, h, say } from "/static/common.js";

export function when(value) {
  if (!value) return "";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? String(value) : d.toLocaleString();
}

function cellText(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

// columns: [{key, label, render?(row) -> Node|string}]; actions(row) -> [Node] (optional).
export function table(columns, rows, { actions, caption, select } = {}) {
  const head = h("tr", {},
    select ? h("th", { scope: "col" }, h("span", { class: "hidden" }, "Select")) : null,
    columns.map((c) => h("th", { scope: "col" }, c.label)),
    actions ? h("th", { scope: "col" }, "Actions") : null);
  const body = rows.map((row) => h("tr", { dataset: { id: row.id || "" } },
    select ? h("td", {}, h("input", { type: "checkbox", "aria-label": `Select ${row.name || row.id}`, dataset: { id: row.id } })) : null,
    columns.map((c) => h("td", {}, c.render ? c.render(row) : cellText(row[c.key]))),
    actions ? h("td", {}, h("div", { class: "actions" }, actions(row))) : null));
  if (!rows.length) body.push(h("tr", {}, h("td", { colspan: columns.length + (actions ? 1 : 0) + (select ? 1 : 0) }, "Nothing here yet.")));
  return h("div", { class: "table-wrap" },
    h("table", {}, caption ? h("caption", { class: "hidden" }, caption) : null, h("thead", {}, head), h("tbody", {}, body)));
}

export function selected(wrap) {
  return [...wrap.querySelectorAll("tbody input[type=checkbox]:checked")].map((box) => box.dataset.id);
}

// fields: [{name, label, type?, options?: [[value, label]], value?, required?, help?}]
// Returns {form, values()}; onSubmit(values) may throw an ApiError, shown in the form.
export function form(title, fields, submitLabel, onSubmit) {
  const inputs = {};
  const status = h("div", { class: "status", "aria-live": "polite" });
  const rows = fields.map((f) => {
    const id = `f-${title.replace(/\W+/g, "-").toLowerCase()}-${f.name}`;
    let input;
    if (f.options) {
      input = h("select", { id, name: f.name }, f.options.map(([value, label]) => h("option", { value, selected: String(value) === String(f.value ?? "") }, label)));
    } else if (f.type === "checkbox") {
      input = h("input", { id, name: f.name, type: "checkbox", checked: Boolean(f.value) });
    } else {
      input = h("input", { id, name: f.name, type: f.type || "text", value: f.value ?? "", required: Boolean(f.required), min: f.min, autocomplete: f.type === "password" ? "new-password" : "off" });
    }
    inputs[f.name] = { input, field: f };
    return h("div", {}, h("label", { for: id }, f.label), input, f.help ? h("small", {}, f.help) : null);
  });
  const node = h("form", { class: "card", "aria-label": title },
    h("h3", {}, title), h("div", { class: "grid-form" }, rows),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, submitLabel)), status);
  const values = () => {
    const out = {};
    for (const [name, { input, field }] of Object.entries(inputs)) {
      if (field.type === "checkbox") out[name] = input.checked;
      else if (field.type === "number") out[name] = input.value === "" ? null : Number(input.value);
      else out[name] = input.value.trim();
    }
    return out;
  };
  node.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const message = await onSubmit(values(), status);
      if (message) say(status, message, "ok");
    } catch (error) {
      say(status, error.message, "error");
    }
  });
  return { node, values, inputs };
}

export function button(label, onclick, kind = "") {
  return h("button", { type: "button", class: kind, onclick }, label);
}

// Runs an action, says what came of it, and redraws the view.
export function act(ctx, fn, done) {
  return async () => {
    try {
      const message = await fn();
      if (message === false) return;
      await ctx.refresh(message || done);
    } catch (error) {
      say(ctx.status, error.message, "error");
    }
  };
}

const COLOURS = ["#1d4f91", "#1a7f37", "#9a6700", "#b42318", "#6639ba", "#0a7ea4", "#59636e", "#bf3989"];

export function chart(kind, labels, datasets, { title, stacked } = {}) {
  const canvas = h("canvas", { role: "img", "aria-label": title || "chart" });
  const box = h("div", { class: "chart-box" }, canvas);
  const data = {
    labels,
    datasets: datasets.map((d, i) => ({
      borderColor: COLOURS[i % COLOURS.length],
      backgroundColor: kind === "line" ? COLOURS[i % COLOURS.length] : labels.map((_, j) => COLOURS[(i + j) % COLOURS.length]),
      pointRadius: 0,
      ...d,
    })),
  };
  const chartObject = new window.Chart(canvas, {
    type: kind,
    data,
    options: {
      animation: false,
      maintainAspectRatio: false,
      plugins: { title: { display: Boolean(title), text: title }, legend: { display: kind === "line" || datasets.length > 1 } },
      scales: kind === "line" || kind === "bar" ? { y: { beginAtZero: true, stacked: Boolean(stacked), ticks: { precision: 0 } } } : undefined,
    },
  });
  box.chart = chartObject;
  return box;
}

// A spreadsheet runs a cell that starts like a formula, so a name a tenant admin typed
// (=HYPERLINK(...)) would run on the desk of whoever opens the export: such a text cell
// gets a leading ' (OWASP's CSV injection advice), shown as text. Numbers stay numbers
// (-3.5 is a figure). The server's CSV does the same (domain/csv_cells.py).
const FORMULA_START = /^[=+\-@\t\r]/;

function csvCell(value) {
  const text = cellText(value);
  return typeof value !== "number" && FORMULA_START.test(text) ? `'${text}` : text;
}

export function csv(rows, columns) {
  const quote = (v) => {
    const text = csvCell(v);
    return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
  };
  return [columns.join(","), ...rows.map((r) => columns.map((c) => quote(r[c])).join(","))].join("\r\n");
}

export function saveFile(name, type, content) {
  const link = h("a", { href: URL.createObjectURL(new Blob([content], { type })), download: name, class: "hidden" });
  document.body.append(link);
  link.click();
  setTimeout(() => {
    URL.revokeObjectURL(link.href);
    link.remove();
  }, 1000);
}

export function section(title, ...children) {
  return h("section", { class: "card", "aria-label": title }, h("h3", {}, title), children);
}

export { clear, h, say };
