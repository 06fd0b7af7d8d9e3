"""Background jobs: a stage run as a subprocess that reports through its run directory.

The app starts long stages (personalize, generate, train) with :func:`start_job`; the job
is ``python -m diffmix <stage> --config RUN_DIR/request.yaml --out RUN_DIR`` in its own process
group, so a crash of the job never takes the app down and a reload of the page finds the same
live state by reading the run directory (:mod:`diffmix.runs`). ``job.json`` records who started
it (``owner``, e.g. a browser session) so one user cannot see or cancel another's jobs
(:func:`owner_may_see`; the named runs of the app are listed by :mod:`diffmix.registry`).

:func:`start_job` is where the app's work starts, so it checks everything again whatever page
or API call asked for it: the arguments are parsed with the stage's own command-line parser
(unknown options refused, ``--config`` refused), the settings they name go through
:func:`diffmix.settings.check_request` (dataset spec, paths, work limits), and the number of live
jobs per owner and in total is capped. The checked settings are written to ``request.yaml`` in
the run folder (config keys, :func:`diffmix.cli.flags.fields_from_args`), and the job reads
them from there: no user string ever reaches the job's command line, where it could become an
option. A resume (``--resume`` alone) reads the same file back, checking it again.

A little over 400 lines: starting, checking, listing and cancelling a job share ``job.json``,
``request.yaml`` and the owner rule, kept in one module so every path checks them the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from diffmix.runs import JOB_ENV, RunDir, atomic_write, pid_alive, process_start_ticks
from diffmix.settings import LIMITS, Settings, check_request

logger = logging.getLogger(__name__)

STAGES = ("personalize", "generate", "train", "translate", "experiment")
JOB_FILE = "job.json"
#: The settings of a job, written by :func:`start_job` and read by the job (``--config``).
REQUEST_FILE = "request.yaml"
#: Options that say how to run, not what: passed on the job's command line, never in the request.
MODE_OPTIONS = ("--resume", "--json", "--dry-run")


@dataclass(frozen=True)
class Job:
    """A started job: its stage, run directory, process id and owner."""

    stage: str
    run_dir: str
    pid: int
    owner: str | None
    argv: list[str]
    created: float
    #: the process's start time (clock ticks since boot), to tell it from a later one that
    #: got the same pid; None where /proc is missing (and in job.json files of older versions)
    pid_start: int | None = None

    @property
    def run(self) -> RunDir:
        return RunDir(self.run_dir)


def start_job(
    stage: str,
    args: list[str],
    run_dir: str | os.PathLike,
    *,
    owner: str | None = None,
    settings: Settings | None = None,
) -> Job:
    """Start ``diffmix <stage> --config <run_dir>/request.yaml --out <run_dir>`` in the background.

    ``args`` are CLI arguments (no ``--out``): options, and the stage's positional values
    (the dataset spec) either first or after ``--``. They are parsed with the stage's parser and
    checked against ``settings`` (default: read from the environment) with
    :func:`~diffmix.settings.check_request`; ``--config`` is refused (the launcher writes the
    job's settings file itself, :data:`REQUEST_FILE`). ``["--resume"]`` alone resumes the run
    from its request file (checked again). Refuses a run directory where a job is still alive
    (resume it instead, or choose another folder) and a start over the live-job caps
    (``max_jobs_per_visitor`` for ``owner``, ``max_jobs`` in total). ``ValueError`` names the
    problem.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    settings = Settings.from_env() if settings is None else settings
    run_dir = Path(run_dir)
    request = run_dir / REQUEST_FILE
    # 1. Check the arguments with the stage's own parser and the deployment's settings.
    options, positionals = split_args(args)
    modes = [o for o in options if o in MODE_OPTIONS]
    options = [o for o in options if o not in MODE_OPTIONS]
    if modes == ["--resume"] and not options and not positionals and request.is_file():
        fields = read_request(stage, request)
    else:
        fields = parse_stage_args(stage, [*options, *modes], positionals)
    check_request(stage, fields, settings)
    with _START_LOCK:
        # 2. One job per folder; caps on live jobs.
        existing = read_job(run_dir)
        if existing is not None and is_alive(existing):
            raise ValueError(
                f"a {existing.stage} job (pid {existing.pid}) is still running in {run_dir}"
            )
        check_capacity(settings, owner)
        # 3. Start it.
        run_dir.mkdir(parents=True, exist_ok=True)
        write_request(request, fields)
        run = RunDir(run_dir)
        run.clear_cancel()  # a cancel from an earlier run; one asked for from now on is honoured
        argv = [sys.executable, "-m", "diffmix", stage, "--config", str(request),
                "--out", str(run_dir), *modes]  # fmt: skip
        if stage == "experiment":  # its one positional (the table), a fixed word
            argv += ["--", str(fields.get("kind") or "fewshot")]
        log = open(run_dir / "stdout.log", "ab")  # noqa: SIM115 -- handed to the child process
        try:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=os.getcwd(), env={**os.environ, JOB_ENV: "1"},
            )  # fmt: skip
        finally:
            log.close()
        pid_start = process_start_ticks(proc.pid)
        job = Job(stage, str(run_dir), proc.pid, owner, argv, time.time(), pid_start)
        atomic_write(run_dir / JOB_FILE, json.dumps(asdict(job), indent=2) + "\n")
        _CHILDREN[proc.pid] = proc
        # Reap the child as soon as it ends, watched or not: a finished job must not stay a
        # zombie of the app (its status is read from the run folder, not from the process).
        threading.Thread(target=_reap, args=(proc,), name=f"reap-{proc.pid}", daemon=True).start()
    if run.status().get("state") in (None, "queued"):
        run.set_status("queued", pid=proc.pid, pid_start=pid_start, message="starting")
    logger.info("started %s job pid %d in %s", stage, proc.pid, run_dir)
    return job


