// The job list: filters (state, owner, search, archived), newest first, a page at a time
// from GET /api/v1/jobs, with the count of what matched and of what is hidden.
import { get, query } from "./api.js";
import { $, el, badge, seconds, now, FINAL, debounce, replaceRows } from "./ui.js";
import { jobActions, priorityControl } from "./actions.js";

export const PAGE = 50;
let go = null;
let route = null;
let loading = null;   // the request in flight, if any
let again = false;    // the farm changed while it was in flight: load once more after it
let lastKey = "";

export function init(navigate) {
  go = navigate;
  const filters = $("#job-filters");
  filters.addEventListener("submit", (event) => event.preventDefault());
  const typed = debounce(() => setFilters(), 200);
  $("#job-search").addEventListener("input", typed);
  $("#job-owner").addEventListener("input", typed);
  $("#job-state").addEventListener("change", () => setFilters());
  $("#job-archived").addEventListener("change", () => setFilters());
  $("#jobs-newer").addEventListener("click", () => turn(-1));
  $("#jobs-older").addEventListener("click", () => turn(1));
}

function setFilters() {
  const params = {
    q: $("#job-search").value.trim(),
    state: $("#job-state").value,
    owner: $("#job-owner").value.trim(),
    archived: $("#job-archived").checked ? "1" : "",
  };
  go({ params }, { replace: true });
}

function turn(delta) {
  const params = { ...route.params };
  const page = Math.max(0, Number(params.page || 0) + delta);
  params.page = page ? String(page) : "";
  go({ params }, { replace: true });
}

export function show(next) {
  route = next;
  const params = route.params;
  // The form shows what the URL says (a link opened, Back pressed).
  if (document.activeElement !== $("#job-search")) $("#job-search").value = params.q || "";
  if (document.activeElement !== $("#job-owner")) $("#job-owner").value = params.owner || "";
  $("#job-state").value = params.state || "";
  $("#job-archived").checked = params.archived === "1";
  const key = JSON.stringify(params);
  if (key !== lastKey) { lastKey = key; load(); }
  else markSelected();
}

// The farm changed (an event-stream update): the page in view is read again, at most one
// request at a time.
export function changed() { if (route) load(); }

async function load() {
  if (loading) { again = true; return; }
  const params = route.params;
  const page = Number(params.page || 0);
  const path = "/jobs" + query({
    order: "newest", limit: PAGE, offset: page * PAGE, q: params.q, owner: params.owner,
    state: params.state, archived: params.archived === "1" ? "only" : "no",
  });
  loading = get(path);
  try {
    render(await loading, page);
  } catch (error) {
    $("#jobs-count").textContent = `the job list cannot be read: ${error.message}`;
  } finally {
    loading = null;
    if (again) { again = false; load(); }
  }
}

function render(reply, page) {
  const body = $("#jobs tbody");
  const rows = [];
  for (const job of reply.jobs) {
    try {
      rows.push(jobRow(job));
    } catch (error) {  // one odd job never blanks the list for the others
      rows.push(el("tr", { class: "job", dataset: { job: String(job.id) } },
        el("td", { colspan: "8", class: "error" }, `job ${job.id}: cannot be shown (${error})`)));
    }
  }
  replaceRows(body, rows, "job");
  const filtered = route.params.q || route.params.state || route.params.owner;
  $("#no-jobs").hidden = reply.jobs.length > 0;
  $("#no-jobs").textContent = filtered || route.params.archived === "1"
    ? "No job matches these filters." : "No jobs yet: farm submit …";
  const first = reply.matched ? page * PAGE + 1 : 0;
  const last = page * PAGE + reply.jobs.length;
  const hidden = route.params.archived === "1" ? "" : reply.archived ? ` · ${reply.archived} archived not shown` : "";
  const others = reply.total - reply.archived - (route.params.archived === "1" ? 0 : reply.matched);
  const notMatching = filtered && others > 0 ? ` · ${others} others do not match` : "";
  $("#jobs-count").textContent = `${first}-${last} of ${reply.matched}${notMatching}${hidden}`;
  $("#jobs-newer").disabled = page === 0;
  $("#jobs-older").disabled = last >= reply.matched;
  markSelected();
}

function markSelected() {
  for (const row of document.querySelectorAll("#jobs tr.job")) {
    const selected = row.dataset.job === route?.job;
    row.classList.toggle("selected", selected);
    row.setAttribute("aria-selected", selected ? "true" : "false");
  }
}

export function timing(job) {
  const start = job.started_at || job.created_at;
  const end = job.finished_at || now();
  const elapsed = Math.max(0, end - start);
  const done = job.tasks.done || 0;
  let eta = null;
  if (!job.finished_at && job.started_at && job.progress > 0 && job.progress < 1) {
    eta = elapsed * (1 - job.progress) / job.progress;
  } else if (!job.finished_at && done > 0) {
    eta = elapsed / done * (job.total - done);
  }
  return { elapsed, eta };
}

export function progressBar(job) {
  const done = job.tasks.done || 0;
  const bar = el("div", { class: `bar ${job.state}`, role: "progressbar", "aria-valuemin": "0",
    "aria-valuemax": "100", "aria-valuenow": String(Math.round(job.progress * 100)) }, el("div"));
  bar.firstChild.style.width = `${Math.round(job.progress * 100)}%`;
  const frames = job.frames ? ` · ${job.frames.done}/${job.frames.total} frames` : "";
  return el("span", { dataset: { field: "progress" } }, bar,
    el("span", { class: "count" }, `${done}/${job.total}`),
    el("span", { class: "muted" }, frames));
}

function jobRow(job) {
  const { elapsed, eta } = timing(job);
  const link = el("a", { href: `#/jobs/${encodeURIComponent(job.id)}${location.hash.includes("?") ? "?" + location.hash.split("?")[1] : ""}`,
    class: "job-link" }, el("strong", {}, job.name || job.kind));
  const title = el("td", {}, link, " ", el("span", { class: "muted" }, job.id));
  if (job.archived) title.append(" ", el("span", { class: "tag" }, "archived"));
  if (job.after && job.after.length) {
    const how = job.after_any ? " (whatever their outcome)" : "";
    title.append(el("div", { class: "muted", dataset: { field: "after" } }, `after ${job.after.join(", ")}${how}`));
  }
  if (job.waiting) title.append(el("div", { class: "muted waiting" }, `waiting: ${job.waiting}`));
  if (job.display_error) title.append(el("div", { class: "error" }, job.display_error));
  const row = el("tr", {
    class: "job", dataset: { job: job.id },
    onclick: (event) => { if (!event.target.closest("a,button")) link.click(); },
  }, title, el("td", {}, badge(job.state)), el("td", {}, progressBar(job)),
     el("td", { class: "wide" }, priorityControl(job)), el("td", { class: "wide" }, job.owner || "-"),
     el("td", { class: "wide", dataset: { field: "elapsed" } }, seconds(elapsed)),
     el("td", { class: "wide", dataset: { field: "eta" } }, eta === null || FINAL.includes(job.state) ? "-" : seconds(eta)),
     el("td", {}, jobActions(job)));
  return row;
}
