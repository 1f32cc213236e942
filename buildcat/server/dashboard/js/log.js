// A task's log: its end first, then followed live while the task runs (each poll reads
// only what was added, GET /api/v1/tasks/T/log?offset=), earlier pieces on request.
import { get } from "./api.js";
import { $, el, seconds } from "./ui.js";

const POLL_MS = 1000;
let task = null;      // the task whose log is open
let first = 0;        // where the text shown starts in the file
let next = 0;         // where the next piece starts
let timer = null;
let busy = false;
let tail = "";        // the traceback shown after the text, if the run failed

export async function followLog(id) {
  if (task === id) return;
  closeLog();
  task = id;
  $("#task-log").hidden = false;
  $("#log-title").textContent = id;
  $("#task-log pre").textContent = "(reading the log…)";
  $("#task-frames").hidden = true;
  const earlier = $("#log-earlier");
  earlier.onclick = () => loadEarlier();
  await readTail();
}

export function closeLog() {
  clearTimeout(timer);
  timer = null;
  task = null;
  $("#task-log").hidden = true;
}

// The farm changed: a task that runs again (retried, requeued) is followed again.
export function poke() {
  if (task && !timer && !busy) readMore();
}

function piece(path) {
  return get(`/tasks/${encodeURIComponent(task)}/log${path}`);
}

async function readTail() {
  const id = task;
  busy = true;
  try {
    const reply = await piece("");
    if (task !== id) return;
    first = reply.offset;
    next = reply.next;
    $("#task-log pre").textContent = "";
    write(reply, false);
    after(reply);
  } catch (error) {
    if (task === id) $("#task-log pre").textContent = `the log cannot be read: ${error.message}`;
  } finally {
    busy = false;
  }
}

async function readMore() {
  const id = task;
  busy = true;
  try {
    const reply = await piece(`?offset=${next}`);
    if (task !== id) return;
    if (reply.size < next) {  // the file was replaced: start again from its end
      busy = false;
      task = null;
      await followLog(id);
      return;
    }
    next = reply.next;
    write(reply, true);
    after(reply);
  } catch {
    // the next poll or update tries again
  } finally {
    busy = false;
  }
}

async function loadEarlier() {
  if (!task || first === 0) return;
  const start = Math.max(0, first - 256 * 1024);
  const reply = await piece(`?offset=${start}&limit=${first - start}`);
  first = start;
  const pre = $("#task-log pre");
  pre.prepend(document.createTextNode(reply.text));
  $("#log-earlier").hidden = first === 0;
}

function write(reply, append) {
  const pre = $("#task-log pre");
  const old = pre.querySelector(".traceback");
  if (old) old.remove();
  if (!append && !reply.text) pre.textContent = reply.running ? "(no output yet)" : "";
  else if (append && reply.text) {
    if (pre.textContent === "(no output yet)") pre.textContent = "";
    pre.append(document.createTextNode(reply.text));
  } else if (reply.text) {
    pre.append(document.createTextNode(reply.text));
  }
  tail = !reply.running && reply.traceback ? reply.traceback : "";
  if (tail) pre.append(el("span", { class: "traceback" }, (pre.textContent.endsWith("\n") || !pre.textContent ? "" : "\n") + tail));
  if (!reply.running && !pre.textContent) pre.textContent = reply.error || "(it printed nothing)";
  $("#log-earlier").hidden = first === 0;
  $("#log-size").textContent = reply.size ? `${(reply.size / 1024).toFixed(1)} KiB` : "";
  if ($("#log-follow").checked) pre.scrollTop = pre.scrollHeight;
}

function after(reply) {
  clearTimeout(timer);
  timer = null;
  if (reply.running) timer = setTimeout(() => { timer = null; readMore(); }, POLL_MS);
  else if (reply.state === "done") showFrames(reply.task);
}

// A render task's record of each frame (result.frames_info): time, peak memory, Blender, worker.
async function showFrames(id) {
  const detail = await get(`/tasks/${encodeURIComponent(id)}`).catch(() => null);
  if (task !== id || !detail) return;
  const result = detail.result;
  const infos = result && Array.isArray(result.frames_info) ? result.frames_info : [];
  const rows = infos.filter((info) => info && typeof info === "object" && Number.isInteger(info.frame));
  const number = (value) => typeof value === "number" && isFinite(value);
  $("#task-frames tbody").replaceChildren(...rows.map((info) => el("tr", { class: "frame", dataset: { frame: String(info.frame) } },
    el("td", {}, String(info.frame)),
    el("td", {}, number(info.seconds) ? seconds(info.seconds) : "-"),
    el("td", {}, number(info.peak_memory_mb) ? `${info.peak_memory_mb.toFixed(1)} MB` : "-"),
    el("td", {}, typeof info.blender === "string" && info.blender ? info.blender : "-"),
    el("td", {}, typeof info.worker === "string" && info.worker ? info.worker : "-"))));
  $("#task-frames").hidden = rows.length === 0;
}

