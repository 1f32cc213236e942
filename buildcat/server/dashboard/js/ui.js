// Small helpers every view uses: elements, words for times and states, asking first,
// and saying what went wrong without a modal alert.

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

export function seconds(value) {
  if (value === null || value === undefined || !isFinite(value)) return "-";
  if (value < 1) return `${value.toFixed(2)}s`;
  if (value < 60) return `${value.toFixed(1)}s`;
  const minutes = Math.floor(value / 60);
  if (minutes < 60) return `${minutes}m ${Math.round(value % 60)}s`;
  return `${Math.floor(minutes / 60)}h ${minutes % 60}m`;
}

let skew = 0;
export function setServerTime(time) { skew = Date.now() / 1000 - time; }
export function now() { return Date.now() / 1000 - skew; }

export function clock(epoch) {
  if (!epoch) return "-";
  const date = new Date((epoch + skew) * 1000);
  const today = new Date();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (date.toDateString() === today.toDateString()) return time;
  return `${date.toLocaleDateString([], { weekday: "short", day: "numeric", month: "short" })} ${time}`;
}

// Words a person knows: a task a worker holds is running; a worker with work is running.
const WORDS = { leased: "running", busy: "running" };
export const word = (state) => WORDS[state] || state;

export function badge(state) {
  const text = word(state);
  return el("span", { class: `state ${text}`, dataset: { field: "state" } }, text);
}

export const FINAL = ["done", "failed", "cancelled"];

// Ask before anything that cannot be undone; resolves true when the person agrees.
export function confirmFirst(text, verb) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = verb;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    $("#confirm-cancel").focus();
  });
}

let toastTimer = null;
export function say(text, error = true) {
  const toast = $("#toast");
  toast.textContent = text;
  toast.className = error ? "error" : "";
  toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { toast.hidden = true; }, 8000);
}

// Runs an action, saying its failure; returns whether it worked.
export async function attempt(action) {
  try {
    await action();
    return true;
  } catch (error) {
    say(error.message || String(error));
    return false;
  }
}

export function button(label, action, { name = label, danger = false, title = "" } = {}) {
  return el("button", {
    type: "button", class: danger ? "danger" : null, dataset: { action: name }, title: title || null,
    onclick: (event) => { event.stopPropagation(); action(); },
  }, label);
}

// Puts a table's new rows in place of the old; a live update keeps the keyboard where it
// was (the same row's same button, or its link).
export function replaceRows(body, rows, key) {
  const focused = document.activeElement;
  const held = focused && body.contains(focused)
    ? [focused.closest("tr")?.dataset[key], focused.dataset.action] : null;
  body.replaceChildren(...rows);
  if (!held) return;
  const inside = held[1] ? `[data-action="${held[1]}"]` : "a";
  const again = body.querySelector(`tr[data-${key}="${CSS.escape(held[0] || "")}"] ${inside}`);
  if (again) again.focus();
}

export function debounce(fn, wait) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), wait); };
}
