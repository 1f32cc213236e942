// The buildcat dashboard: one EventSource keeps the lists live; actions POST to the API.
"use strict";

const API = "/api/v1";
const state = { farm: null, selected: null, selectedLog: null, workers: new Map(), serverSkew: 0 };

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function seconds(value) {
  if (value === null || value === undefined || !isFinite(value)) return "-";
  if (value < 1) return `${value.toFixed(2)}s`;
  if (value < 60) return `${value.toFixed(1)}s`;
  const minutes = Math.floor(value / 60);
  if (minutes < 60) return `${minutes}m ${Math.round(value % 60)}s`;
  return `${Math.floor(minutes / 60)}h ${minutes % 60}m`;
}

function now() {
  return Date.now() / 1000 - state.serverSkew;
}

function badge(text) {
  return el("span", { class: `state ${text}`, dataset: { field: "state" } }, text);
}

function progressBar(job) {
  const done = job.tasks.done || 0;
  const bar = el("div", { class: `bar ${job.state}` }, el("div"));
  bar.firstChild.style.width = `${Math.round(job.progress * 100)}%`;
  const frames = job.frames ? ` · ${job.frames.done}/${job.frames.total} frames` : "";
  return el("span", { dataset: { field: "progress" } }, bar,
    el("span", { class: "count" }, `${done}/${job.total}`),
    el("span", { class: "muted" }, frames));
}

async function post(path, body = {}) {
  const response = await fetch(API + path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Buildcat-Dashboard": "1" },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  if (!response.ok) {
    const reply = await response.json().catch(() => ({}));
    alert(reply.error || `HTTP ${response.status}`);
  }
}

function actions(job) {
  const box = el("span", { class: "actions" });
  const final = ["done", "failed", "cancelled"].includes(job.state);
  const button = (name, label, extra = "") =>
    el("button", {
      class: extra, dataset: { action: name }, title: `${label} job ${job.id}`,
      onclick: (event) => { event.stopPropagation(); post(`/jobs/${job.id}/${name}`); },
    }, label);
  if (!final) {
    box.append(job.state === "paused" ? button("resume", "resume") : button("pause", "pause"));
    box.append(button("cancel", "cancel", "danger"));
  }
  if (job.state === "failed" || job.state === "cancelled") box.append(button("retry", "retry failed"));
  return box;
}

function priority(job) {
  const final = ["done", "failed", "cancelled"].includes(job.state);
  if (final) return el("span", { dataset: { field: "priority" } }, String(job.priority));
  const change = (delta) => (event) => {
    event.stopPropagation();
    post(`/jobs/${job.id}/priority`, { priority: job.priority + delta });
  };
  return el("span", { class: "priority" },
    el("button", { dataset: { action: "priority-down" }, title: "lower priority", onclick: change(-1) }, "−"),
    el("span", { dataset: { field: "priority" } }, String(job.priority)),
    el("button", { dataset: { action: "priority-up" }, title: "higher priority", onclick: change(1) }, "+"));
}

