// Workers on their own view: state (idle, running, draining, disabled, asleep, offline),
// what each runs, tags and capabilities, schedule, last seen; drain, disable, enable,
// requeue its tasks, forget a departed one, set its schedule.
import { post } from "./api.js";
import { $, el, badge, seconds, now, clock, button, confirmFirst, attempt, say, replaceRows } from "./ui.js";
import { refresh } from "./actions.js";

let workers = [];

export function init() {
  $("#schedule-dialog").addEventListener("close", saveSchedule);
}

export function show() {
  render();
}

export function update(list) {
  workers = list;
  if (!$("#workers-view").hidden) render();
}

const status = (worker) => worker.status || worker.state;

function render() {
  const body = $("#workers tbody");
  $("#no-workers").hidden = workers.length > 0;
  const rows = [...workers].sort((a, b) => a.name.localeCompare(b.name)).map((worker) => {
    try {
      return workerRow(worker);
    } catch (error) {
      return el("tr", { dataset: { worker: String(worker.name) } },
        el("td", { colspan: "8", class: "error" }, `worker ${worker.name}: cannot be shown (${error})`));
    }
  });
  replaceRows(body, rows, "worker");
}

function current(worker) {
  const tasks = worker.current || [];
  if (!tasks.length) return "-";
  const more = (worker.holding || 0) - tasks.length;
  const box = el("span", {});
  tasks.forEach((task, position) => {
    if (position) box.append(", ");
    const jobId = task.job || task.id.split(".")[0];
    const label = `${task.job_name ? `${task.job_name} ` : ""}${task.id}${task.label ? ` (${task.label})` : ""} ${Math.round(task.progress * 100)}%`;
    box.append(el("a", { href: `#/jobs/${encodeURIComponent(jobId)}/${encodeURIComponent(task.id)}` }, label));
  });
  if (more > 0) box.append(` and ${more} more`);
  return box;
}

function scheduleText(worker) {
  const schedule = worker.schedule;
  const box = el("span", {});
  if (!schedule || !schedule.spec) box.append("always");
  else box.append(schedule.spec, el("span", { class: "muted" }, ` (${schedule.timezone || "its time"})`));
  if (worker.asleep && worker.wakes_at) box.append(el("div", { class: "muted" }, `asleep, wakes ${clock(worker.wakes_at)}`));
  else if (worker.sleeps_at) box.append(el("div", { class: "muted" }, `sleeps ${clock(worker.sleeps_at)}`));
  return box;
}

function capabilities(worker) {
  const tags = worker.tags || Object.entries(worker.capabilities || {}).filter(([, v]) => !v).map(([k]) => k);
  const others = Object.entries(worker.capabilities || {}).filter(([name, version]) => version && !tags.includes(name))
    .map(([name, version]) => `${name} ${version}`);
  return el("span", {}, ...tags.map((tag) => el("span", { class: "tag" }, tag)), tags.length && others.length ? " " : "", others.join(", ") || (tags.length ? "" : "-"));
}

function workerRow(worker) {
  const state = status(worker);
  return el("tr", { dataset: { worker: worker.name } },
    el("td", {}, worker.name, el("div", { class: "muted" }, (worker.info && worker.info.hostname) || "")),
    el("td", {}, badge(state)),
    el("td", { dataset: { field: "current" } }, current(worker)),
    el("td", { class: "wide" }, capabilities(worker)),
    el("td", { dataset: { field: "schedule" } }, scheduleText(worker)),
    el("td", { class: "wide" }, `${seconds(Math.max(0, now() - worker.last_seen))} ago`),
    el("td", { class: "wide" }, `${worker.tasks_done} / ${worker.tasks_failed}`),
    el("td", {}, workerActions(worker, state)));
}

async function act(worker, action) {
  if (await attempt(() => post(`/workers/${encodeURIComponent(worker.name)}/${action}`))) refresh();
}

function workerActions(worker, state) {
  const box = el("span", { class: "actions" });
  const name = worker.name;
  if (state === "offline") {
    box.append(button("forget", async () => {
      if (await confirmFirst(`Forget worker ${name}? It leaves the list and its settings (schedule, disabled) are dropped.`, "Forget it")) act(worker, "forget");
    }, { danger: true, title: `forget the departed worker ${name}` }));
    return box;
  }
  const enabled = worker.enabled !== false;
  const draining = Boolean(worker.draining);
  if (enabled && !draining) {
    box.append(button("drain", () => act(worker, "drain"), { title: `let ${name} finish what it runs, then take nothing more` }));
  }
  if (enabled) {
    box.append(button("disable", async () => {
      if (await confirmFirst(`Disable worker ${name}? What it runs goes back to the queue at once, and it takes nothing more until enabled.`, "Disable it")) act(worker, "disable");
    }, { danger: true, title: `stop ${name} taking work` }));
  }
  if (!enabled || draining) box.append(button("enable", () => act(worker, "enable"), { title: `let ${name} take work again` }));
  if ((worker.current || []).length) {
    box.append(button("requeue", async () => {
      if (await confirmFirst(`Give back what ${name} runs? Its tasks go back to the queue and start again elsewhere.`, "Requeue its tasks")) act(worker, "requeue");
    }, { title: `put ${name}'s tasks back in the queue` }));
  }
  box.append(button("schedule", () => editSchedule(worker), { title: `when ${name} takes work` }));
  return box;
}

let editing = null;
function editSchedule(worker) {
  editing = worker.name;
  const dialog = $("#schedule-dialog");
  dialog.querySelector("h3 span").textContent = worker.name;
  $("#schedule-spec").value = worker.schedule?.spec || "";
  $("#schedule-timezone").value = worker.schedule?.timezone || "";
  $("#schedule-give-back").checked = Boolean(worker.schedule?.give_back);
  dialog.returnValue = "";
  dialog.showModal();
  $("#schedule-spec").focus();
}

async function saveSchedule() {
  const dialog = $("#schedule-dialog");
  if (dialog.returnValue !== "ok" || !editing) return;
  const body = { schedule: $("#schedule-spec").value.trim(), give_back: $("#schedule-give-back").checked };
  const zone = $("#schedule-timezone").value.trim();
  if (zone) body.timezone = zone;
  const name = editing;
  if (await attempt(() => post(`/workers/${encodeURIComponent(name)}/schedule`, body))) {
    say(`schedule of ${name} saved`, false);
    refresh();
  }
}

