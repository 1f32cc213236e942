// The dashboard: the URL says what is shown (#/jobs, #/jobs/JOB, #/jobs/JOB/TASK,
// #/workers, with the job filters after "?"), so a link opens the same view. One event
// stream keeps it live; the lists themselves come from the API, a page at a time.
import { get, live } from "./api.js";
import { $, setServerTime } from "./ui.js";
import * as jobs from "./jobs.js";
import * as job from "./job.js";
import * as workers from "./workers.js";

export function parseRoute(hash) {
  const [path, search = ""] = hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = Object.fromEntries(new URLSearchParams(search));
  if (parts[0] === "workers") return { view: "workers", job: null, task: null, params };
  return { view: "jobs", job: parts[1] || null, task: parts[2] || null, params };
}

export function routeHash(route) {
  const parts = [route.view];
  if (route.view === "jobs" && route.job) parts.push(route.job);
  if (route.view === "jobs" && route.job && route.task) parts.push(route.task);
  const params = new URLSearchParams(Object.entries(route.params || {}).filter(([, v]) => v));
  const search = params.toString();
  return `#/${parts.map(encodeURIComponent).join("/")}${search ? `?${search}` : ""}`;
}

// Changes part of the route; `replace` keeps the browser's history to one entry (typing
// in a filter), otherwise Back returns to the view before.
export function go(change, { replace = false } = {}) {
  const route = { ...current(), ...change };
  const hash = routeHash(route);
  if (hash === location.hash) return;
  if (replace) {
    history.replaceState(null, "", hash);
    show();
  } else {
    location.hash = hash;
  }
}

export const current = () => parseRoute(location.hash);

function show() {
  const route = current();
  document.body.dataset.view = route.view;
  document.body.dataset.selected = route.job ? "yes" : "no";
  $("#jobs-view").hidden = route.view !== "jobs";
  $("#workers-view").hidden = route.view !== "workers";
  $("#nav-jobs").setAttribute("aria-current", route.view === "jobs" ? "page" : "false");
  $("#nav-workers").setAttribute("aria-current", route.view === "workers" ? "page" : "false");
  if (route.view === "jobs") {
    jobs.show(route);
    job.show(route);
  } else {
    workers.show();
  }
}

let farm = null;
function update(overview) {
  farm = overview;
  setServerTime(overview.time);
  $("#farm-name").textContent = overview.farm.name;
  document.title = `buildcat: ${overview.farm.name}`;
  const online = overview.workers.filter((worker) => worker.state !== "offline");
  const active = overview.active_jobs ?? overview.jobs.filter((j) => !["done", "failed", "cancelled"].includes(j.state)).length;
  $("#jobs-active").textContent = `(${active} active)`;
  $("#workers-online").textContent = `(${online.length} online)`;
  $("#summary").textContent = `buildcat ${overview.farm.version}`;
  workers.update(overview.workers);
  jobs.changed();
  job.changed(overview);
}

function connect() {
  const badge = $("#live");
  live(update, (open) => {
    badge.className = `live ${open ? "on" : "off"}`;
    badge.textContent = open ? "live" : "reconnecting…";
  });
}

async function whoami() {
  try {
    const me = await get("/whoami");
    $("#whoami").textContent = `${me.name} (${me.role})`;
    document.body.dataset.role = me.role;
  } catch {
    $("#whoami").textContent = "";
  }
}

window.addEventListener("hashchange", show);
// After an action the page reads the farm again at once, not at the next update.
document.addEventListener("farm:changed", () => { jobs.changed(); if (farm) job.changed(farm); });
if (!location.hash) history.replaceState(null, "", "#/jobs");
jobs.init(go);
job.init(go);
workers.init();
show();
connect();
whoami();
