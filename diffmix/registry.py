"""The run registry: named runs of each stage in the workspace, and who may see them.

The app starts long stages (personalize, generate, train) as background jobs
(:mod:`diffmix.jobs`) into ``<workspace>/<adapters|synthetic|runs>/<name>``
(:func:`diffmix.workspace.stage_root`); this module lists those runs, opens one by name (a
name from a client is checked, never a path), and starts, cancels and resumes them. The pages
only lay out widgets around these functions (``pages/jobs_ui.py``).

The owner rule (one, here and in :mod:`diffmix.jobs`): every job records an owner token. A
private deployment's operator sees every run in the workspace (CLI-made ones too); on a public
one a session sees, cancels and resumes only its own runs, and a session without a token sees
none (:func:`may_see`). The job functions take the result of :func:`owner_filter`: the
session's token when public, None (every run) when private.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffmix import jobs
from diffmix.runs import RunDir, atomic_write
from diffmix.settings import Settings
from diffmix.workspace import STAGE_DIRS, check_file_name, name_pattern, stage_root

__all__ = [
    "ACTIVE_STATES", "NAME_RE", "OWNER_FILE", "RESUMABLE_STATES", "RESUME_WAIT_S", "STAGE_DIRS",
    "cancel_run", "check_name", "list_runs", "may_see", "open_run", "owner_filter",
    "resume_args", "resume_run", "run_name", "run_owner", "run_state", "stage_root",
    "start_run", "write_owner",
]  # fmt: skip

ACTIVE_STATES = ("queued", "running")
RESUMABLE_STATES = ("cancelled", "failed", "crashed")
#: Owner record of a folder made in-process (e.g. an Inspect export), where no job.json is.
OWNER_FILE = "owner.json"
#: Longest run name (characters; no spaces: a run name is typed on command lines too).
MAX_NAME = 80
#: A run name: letters, digits, ``.``, ``_``, ``-``; up to 80 characters; no paths.
NAME_RE = name_pattern(MAX_NAME)
#: Longest wait (s) for a cancelled run's process to exit before it is resumed.
RESUME_WAIT_S = 30.0


def owner_filter(settings: Settings, owner: str | None) -> str | None:
    """The owner to filter by: the session's token when public, None (everything) when private."""
    return owner if settings.public else None


def may_see(settings: Settings, owner: str | None, run_owner_: str | None) -> bool:
    """Whether a session with token ``owner`` may see a run made by ``run_owner_``.

    Private deployments: always. Public ones: only its own runs; a session without a token
    (``None``) sees nothing, not even runs that have no owner (made with the CLI).
    """
    return jobs.owner_may_see(owner_filter(settings, owner), run_owner_, public=settings.public)


def check_name(name: str | None) -> str:
    """A run name as typed, checked: up to 80 letters, digits, ``.``, ``_``, ``-`` (no paths)."""
    return check_file_name(name, "run", max_length=MAX_NAME)


