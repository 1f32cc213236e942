// The selected job, beside the list: what it is and waits for, its frames (the last one
// large, a strip to step through every one, render time per frame as a chart), its
// preview video and contact sheet, its history, and its tasks with their logs.
import { API, get, query } from "./api.js";
import { $, el, badge, seconds, clock, now, debounce } from "./ui.js";
import { jobActions, taskActions } from "./actions.js";
import { followLog, closeLog, poke } from "./log.js";

let go = null;
let route = null;
let job = null;
let loading = false;
let again = false;
let sort = { key: "index", down: false };
let tasks = [];
let frames = [];
let framesKey = "";
let mediaKey = "";
let chosenFrame = null;   // index into frames the person chose; null follows the last

export function init(navigate) {
  go = navigate;
  $("#task-filters").addEventListener("submit", (event) => event.preventDefault());
  $("#task-search").addEventListener("input", debounce(() => load(), 200));
  $("#task-state").addEventListener("change", () => load());
  for (const header of document.querySelectorAll("#tasks th button[data-sort]")) {
    header.addEventListener("click", () => {
      const key = header.dataset.sort;
      sort = { key, down: sort.key === key ? !sort.down : false };
      renderTasks();
    });
  }
  const strip = $("#frame-strip");
  strip.addEventListener("keydown", (event) => {
    const step = { ArrowLeft: -1, ArrowRight: 1, Home: -Infinity, End: Infinity }[event.key];
    if (step === undefined || !frames.length) return;
    event.preventDefault();
    const at = chosenFrame ?? frames.length - 1;
    chooseFrame(Math.max(0, Math.min(frames.length - 1, at + step)));
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && route?.job && !document.querySelector("dialog[open]")) {
      go({ job: null, task: null });
    }
  });
}

export function show(next) {
  const before = route;
  route = next;
  $("#job-detail").hidden = !route.job;
  if (!route.job) { job = null; closeLog(); return; }
  if (!before || before.job !== route.job) {
    job = null; tasks = []; frames = []; framesKey = ""; mediaKey = ""; chosenFrame = null;
    $("#task-search").value = ""; $("#task-state").value = "";
    $("#detail-title").textContent = route.job;
    load();
    $("#detail-title").focus?.();
  }
  if (route.task) followLog(route.task); else closeLog();
}

export function changed() {
  if (route?.job) load();
  poke();
}

async function load() {
  if (loading) { again = true; return; }
  loading = true;
  const id = route.job;
  try {
    const view = await get(`/jobs/${encodeURIComponent(id)}`);
    if (route.job !== id) return;
    job = view;
    renderHead();
    const taskQuery = query({ limit: 500, state: $("#task-state").value, q: $("#task-search").value.trim() });
    const reply = await get(`/jobs/${encodeURIComponent(id)}/tasks${taskQuery}`);
    if (route.job !== id) return;
    tasks = reply.tasks;
    $("#tasks-count").textContent = reply.matched > tasks.length
      ? `(first ${tasks.length} of ${reply.matched})` : `(${reply.matched})`;
    renderTasks();
    await Promise.all([loadFrames(), loadMedia()]);
  } catch (error) {
    if (route.job === id) {
      $("#detail-error").hidden = false;
      $("#detail-error").textContent = `job ${id}: ${error.message}`;
    }
  } finally {
    loading = false;
    if (again) { again = false; load(); }
  }
}

