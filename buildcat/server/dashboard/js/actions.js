// What a person can do to a job or a task, each asking first where it cannot be undone.
// After an action the page reads the farm again at once (the event stream follows).
import { post, remove } from "./api.js";
import { el, button, confirmFirst, attempt, say, FINAL } from "./ui.js";

export const refresh = () => document.dispatchEvent(new Event("farm:changed"));

async function act(path, body) {
  if (await attempt(() => post(path, body))) refresh();
}

export function jobActions(job) {
  const box = el("span", { class: "actions" });
  const id = encodeURIComponent(job.id);
  const name = job.name || job.id;
  if (!FINAL.includes(job.state)) {
    box.append(job.state === "paused"
      ? button("resume", () => act(`/jobs/${id}/resume`), { title: `resume job ${job.id}` })
      : button("pause", () => act(`/jobs/${id}/pause`), { title: `pause job ${job.id}` }));
    box.append(button("cancel", async () => {
      const sure = await confirmFirst(
        `Cancel job “${name}” (${job.id})? Its running tasks are stopped and nothing more of it runs.`, "Cancel the job");
      if (sure) act(`/jobs/${id}/cancel`);
    }, { danger: true, title: `cancel job ${job.id}` }));
  }
  if (job.state === "failed" || job.state === "cancelled") {
    box.append(button("retry failed", () => act(`/jobs/${id}/retry`), { name: "retry", title: `run job ${job.id}'s failed tasks again` }));
  }
  if (FINAL.includes(job.state)) {
    box.append(job.archived
      ? button("unarchive", () => act(`/jobs/${id}/unarchive`), { title: `list job ${job.id} again` })
      : button("archive", () => act(`/jobs/${id}/archive`), { title: `hide job ${job.id} from the list, keeping it` }));
    box.append(button("delete", async () => {
      const sure = await confirmFirst(
        `Delete job “${name}” (${job.id}) and its logs? Its rendered files stay where they are. This cannot be undone.`, "Delete the job");
      if (!sure) return;
      if (await attempt(() => remove(`/jobs/${id}`))) {
        say(`job ${job.id} deleted`, false);
        if (location.hash.startsWith(`#/jobs/${id}`)) location.hash = "#/jobs";
        refresh();
      }
    }, { danger: true, title: `delete job ${job.id}` }));
  }
  return box;
}

export function priorityControl(job) {
  if (FINAL.includes(job.state)) return el("span", { dataset: { field: "priority" } }, String(job.priority));
  const change = (delta) => () => act(`/jobs/${encodeURIComponent(job.id)}/priority`, { priority: job.priority + delta });
  return el("span", { class: "priority" },
    button("−", change(-1), { name: "priority-down", title: "lower priority" }),
    el("span", { dataset: { field: "priority" } }, String(job.priority)),
    button("+", change(1), { name: "priority-up", title: "higher priority" }));
}

export function taskActions(task, onLog) {
  const box = el("span", { class: "actions" });
  box.append(button("log", () => onLog(task.id), { title: `show the log of task ${task.id}` }));
  if (task.state !== "queued") {
    box.append(button("requeue", async () => {
      const what = task.state === "done" ? " Its result is replaced by the new run's." : "";
      const sure = await confirmFirst(`Run task ${task.id} again?${what}`, "Requeue the task");
      if (sure) act(`/tasks/${encodeURIComponent(task.id)}/requeue`);
    }, { title: `run task ${task.id} again` }));
  }
  return box;
}