class _ArgsError(argparse.ArgumentParser):
    """An argument parser whose errors raise ``ValueError`` (never print, never exit)."""

    def error(self, message: str):  # type: ignore[override]
        raise ValueError(f"bad job arguments: {message}")

    def exit(self, status: int = 0, message: str | None = None):  # type: ignore[override]
        raise ValueError(f"bad job arguments: {(message or '').strip() or 'exit'}")


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """``(options, positionals)`` of a job's arguments.

    Positionals are what follows ``--``, or a first argument that does not start with ``-``
    (``["demo", "--steps", "5"]``); any other value that is not an option's is refused later
    by :func:`parse_stage_args`. A positional starting with ``-`` is refused here.
    """
    args = [str(a) for a in args]
    if "--" in args:
        k = args.index("--")
        options, positionals = args[:k], args[k + 1 :]
    elif args and not args[0].startswith("-"):
        options, positionals = args[1:], args[:1]
    else:
        options, positionals = args, []
    bad = [p for p in positionals if p.strip().startswith("-")]
    if bad:
        raise ValueError(f"job argument {bad[0]!r} refused: a value cannot start with '-'")
    if "--out" in options or any(a.startswith("--out=") for a in options):
        raise ValueError("pass the output folder as run_dir, not as --out in args")
    if any(a == "--config" or a.startswith("--config=") for a in options):
        raise ValueError("--config is not accepted for a job: pass its settings as arguments")
    return options, positionals


def parse_stage_args(stage: str, options: list[str], positionals: list[str]) -> dict[str, Any]:
    """The settings a job's arguments give, as config keys (parsed with the stage's CLI parser;
    :func:`diffmix.cli.flags.fields_from_args`).

    ``ValueError`` for unknown options, values an option's type refuses, or a positional value
    among the options (it must come first or after ``--``).
    """
    from diffmix.cli import build_parser
    from diffmix.cli.flags import fields_from_args

    parser = build_parser(_ArgsError)
    tail = ["--", *positionals] if positionals else []
    ns = parser.parse_args([stage, *options, "--out", "-", *tail])
    if not positionals and getattr(ns, "spec", None) is not None:
        raise ValueError(
            f"job argument {ns.spec!r} refused: positional values go first or after '--'"
        )
    return fields_from_args(stage, ns)