function renderHead() {
  $("#detail-title").textContent = `${job.name || job.kind} (${job.id})`;
  $("#detail-state").replaceChildren(badge(job.state));
  $("#detail-actions").replaceChildren(jobActions(job));
  const error = $("#detail-error");
  error.hidden = !job.error;
  error.textContent = job.error || "";
  const waiting = $("#detail-waiting");
  waiting.hidden = !job.waiting;
  waiting.textContent = job.waiting ? `waiting: ${job.waiting}` : "";
  const settings = [
    ["kind", job.kind], ["owner", job.owner || "-"], ["priority", String(job.priority)],
    ["tasks", `${job.tasks.done || 0} done of ${job.total}` + (job.frames ? ` · ${job.frames.done}/${job.frames.total} frames` : "")],
    ["requires", (job.requires || []).join(", ") || "-"],
    ["after", job.after && job.after.length ? job.after.join(", ") + (job.after_any ? " (whatever their outcome)" : "") : "-"],
    ["waiting for", (job.waiting_for || []).join(", ") || "-"],
    ["blender", job.blender_version || "-"],
    ["attempts per task", String(job.max_attempts)],
    ["timeout", job.timeout ? seconds(job.timeout) : "-"],
    ["submitted", clock(job.created_at)], ["started", clock(job.started_at)], ["finished", clock(job.finished_at)],
    ["blocked workers", (job.blocked || []).join(", ") || "-"],
  ];
  const meta = job.meta && typeof job.meta === "object" ? job.meta : {};
  for (const [key, value] of Object.entries(meta)) {
    if (["frames", "tiles", "scene", "output", "video", "engine", "samples", "resolution"].includes(key) || typeof value !== "object") {
      settings.push([key, typeof value === "object" ? JSON.stringify(value) : String(value)]);
    }
  }
  $("#job-settings dl").replaceChildren(...settings.flatMap(([key, value]) => [el("dt", {}, key), el("dd", {}, value)]));
  const history = (job.history || []).map((entry) => el("li", {},
    `${describe(entry)}${entry.by ? ` by ${entry.by}` : ""}, ${clock(entry.at)}`));
  $("#job-history ol").replaceChildren(...(history.length ? history : [el("li", { class: "muted" }, "nobody has steered it yet")]));
}

const DONE_WORDS = { cancel: "cancelled", pause: "paused", resume: "resumed", retry: "retried",
  archive: "archived", unarchive: "unarchived", priority: "priority set", "requeue-task": "task requeued",
  unblock: "unblocked", submit: "submitted" };
function describe(entry) {
  const what = DONE_WORDS[entry.action] || entry.action;
  if (entry.action === "priority" && entry.priority !== undefined) return `priority set to ${entry.priority}`;
  if (entry.action === "requeue-task" && entry.task) return `task ${entry.task} requeued`;
  return what;
}

function sortValue(task, key) {
  if (key === "worker") return task.worker_name || "";
  if (key === "seconds") return task.seconds ?? (task.state === "leased" && task.leased_at ? now() - task.leased_at : -1);
  return task[key] ?? "";
}

function renderTasks() {
  const sorted = [...tasks].sort((a, b) => {
    const x = sortValue(a, sort.key); const y = sortValue(b, sort.key);
    const order = x < y ? -1 : x > y ? 1 : a.index - b.index;
    return sort.down ? -order : order;
  });
  for (const header of document.querySelectorAll("#tasks th")) {
    const key = header.querySelector("button")?.dataset.sort;
    header.setAttribute("aria-sort", key === sort.key ? (sort.down ? "descending" : "ascending") : "none");
  }
  const showLog = (id) => go({ task: id });
  const rows = sorted.map((task) => {
    let duration = task.seconds;
    if (duration === null && task.state === "leased" && task.leased_at) duration = now() - task.leased_at;
    const note = task.error || (task.state === "leased" ? task.progress_message : "") || "";
    const progress = task.state === "leased" ? ` ${Math.round(task.progress * 100)}%` : "";
    return el("tr", {
      class: `task${route.task === task.id ? " selected" : ""}`, dataset: { task: task.id },
      onclick: (event) => { if (!event.target.closest("button")) showLog(task.id); },
    },
      el("td", {}, task.label ? `${task.id} (${task.label})` : task.id),
      el("td", {}, badge(task.state), progress),
      el("td", {}, task.worker_name || "-"),
      el("td", { class: "wide" }, String(task.attempts)),
      el("td", {}, seconds(duration)),
      el("td", { class: `wide ${task.error ? "error" : "muted"}` }, note),
      el("td", {}, taskActions(task, showLog)));
  });
  $("#tasks tbody").replaceChildren(...rows);
}

// ---- frames ---------------------------------------------------------------------------------

async function loadFrames() {
  const key = `${job.id}:${job.tasks.done || 0}:${job.state}`;
  if (key === framesKey) return;
  framesKey = key;
  const reply = await get(`/jobs/${encodeURIComponent(job.id)}/frames`);
  if (route.job !== job.id) return;
  frames = reply.frames;
  renderFrames();
}

const imageUrl = (frame) =>
  `${API}/tasks/${encodeURIComponent(frame.task)}/image?output=${frame.output}`;

