// Small DOM helpers shared by the portal's views. Every text a user or the API supplies goes in
// through textContent (h's string children), never as HTML, so a name or a message cannot inject markup.

/** `h("button", {class: "x", onclick: fn}, "text", child)`: an element. Attributes starting with
 * "on" are listeners; `dataset` is an object; false/null/undefined attributes and children are skipped. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "value" || name === "checked") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace `el`'s content. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function money(cents, currency) {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(cents / 100);
  } catch {
    return `${(cents / 100).toFixed(2)} ${currency}`;
  }
}

const DATE_TIME = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
export function when(iso) {
  return iso ? DATE_TIME.format(new Date(iso)) : "—";
}

/** "4:05" or "1:02:03" until `deadline` (ms since the epoch) from `now`; "0:00" once it has passed. */
export function timeLeft(deadline, now = Date.now()) {
  const total = Math.max(0, Math.ceil((deadline - now) / 1000));
  const hours = Math.floor(total / 3600), minutes = Math.floor((total % 3600) / 60), seconds = total % 60;
  const two = (n) => String(n).padStart(2, "0");
  return hours ? `${hours}:${two(minutes)}:${two(seconds)}` : `${minutes}:${two(seconds)}`;
}

/** A `datetime-local` input's value as RFC 3339 with this browser's offset (the API refuses times without one). */
export function localToRfc3339(value) {
  return new Date(value).toISOString();
}

/** The value for a `datetime-local` input `hours` from now, on the hour. */
export function localInput(hoursAhead) {
  const d = new Date(Date.now() + hoursAhead * 3600_000);
  d.setMinutes(0, 0, 0);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function statusBadge(status) {
  return h("span", { class: "status", dataset: { status } }, status.replace("_", " "));
}

export function empty(text) {
  return h("p", { class: "empty" }, text);
}

/** What an API error says, for a person: the problem's detail and the first field errors. */
export function problemText(error) {
  const problem = error && error.problem;
  if (!problem) return (error && error.message) || "Something went wrong.";
  const fields = (problem.errors || []).map((e) => `${e.field}: ${e.message}`);
  return [problem.detail || problem.title, ...fields.slice(0, 3)].filter(Boolean).join(" — ");
}

const TOAST_MS = 6000;
/** A toast at the corner of the page (an aria-live log, so screen readers hear it too). */
export function toast(title, body = "", kind = "") {
  const box = document.getElementById("toasts");
  const item = h("div", { class: `toast ${kind}`.trim() }, h("strong", {}, title), body);
  box.append(item);
  while (box.children.length > 4) box.firstElementChild.remove();
  setTimeout(() => item.remove(), TOAST_MS);
}

/** A form whose submit runs `action(values)`; its errors show inside the form, from the problem document. */
export function form(fields, submitLabel, action, attrs = {}) {
  const error = h("p", { class: "error", role: "alert" });
  const button = h("button", { type: "submit" }, submitLabel);
  const el = h("form", { class: "stack", novalidate: true, ...attrs }, fields, error, h("div", { class: "row" }, button));
  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    button.disabled = true;
    try {
      await action(Object.fromEntries(new FormData(el)), el);
    } catch (e) {
      error.textContent = problemText(e);
    } finally {
      button.disabled = false;
    }
  });
  return el;
}

/** A labelled input: `field("Name", {name: "name", required: true})`. */
export function field(label, attrs, tag = "input") {
  return h("label", {}, label, h(tag, attrs));
}

export function select(label, name, options, value) {
  return h("label", {}, label, h("select", { name },
    options.map(([v, text]) => h("option", { value: v, selected: v === value }, text))));
}

/** One line for a `system.alert` event's data (e.g. an email that could not be sent). */
export function alertText(data) {
  const what = (data.kind || "alert").replaceAll("_", " ");
  return [what, data.to, data.error || data.message].filter(Boolean).join(" — ");
}