#: Values a request file may hold: plain scalars, or lists of them.
_SCALARS = (str, int, float, bool, type(None))


def read_request(stage: str, path: str | os.PathLike) -> dict[str, Any]:
    """The settings of a job's request file, refused (``ValueError``) when it holds a key the
    stage's command line cannot set or a value that is not a plain scalar or list of them."""
    import yaml

    from diffmix.cli import build_parser, stage_parser
    from diffmix.cli.flags import request_keys

    stage_parser(build_parser(_ArgsError), stage)  # the stage's flags, to know its keys
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read the job's settings {path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"the job's settings {path} must hold a mapping of settings")
    unknown = sorted(str(k) for k in data if k not in request_keys(stage))
    if unknown:
        raise ValueError(f"unknown {stage} setting(s) in {path}: {', '.join(unknown)}")
    for key, value in data.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, _SCALARS) for v in values):
            raise ValueError(f"{stage} setting {key} in {path} must be a plain value")
    return data


def write_request(path: str | os.PathLike, fields: dict[str, Any]) -> Path:
    """Write a job's settings (config keys) as YAML, atomically; the path."""
    import yaml

    path = Path(path)
    atomic_write(path, yaml.safe_dump(dict(fields), sort_keys=False))  # the one atomic write
    return path


def live_jobs(root: str | os.PathLike) -> list[Job]:
    """Jobs whose process is alive in run folders two levels under ``root`` (the workspace)."""
    out = []
    root = Path(root)
    if not root.is_dir():
        return out
    for path in root.glob(f"*/*/{JOB_FILE}"):
        try:
            job = read_job(path.parent)
        except (OSError, ValueError, TypeError):
            continue
        if (
            job is not None
            and is_alive(job)
            and job_state(path.parent).get("state")
            in (
                "queued",
                "running",
            )
        ):
            out.append(job)
    return out


def check_capacity(settings: Settings, owner: str | None) -> None:
    """``ValueError`` when starting one more job would pass the live-job caps of ``settings``."""
    per, total = settings.limits.max_jobs_per_visitor, settings.limits.max_jobs
    if not per and not total:
        return
    live = live_jobs(settings.home)
    if total and len(live) >= total:
        raise ValueError(
            f"{len(live)} jobs are running on this deployment, its limit is {total}; try again "
            f"when one has finished (the operator can raise {LIMITS['max_jobs'].env})"
        )
    mine = [j for j in live if j.owner == owner]
    if per and owner is not None and len(mine) >= per:
        raise ValueError(
            f"you have {len(mine)} jobs running, the limit per visitor is {per}; wait for one "
            f"to finish or cancel it (the operator can raise {LIMITS['max_jobs_per_visitor'].env})"
        )


_START_LOCK = threading.Lock()
_CHILDREN: dict[int, subprocess.Popen] = {}


def _reap(proc: subprocess.Popen) -> None:
    """Wait for a job's process to end (collecting its exit status), then forget it."""
    proc.wait()
    logger.info("job pid %d ended with exit code %s", proc.pid, proc.returncode)
    _CHILDREN.pop(proc.pid, None)


def read_job(run_dir: str | os.PathLike) -> Job | None:
    """The job.json of a run directory, or None when no job was started there."""
    p = Path(run_dir) / JOB_FILE
    if not p.is_file():
        return None
    return Job(**json.loads(p.read_text()))