function timing(job) {
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

function renderJobs(jobs) {
  const body = $("#jobs tbody");
  body.replaceChildren();
  $("#no-jobs").hidden = jobs.length > 0;
  for (const job of jobs) {
    try {
      body.append(jobRow(job));
    } catch (error) {  // one odd job never blanks the page for the others
      body.append(el("tr", { class: "job", dataset: { job: String(job.id) } },
        el("td", { colspan: "8", class: "error" }, `job ${job.id}: cannot be shown (${error})`)));
    }
  }
}

function jobRow(job) {
  const { elapsed, eta } = timing(job);
  const title = el("td", {}, el("strong", {}, job.name || job.kind), " ",
    el("span", { class: "muted" }, job.id));
  if (job.blender_version) title.append(el("div", { class: "muted" }, `Blender ${job.blender_version}`));
  if (job.after && job.after.length) {
    const how = job.after_any ? " (whatever their outcome)" : "";
    title.append(el("div", { class: "muted", dataset: { field: "after" } },
      `after ${job.after.join(", ")}${how}`));
  }
  if (job.waiting) title.append(el("div", { class: "muted" }, `waiting: ${job.waiting}`));
  if (job.display_error) title.append(el("div", { class: "error" }, job.display_error));
  const row = el("tr", {
    class: `job${state.selected === job.id ? " selected" : ""}`,
    dataset: { job: job.id },
    onclick: () => select(job.id),
  }, title, el("td", {}, badge(job.state)), el("td", {}, progressBar(job)),
     el("td", {}, priority(job)), el("td", {}, job.owner || "-"),
     el("td", { dataset: { field: "elapsed" } }, seconds(elapsed)),
     el("td", { dataset: { field: "eta" } }, eta === null ? "-" : seconds(eta)),
     el("td", {}, actions(job)));
  return row;
}

function renderWorkers(workers) {
  const body = $("#workers tbody");
  body.replaceChildren();
  $("#no-workers").hidden = workers.length > 0;
  state.workers = new Map(workers.map((worker) => [worker.id, worker]));
  for (const worker of workers) {
    try {
      body.append(workerRow(worker));
    } catch (error) {
      body.append(el("tr", { dataset: { worker: String(worker.name) } },
        el("td", { colspan: "7", class: "error" }, `worker ${worker.name}: cannot be shown (${error})`)));
    }
  }
}

function workerRow(worker) {
  const more = (worker.holding || 0) - worker.current.length;
  const current = worker.current.length
    ? worker.current.map((task) =>
        `${task.id}${task.label ? ` (${task.label})` : ""} ${Math.round(task.progress * 100)}%`).join(", ")
      + (more > 0 ? ` and ${more} more` : "")
    : "-";
  const capabilities = Object.entries(worker.capabilities)
    .map(([name, version]) => (version ? `${name} ${version}` : name)).join(", ");
  return el("tr", { dataset: { worker: worker.name } },
    el("td", {}, worker.name, el("div", { class: "muted" }, worker.info.hostname || "")),
    el("td", {}, badge(worker.state)),
    el("td", { dataset: { field: "current" } }, current),
    el("td", {}, `${seconds(Math.max(0, now() - worker.last_seen))} ago`),
    el("td", {}, String(worker.slots)),
    el("td", {}, capabilities || "-"),
    el("td", {}, `${worker.tasks_done} / ${worker.tasks_failed}`));
}

async function renderDetail(job) {
  const section = $("#job-detail");
  if (!job) { section.hidden = true; state.mediaKey = null; return; }
  section.hidden = false;
  $("#detail-title").textContent = `${job.name || job.kind} (${job.id})`;
  const error = $("#detail-error");
  error.hidden = !job.error;
  error.textContent = job.error || "";
  const figure = $("#thumbnail");
  if (job.thumbnail) {
    const tasksDone = job.tasks.done || 0;
    const img = figure.querySelector("img");
    const source = `${API}/jobs/${job.id}/thumbnail?done=${tasksDone}`;
    if (img.getAttribute("src") !== source) img.setAttribute("src", source);
    figure.querySelector("figcaption").textContent = `last rendered frame (${tasksDone} task(s) done)`;
    figure.hidden = false;
  } else {
    figure.hidden = true;
  }
  showMedia(job);
  const response = await fetch(`${API}/jobs/${job.id}/tasks`, { credentials: "same-origin" });
  if (!response.ok) return;
  const { tasks } = await response.json();
  const body = $("#tasks tbody");
  body.replaceChildren();
  for (const task of tasks.slice(0, 500)) {
    const worker = task.worker ? (state.workers.get(task.worker) || { name: task.worker }).name : "-";
    let duration = task.seconds;
    if (duration === null && task.state === "leased" && task.leased_at) duration = now() - task.leased_at;
    const note = task.error || (task.state === "leased" ? task.progress_message : "") || "";
    body.append(el("tr", { class: "task", dataset: { task: task.id }, onclick: () => showLog(task.id) },
      el("td", {}, task.label ? `${task.id} (${task.label})` : task.id),
      el("td", {}, badge(task.state)),
      el("td", {}, worker),
      el("td", {}, String(task.attempts)),
      el("td", {}, seconds(duration)),
      el("td", { class: task.error ? "error" : "muted" }, note)));
  }
  if (state.selectedLog) showLog(state.selectedLog);
}

// The job's preview video and contact sheet (GET /jobs/ID/media), looked up again only when
// the job has moved on; a source is set only when it changed, so a playing video goes on.
async function showMedia(job) {
  const key = `${job.id}:${job.state}:${job.tasks.done || 0}`;
  if (state.mediaKey === key) return;
  state.mediaKey = key;
  const videoBox = $("#preview-video");
  const sheetBox = $("#contact-sheet");
  const response = await fetch(`${API}/jobs/${job.id}/media`, { credentials: "same-origin" });
  if (state.mediaKey !== key) return;  // another job was chosen meanwhile
  const media = response.ok ? await response.json() : {};
  const video = videoBox.querySelector("video");
  if (media.video) {
    if (video.getAttribute("src") !== media.video.url) video.setAttribute("src", media.video.url);
    videoBox.hidden = false;
  } else {
    video.removeAttribute("src");
    videoBox.hidden = true;
  }
  const img = sheetBox.querySelector("img");
  if (media.contact_sheet) {
    if (img.getAttribute("src") !== media.contact_sheet.url) img.setAttribute("src", media.contact_sheet.url);
    sheetBox.querySelector("a").setAttribute("href", media.contact_sheet.url);
    sheetBox.hidden = false;
  } else {
    img.removeAttribute("src");
    sheetBox.hidden = true;
  }
}

async function showLog(taskId) {
  state.selectedLog = taskId;
  const response = await fetch(`${API}/tasks/${taskId}`, { credentials: "same-origin" });
  if (!response.ok) return;
  const task = await response.json();
  $("#task-log").hidden = false;
  $("#log-title").textContent = taskId;
  const text = [task.log, task.traceback].filter(Boolean).join("\n");
  $("#task-log pre").textContent = text || "(no output yet)";
  showFrames(task.result);
}

// A render task's record of each frame (result.frames_info): time, peak memory, Blender, worker.
function showFrames(result) {
  const infos = result && Array.isArray(result.frames_info) ? result.frames_info : [];
  const rows = infos.filter((info) => info && typeof info === "object" && Number.isInteger(info.frame));
  const body = $("#task-frames tbody");
  body.replaceChildren();
  $("#task-frames").hidden = rows.length === 0;
  const number = (value) => typeof value === "number" && isFinite(value);
  for (const info of rows) {
    body.append(el("tr", { class: "frame", dataset: { frame: String(info.frame) } },
      el("td", {}, String(info.frame)),
      el("td", {}, number(info.seconds) ? seconds(info.seconds) : "-"),
      el("td", {}, number(info.peak_memory_mb) ? `${info.peak_memory_mb.toFixed(1)} MB` : "-"),
      el("td", {}, typeof info.blender === "string" && info.blender ? info.blender : "-"),
      el("td", {}, typeof info.worker === "string" && info.worker ? info.worker : "-")));
  }
}

function select(jobId) {
  state.selected = state.selected === jobId ? null : jobId;
  state.selectedLog = null;
  $("#task-log").hidden = true;
  if (state.farm) update(state.farm);
}

function update(farm) {
  state.farm = farm;
  state.serverSkew = Date.now() / 1000 - farm.time;
  $("#farm-name").textContent = farm.farm.name;
  document.title = `buildcat: ${farm.farm.name}`;
  const running = farm.jobs.filter((job) => !["done", "failed", "cancelled"].includes(job.state));
  const online = farm.workers.filter((worker) => worker.state !== "offline");
  $("#summary").textContent =
    `${running.length} job(s) active · ${online.length} worker(s) online · buildcat ${farm.farm.version}`;
  renderJobs(farm.jobs);
  renderWorkers(farm.workers);
  renderDetail(farm.jobs.find((job) => job.id === state.selected));
}

function connect() {
  const live = $("#live");
  const source = new EventSource(`${API}/events`);
  source.addEventListener("open", () => { live.className = "live on"; live.textContent = "live"; });
  source.addEventListener("update", (event) => update(JSON.parse(event.data)));
  source.addEventListener("error", () => {
    live.className = "live off";
    live.textContent = "reconnecting…";
  });
}

connect();