def run_name(name: str | None, prefix: str) -> str:
    """The typed name (checked), or ``<prefix>-YYYYmmdd-HHMMSS`` when the box is empty."""
    if (name or "").strip():
        return check_name(name)
    return check_name(f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")


def run_owner(run_dir: Path) -> str | None:
    """Who made a run folder: job.json's owner, else owner.json's, else None (CLI-made)."""
    job = jobs.read_job(run_dir)
    if job is not None:
        return job.owner
    try:
        return json.loads((run_dir / OWNER_FILE).read_text()).get("owner")
    except (OSError, ValueError, AttributeError):
        return None


def write_owner(run_dir: Path, owner: str | None) -> None:
    """Record ``owner`` for a folder made in-process (no job.json)."""
    atomic_write(run_dir / OWNER_FILE, json.dumps({"owner": owner}) + "\n")


def open_run(stage: str, name: str | None, *, owner: str | None, settings: Settings) -> Path:
    """The folder of run ``name`` of ``stage``, if this session may see it."""
    name = check_name(name)
    path = stage_root(stage) / name
    if not path.is_dir():
        raise ValueError(f"no {stage} run named {name!r} in the workspace")
    if not may_see(settings, owner, run_owner(path)):
        raise PermissionError(f"run {name!r} belongs to another session")
    return path


def run_state(run_dir: Path) -> dict[str, Any]:
    """The run's status (``failed`` when its process died without a final status); ``done``
    for a finished folder made without a job (e.g. an export), ``unknown`` for an unrecognised
    folder."""
    if jobs.read_job(run_dir) is not None or (run_dir / "status.json").is_file():
        return jobs.job_state(run_dir)
    if any((run_dir / f).is_file() for f in ("adapter.json", "metadata.jsonl", "metrics.json")):
        return {"state": "done", "progress": 1.0, "message": "finished"}
    return {"state": "unknown", "message": "not a run folder"}


def list_runs(stage: str, *, owner: str | None, settings: Settings) -> list[dict[str, Any]]:
    """Runs of ``stage`` this session may see, newest first.

    Each: ``name``, ``path``, ``state``, ``progress``, ``message``, ``created`` (epoch s),
    ``owner``, ``status``. Public mode lists only the session's own runs; private mode lists
    every run folder (those made by the CLI too).
    """
    root = stage_root(stage)
    out = []
    for d in root.iterdir():
        if not d.is_dir() or not NAME_RE.match(d.name):
            continue
        who = run_owner(d)
        if not may_see(settings, owner, who):
            continue
        st = run_state(d)
        if st.get("state") == "unknown":
            continue
        job = jobs.read_job(d)
        created = job.created if job is not None else d.stat().st_mtime
        out.append(
            {
                "name": d.name,
                "path": str(d),
                "state": st.get("state"),
                "progress": float(st.get("progress") or 0.0),
                "message": st.get("message", ""),
                "created": created,
                "owner": who,
                "status": st,
            }
        )
    return sorted(out, key=lambda r: r["created"], reverse=True)


def start_run(
    stage: str, args: Sequence[str], name: str, *, owner: str | None, settings: Settings
) -> Path:
    """Start ``diffmix <stage> <args>`` into a new run folder ``name``; returns the folder.

    The launcher checks ``args`` again against ``settings`` (dataset spec, paths, work
    limits, live-job caps): an API client that skips the page's checks meets the same ones.
    """
    path = stage_root(stage) / check_name(name)
    if path.exists() and any(path.iterdir()):
        raise ValueError(
            f"a {stage} run named {name!r} already exists; choose another name (or resume it)"
        )
    jobs.start_job(stage, list(args), path, owner=owner, settings=settings)
    return path


def cancel_run(stage: str, name: str | None, *, owner: str | None, settings: Settings) -> str:
    """Ask run ``name`` to stop at its next step (it checkpoints first); a message."""
    path = open_run(stage, name, owner=owner, settings=settings)
    job = jobs.read_job(path)
    if job is None or jobs.job_state(path).get("state") not in ACTIVE_STATES:
        raise ValueError(f"run {path.name!r} is not running")
    jobs.cancel_job(path, owner=owner_filter(settings, owner), grace_s=0)
    return f"Cancel requested for {path.name}: it stops after its current step."


def resume_args(argv: Sequence[str], stage: str) -> list[str]:
    """The CLI arguments of a job's ``argv`` (job.json) with ``--resume``, without ``--out``.

    A job started from its request file (``--config RUN/request.yaml``) resumes from the same
    file: ``["--resume"]`` (:func:`diffmix.jobs.start_job` reads and checks it again).
    """
    argv = list(argv)
    try:
        start = argv.index(stage, argv.index("diffmix")) + 1
    except ValueError:
        raise ValueError(f"job command {argv!r} is not a diffmix {stage} command") from None
    if "--config" in argv[start:]:
        return ["--resume"]
    args: list[str] = []
    positionals: list[str] = []
    rest = iter(argv[start:])
    for a in rest:
        if a == "--":
            positionals = list(rest)  # everything after it is a positional value
        elif a == "--out":
            next(rest, None)  # and its value
        elif a != "--resume":
            args.append(a)
    return [*args, "--resume", *(["--", *positionals] if positionals else [])]


def resume_run(stage: str, name: str | None, *, owner: str | None, settings: Settings) -> Path:
    """Restart a cancelled / failed / crashed run with its own arguments and ``--resume``."""
    path = open_run(stage, name, owner=owner, settings=settings)
    job = jobs.read_job(path)
    if job is None:
        raise ValueError(f"run {path.name!r} was not started from the app; resume it with the CLI")
    state = jobs.job_state(path).get("state")
    if state in ACTIVE_STATES:
        raise ValueError(f"run {path.name!r} is still running")
    if state == "done":
        raise ValueError(f"run {path.name!r} has finished; there is nothing to resume")
    # A cancelled job writes its final status, then takes a few seconds to exit (longer on a
    # busy machine): wait for it rather than refuse with "still running".
    deadline = time.monotonic() + RESUME_WAIT_S
    while jobs.is_alive(job) and time.monotonic() < deadline:
        time.sleep(0.2)
    # Queued from now on: the page keeps polling until the job reports (or is found dead).
    run = RunDir(path)
    before = run.status()
    run.set_status("queued", progress=0.0, message="resuming")
    try:
        jobs.start_job(stage, resume_args(job.argv, stage), path, owner=job.owner,
                       settings=settings)  # fmt: skip
    except BaseException:
        run.set_status(before.get("state"), **{k: before.get(k) for k in ("progress", "message")})
        raise
    return path