def is_alive(job: Job) -> bool:
    """True while the job's process exists (reaping it when it is our child).

    A pid now held by another process (the job ended and the pid was reused) counts as gone:
    the process start time recorded in job.json is compared where there is one.
    """
    child = _CHILDREN.get(job.pid)
    if child is not None:
        if child.poll() is None:
            return True
        _CHILDREN.pop(job.pid, None)
        return False
    return pid_alive(job.pid, job.pid_start)


def job_state(run_dir: str | os.PathLike) -> dict:
    """The run's status as the app and ``diffmix status`` show it.

    A run that claims to be queued or running but whose process is gone (``kill -9``, the
    OOM killer, a job that died before it could report) is ``failed`` with the message
    "process N ended without a final status" followed by the last line of its output, and
    ``crashed`` True. A run folder without job.json (started from the CLI) is judged by the
    pid its status.json records (:meth:`RunDir.live_status`). Nothing is written.
    """
    run = RunDir(run_dir)
    job = read_job(run_dir)
    if job is None:
        return run.live_status()
    st = run.status()
    if st.get("state") in ("queued", "running") and not is_alive(job):
        st = run.status()  # it may have written its final status just before it ended
    if st.get("state") in ("queued", "running") and not is_alive(job):
        tail = _log_tail(Path(run_dir) / "stdout.log")
        message = f"process {job.pid} ended without a final status"
        st = {**st, "state": "failed", "crashed": True,
              "message": f"{message}: {tail}" if tail else message}  # fmt: skip
    return st


def _log_tail(path: Path, limit: int = 300) -> str:
    """The last non-empty line of a job's output (at most ``limit`` characters)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [" ".join(line.split()) for line in text.replace("\r", "\n").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1][-limit:] if lines else ""


def owner_may_see(owner: str | None, run_owner: str | None, *, public: bool = False) -> bool:
    """The one owner rule: may a caller filtering by ``owner`` see a run made by ``run_owner``?

    A token sees only the runs it started. ``None`` is the operator (the CLI, a private
    deployment: :func:`diffmix.registry.owner_filter`) and sees every run -- except on a
    ``public`` deployment, where a session without a token sees none.
    """
    if owner is None:
        return not public
    return run_owner == owner


def check_owner(job: Job, owner: str | None) -> None:
    """Refuse access to a job started by someone else (owner None = operator, sees all)."""
    if not owner_may_see(owner, job.owner):
        raise PermissionError("this job belongs to another session")


def cancel_job(
    run_dir: str | os.PathLike, *, owner: str | None = None, grace_s: float = 30.0
) -> None:
    """Ask the job to stop at its next step (it checkpoints first); SIGTERM after ``grace_s``."""
    job = read_job(run_dir)
    if job is None:
        raise ValueError(f"no job in {run_dir}")
    check_owner(job, owner)
    RunDir(run_dir).request_cancel()
    if grace_s <= 0:
        return
    deadline = time.time() + grace_s
    while time.time() < deadline:
        if not is_alive(job):
            return
        time.sleep(0.2)
    logger.warning("job %d did not stop within %.0f s; sending SIGTERM", job.pid, grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(job.pid, signal.SIGTERM)


def list_jobs(root: str | os.PathLike, *, owner: str | None = None) -> list[dict]:
    """Jobs under ``root`` (one level of run folders), newest first, filtered by owner."""
    out = []
    root = Path(root)
    if not root.is_dir():
        return out
    for d in root.iterdir():
        job = read_job(d)
        if job is None or not owner_may_see(owner, job.owner):
            continue
        out.append({**asdict(job), "status": job_state(d)})
    return sorted(out, key=lambda j: j["created"], reverse=True)


def wait(run_dir: str | os.PathLike, timeout_s: float = 600.0) -> dict:
    """Block until the job leaves the queued/running states (or ``timeout_s``); its status."""
    deadline = time.time() + timeout_s
    while True:
        st = job_state(run_dir)
        if st.get("state") not in ("queued", "running") or time.time() > deadline:
            return st
        time.sleep(0.2)
