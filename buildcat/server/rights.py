"""Who may do what: the routes sorted into kinds of action, and the kinds each role has.

Pure data and one rule (:func:`refusal`); the auth middleware (``server/app.py``) finds
the caller and the job a route steers, and asks. docs/security.md shows the same table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from buildcat.protocol import API_PREFIX as API


class Action(StrEnum):
    #: Reading the farm: jobs, tasks, workers, thumbnails, the event streams, whoami.
    READ = "read"
    #: Submitting work (and planning a job type's tasks).
    SUBMIT = "submit"
    #: Steering one job: cancel, pause, resume, retry, priority, unblock, archive,
    #: unarchive, delete it, requeue one of its tasks.
    STEER = "steer"
    #: A worker's side of the protocol: register, lease, report, watch, unregister.
    WORKER = "worker"
    #: Everything else: named tokens, the dashboard key, workers' steering, notices.
    ADMIN = "admin"


@dataclass(slots=True, frozen=True)
class Route:
    methods: frozenset[str]
    #: Matched against the whole path; a ``job`` group names the job a STEER route steers
    #: (a ``task`` group: the job of the task, ``JOB.N``).
    pattern: re.Pattern[str]
    action: Action


def _route(methods: str, pattern: str, action: Action) -> Route:
    return Route(frozenset(methods.split()), re.compile(pattern), action)


_JOB = r"(?P<job>[^/]+)"
#: First match wins; a route in none of them is ADMIN.
ROUTES: tuple[Route, ...] = (
    # The worker protocol first: it shares /workers/... with the workers' steering.
    _route("POST", rf"{API}/workers", Action.WORKER),
    _route("POST", rf"{API}/workers/[^/]+/(lease|report|watch)", Action.WORKER),
    _route("DELETE", rf"{API}/workers/[^/]+", Action.WORKER),
    _route("POST", rf"{API}/jobs", Action.SUBMIT),
    _route("POST", rf"{API}/job-types/[^/]+/plan", Action.SUBMIT),
    _route(
        "POST",
        rf"{API}/jobs/{_JOB}/(cancel|pause|resume|retry|unblock|priority|archive|unarchive)",
        Action.STEER,
    ),
    _route("DELETE", rf"{API}/jobs/{_JOB}", Action.STEER),
    _route("POST", rf"{API}/tasks/(?P<task>[^/]+)/requeue", Action.STEER),
    _route(
        "GET HEAD",
        rf"{API}/(ping|whoami|events|events/feed|job-types|(jobs|tasks|workers)(/[^/]+)*)"
        r"|/metrics",
        Action.READ,
    ),
)

#: What each role may do. An artist steers only the jobs it owns (``job.owner`` is its
#: name); the worker protocol takes the farm secret itself, whatever the role.
ROLE_ACTIONS: dict[str, frozenset[Action]] = {
    "viewer": frozenset({Action.READ}),
    "artist": frozenset({Action.READ, Action.SUBMIT, Action.STEER}),
    "admin": frozenset({Action.READ, Action.SUBMIT, Action.STEER, Action.ADMIN}),
}
#: Roles that steer any job, not only their own.
STEER_ANY = frozenset({"admin"})


@dataclass(slots=True, frozen=True)
class Classified:
    action: Action
    #: The job a STEER route steers ("" when none is named).
    job: str = ""


def classify(method: str, path: str) -> Classified:
    for route in ROUTES:
        if method in route.methods:
            match = route.pattern.fullmatch(path)
            if match is not None:
                groups = match.groupdict()
                job = groups.get("job") or (groups.get("task") or "").rpartition(".")[0]
                return Classified(route.action, job or "")
    return Classified(Action.ADMIN)


_WORDS = {
    Action.READ: "read the farm",
    Action.SUBMIT: "submit work",
    Action.STEER: "steer jobs",
    Action.ADMIN: "manage the farm (tokens, workers, the dashboard key: admins only)",
}


def _a(role: str) -> str:
    return f"an {role}" if role[:1] in "aeiou" else f"a {role}"


def refusal(role: str, name: str, secret: bool, wanted: Classified, owner: str | None) -> str:
    """Why the caller may not do this ("" when it may). ``secret``: the caller sent the farm
    secret itself; ``owner``: the owner of the job a STEER route names (``None`` when no
    such job exists: the route says so itself)."""
    if secret:
        return ""
    if wanted.action is Action.WORKER:
        return "the worker protocol takes the farm secret (ROOT/.buildcat/secret), not a token"
    if wanted.action not in ROLE_ACTIONS.get(role, frozenset()):
        return f"{name} is {_a(role)}: {_a(role)} may not {_WORDS[wanted.action]}"
    steers_any = role in STEER_ANY or owner is None
    if wanted.action is Action.STEER and not steers_any and owner != name:
        who = owner or "nobody"
        return f"job {wanted.job} belongs to {who}: {_a(role)} steers only their own jobs"
    return ""