function renderFrames() {
  const figure = $("#thumbnail");
  const strip = $("#frame-strip");
  figure.hidden = frames.length === 0;
  strip.hidden = frames.length < 2;
  $("#frame-chart-box").hidden = frames.filter((f) => typeof f.seconds === "number").length < 2;
  if (!frames.length) return;
  strip.replaceChildren(...frames.map((frame, index) => el("button", {
    type: "button", role: "option", class: "frame-cell", dataset: { index: String(index), frame: String(frame.frame ?? "") },
    title: frameTitle(frame), onclick: () => chooseFrame(index), tabindex: "-1",
  }, el("img", { src: imageUrl(frame), alt: "", loading: "lazy", width: "48", height: "27" }),
     el("span", {}, frame.frame ?? frame.task))));
  renderChart();
  chooseFrame(chosenFrame ?? frames.length - 1, false);
}

function frameTitle(frame) {
  const parts = [frame.frame !== null ? `frame ${frame.frame}` : frame.task];
  if (typeof frame.seconds === "number") parts.push(seconds(frame.seconds));
  if (typeof frame.peak_memory_mb === "number") parts.push(`${frame.peak_memory_mb.toFixed(0)} MB`);
  if (frame.worker) parts.push(frame.worker);
  return parts.join(" · ");
}

function chooseFrame(index, chosen = true) {
  if (chosen) chosenFrame = index === frames.length - 1 ? null : index;
  const frame = frames[index];
  const img = $("#thumbnail img");
  const source = imageUrl(frame);
  if (img.getAttribute("src") !== source) img.setAttribute("src", source);
  const last = index === frames.length - 1 ? " (the last rendered)" : "";
  $("#thumbnail figcaption").textContent = `${frameTitle(frame)}${last} · ${index + 1} of ${frames.length}`;
  for (const cell of document.querySelectorAll("#frame-strip .frame-cell")) {
    const on = Number(cell.dataset.index) === index;
    cell.classList.toggle("on", on);
    cell.setAttribute("aria-selected", on ? "true" : "false");
    if (on && chosen) cell.scrollIntoView({ block: "nearest", inline: "nearest" });
  }
  for (const bar of document.querySelectorAll("#frame-chart rect")) {
    bar.classList.toggle("on", Number(bar.dataset.index) === index);
  }
}

function renderChart() {
  const svg = $("#frame-chart");
  const timed = frames.map((frame, index) => ({ frame, index })).filter(({ frame }) => typeof frame.seconds === "number");
  const width = 320; const height = 80;
  svg.setAttribute("viewBox", `0 0 ${width} ${height + 14}`);
  const most = Math.max(...timed.map(({ frame }) => frame.seconds), 1e-6);
  const step = width / Math.max(timed.length, 1);
  const ns = "http://www.w3.org/2000/svg";
  const parts = timed.map(({ frame, index }, position) => {
    const bar = document.createElementNS(ns, "rect");
    const tall = Math.max(1, (frame.seconds / most) * height);
    bar.setAttribute("x", String(position * step));
    bar.setAttribute("y", String(height - tall));
    bar.setAttribute("width", String(Math.max(1, step - 1)));
    bar.setAttribute("height", String(tall));
    bar.dataset.index = String(index);
    bar.addEventListener("click", () => chooseFrame(index));
    const title = document.createElementNS(ns, "title");
    title.textContent = frameTitle(frame);
    bar.append(title);
    return bar;
  });
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", "0"); label.setAttribute("y", String(height + 12));
  label.textContent = `longest ${seconds(most)}`;
  svg.replaceChildren(...parts, label);
}

// ---- preview video and contact sheet ----------------------------------------------------------

async function loadMedia() {
  const key = `${job.id}:${job.state}:${job.tasks.done || 0}`;
  if (mediaKey === key) return;
  mediaKey = key;
  const media = await get(`/jobs/${encodeURIComponent(job.id)}/media`).catch(() => ({}));
  if (mediaKey !== key) return;
  const videoBox = $("#preview-video");
  const video = videoBox.querySelector("video");
  if (media.video) {
    if (video.getAttribute("src") !== media.video.url) video.setAttribute("src", media.video.url);
    videoBox.hidden = false;
  } else {
    video.removeAttribute("src");
    videoBox.hidden = true;
  }
  const sheetBox = $("#contact-sheet");
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

