"""Keeping the job list tidy and rerunning one task: archive and unarchive a job, delete
one (its logs and result files go, its outputs stay), run one task again.

``POST /api/v1/jobs/{job}/archive`` and ``/unarchive``, ``DELETE /api/v1/jobs/{job}``,
``POST /api/v1/tasks/{task}/requeue``. Each is checked whole, journaled, then applied
(:meth:`Farm.change`); the scheduler's ``check_*`` methods say what is refused and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
from pathlib import Path

from aiohttp import web

from buildcat import protocol
from buildcat.root import state_dir
from buildcat.server import heap, resultstore
from buildcat.server.farm import Farm, farm_of, who_of
from buildcat.server.replies import read_body, respond
from buildcat.server.scheduler import FINAL_JOB_STATES, Job, Task
from buildcat.server.views import job_view

log = logging.getLogger(__name__)

_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def logs_folder(root: Path, job_id: str) -> Path:
    """Where workers write a job's task logs (``worker/tasklog.py``)."""
    return state_dir(root) / "logs" / job_id


def add_routes(app: web.Application) -> None:
    api = protocol.API_PREFIX

    async def archive(request: web.Request) -> web.Response:
        farm = farm_of(request)
        job_id = request.match_info["job"]
        action = request.match_info["action"]
        await read_body(request)  # nothing in it is used; a malformed one is still a 400
        scheduler = farm.scheduler
        job = scheduler.job(job_id)
        scheduler.check_archive(job)
        archived = action == "archive"
        if job.archived != archived:  # archiving an archived job changes (and journals) nothing
            now, by = time.time(), who_of(request)
            await farm.change(
                (action, now, job_id, by),
                lambda: scheduler.archive(job_id, now, by, archived=archived),
            )
            log.info("job %s: %sd%s", job_id, action, f" by {by}" if by else "")
        return respond(request, job_view(farm, job_id))

    async def delete(request: web.Request) -> web.Response:
        farm = farm_of(request)
        job_id = request.match_info["job"]
        await read_body(request)  # none is needed; one that is sent must decode
        scheduler = farm.scheduler
        scheduler.check_delete(scheduler.job(job_id))
        now, by = time.time(), who_of(request)
        job = await farm.change(("delete", now, job_id, by), lambda: scheduler.delete(job_id, now))
        farm.outputs.release(job_id)  # an ended job claims no frames; kept sure of here
        log.info(
            "job %s deleted%s; its logs go, its outputs stay", job_id, f" by {by}" if by else ""
        )
        remove_logs(farm, job)
        remove_results(request.app[resultstore.STORE_KEY], job)
        if len(job.tasks) >= heap.BIG_JOB:
            heap.release()
        return respond(request, {"deleted": job_id})

    async def requeue(request: web.Request) -> web.Response:
        farm = farm_of(request)
        task_id = request.match_info["task"]
        await read_body(request)
        scheduler = farm.scheduler
        task = scheduler.task(task_id)
        scheduler.check_requeue_task(task)
        job = task.job
        # A job that ended writes its frames again: refused (409) while another unfinished
        # job writes them, as a retry is (server/outputs.py).
        claimed = farm.job_outputs(job) if job.state in FINAL_JOB_STATES else None
        if claimed is not None:
            farm.check_outputs(claimed, job.id, runs_after=job.after)
        now, by = time.time(), who_of(request)

        replaced: list[tuple[str, object]] = []

        def apply() -> tuple[Task, list[str]]:
            revived = job.state in FINAL_JOB_STATES
            members = scheduler.rerun_chain(task)
            chain = [member.id for member in members]
            replaced.extend((member.id, member.result) for member in members)
            requeued = scheduler.requeue_task(task_id, now, by)
            if revived:
                farm.outputs.claim(
                    job.id, claimed if claimed is not None else farm.job_outputs(job)
                )
            return requeued, chain

        requeued, chain = await farm.change(("requeue-task", now, task_id, by), apply)
        remove_replaced(request.app[resultstore.STORE_KEY], replaced)
        log.info("task %s requeued%s (%d task(s) run again); job %s %s", task_id,
                 f" by {by}" if by else "", len(chain), job.id, job.state)  # fmt: skip
        # The task's view, and every task that runs again with it (itself first).
        return respond(request, {**requeued.to_dict(), "requeued": chain})

    app.router.add_post(f"{api}/jobs/{{job}}/{{action:archive|unarchive}}", archive)
    app.router.add_delete(f"{api}/jobs/{{job}}", delete)
    app.router.add_post(f"{api}/tasks/{{task}}/requeue", requeue)


def remove_logs(farm: Farm, job: Job) -> None:
    """A deleted job's logs go, in a thread (the root may be a slow network share); the
    server goes on meanwhile and says in its log if they could not be removed."""
    if not _PLAIN_ID.fullmatch(job.id):  # ids are ours; never a path that leaves logs/
        return
    folder = logs_folder(farm.config.root, job.id)

    def remove() -> None:
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("job %s: cannot remove its logs %s: %s", job.id, folder, exc)
            return
        log.info("job %s: removed its logs %s", job.id, folder)

    with contextlib.suppress(RuntimeError):  # no running loop: nothing to remove now
        asyncio.get_running_loop().run_in_executor(None, remove)


def remove_results(store: resultstore.ResultStore, job: Job) -> None:
    """A deleted job's result files go, in a thread; a server that stops first removes
    them when it starts again (they belong to no job it holds)."""
    if not store.enabled or not _PLAIN_ID.fullmatch(job.id):
        return
    with contextlib.suppress(RuntimeError):  # no running loop: the next start sweeps them
        asyncio.get_running_loop().run_in_executor(None, store.remove_job, job.id)


def remove_replaced(store: resultstore.ResultStore, results: list[tuple[str, object]]) -> None:
    """The result files of tasks that run again go (in a thread): the journal says they
    were requeued, so nothing names those files any more."""
    paths = [store.path_of(task_id, recorded) for task_id, recorded in results]
    if any(paths):
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().run_in_executor(None, store.remove_files, paths)
