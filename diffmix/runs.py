"""Run directories: the one place a long job (personalize, generate, train) reports to.

Layout of a run directory::

    config.json     the resolved config the job runs with
    status.json     {"state", "progress" (0-1), "step", "total", "pid", "started", "updated",
                     "finished", "message"} -- rewritten atomically
    events.jsonl    append-only progress/metric events, one JSON object per line (a resume
                    from an older checkpoint drops those it makes again: :meth:`drop_events`)
    log.txt         the job's log (``logging`` handler attached by :meth:`RunDir.log_to_file`)
    CANCEL          present when a cancel was requested; the job stops at its next check

The UI and the CLI read only these files, so a reload or a second browser tab shows the same
live state and a crashed job leaves a readable record behind.

Honest endings. A stage runs its body inside :meth:`RunDir.lifecycle`, so whatever stops it --
a cancel, Ctrl-C, SIGTERM, a full disk, a bad value, a bug -- leaves ``status.json`` at
``cancelled`` or ``failed`` with a one-line reason (:func:`describe_error`); the status write
itself falls back to an in-place rewrite when the disk is too full for a temp file. A process
that dies without a word (``kill -9``, the OOM killer) cannot write anything: readers use
:meth:`RunDir.live_status`, which reports ``failed`` ("process N ended without a final status")
once the recorded pid is gone, comparing the process start time so a reused pid is not taken
for the job. Checkpoints are written by :func:`save_checkpoint` (temp file, fsync, read back,
rename) and read by :func:`load_newest_checkpoint`, which falls back to the newest one that
loads and says so.

Over 400 lines because :class:`RunDir` and its atomic-write, pid and checkpoint helpers are the one
on-disk contract of a run directory that every stage writes and every reader (UI, CLI, job list)
reads.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed", "cancelled")
#: Set in the environment of a stage launched by :mod:`diffmix.jobs`.
JOB_ENV = "DIFFMIX_JOB"


#: errno values that mean "the disk (or the user's quota) is full".
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class Cancelled(Exception):
    """Raised inside a job when its run directory asks it to stop."""


class Terminated(KeyboardInterrupt):
    """Raised in a stage's main thread by SIGTERM while it runs in :meth:`RunDir.lifecycle`."""


def describe_error(err: BaseException) -> str:
    """One line saying why a stage stopped, with what to do for the common causes.

    A full disk names the file being written and says that finished work is kept and how to
    continue; other OS errors name the file and the cause; anything else is its message
    (prefixed by its type when that is not a ValueError, which carries its own words).
    """
    custom = (
        isinstance(err, OSError) and err.strerror and err.strerror != os.strerror(err.errno or 0)
    )
    if isinstance(err, OSError) and err.errno in DISK_FULL and not custom:
        where = f" while writing {err.filename}" if err.filename else ""
        return (
            f"no space left on device{where}: free some space (or choose another --out) and "
            "run the same command with --resume; the work already saved is kept"
        )
    if isinstance(err, OSError) and err.strerror:
        text = f"{err.strerror}: {err.filename}" if err.filename else str(err.strerror)
    elif isinstance(err, (ValueError, Cancelled, KeyboardInterrupt)):
        text = str(err)
    else:
        text = f"{type(err).__name__}: {err}"
    return " ".join(text.split()) or type(err).__name__


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort; not every platform can open a dir)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_path(path: str | os.PathLike) -> Path:
    """The temp file an atomic write of ``path`` goes through: ``.<name>.<pid>.tmp`` beside it
    (hidden, one per process, so two processes never write the same temp file)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes, *, fsync: bool = True) -> None:
    with open(path, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_target(
    path: str | os.PathLike, *, fsync: bool = True, sync_dir: bool = False
) -> Iterator[Path]:
    """Yield the temp path to write ``path``'s new content into; then swap it into place.

    For writers that take a file name (``torch.save``, safetensors' ``save_file``): on a clean
    exit the temp file is fsynced (``fsync``), renamed over ``path`` with ``os.replace`` and,
    with ``sync_dir``, the folder is fsynced so that the rename survives a power cut (use it
    for the file that marks a finished result). On any error the temp file is removed and
    ``path`` is untouched: it is always either the old file or the complete new one.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync_dir:
        _fsync_dir(path.parent)


def atomic_write(
    path: str | os.PathLike,
    data: bytes | str,
    *,
    fsync: bool = True,
    sync_dir: bool = False,
    in_place_fallback: bool = False,
) -> None:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` so that it is never half written.

    The one atomic write of the package: a temp file beside ``path`` (:func:`temp_path`),
    fsynced (``fsync``), then ``os.replace``; with ``sync_dir`` the folder is fsynced too
    (see :func:`atomic_target`). The temp file is removed when the write fails. With
    ``in_place_fallback`` a full disk is met by overwriting the existing file in place when the
    new data fits in the blocks it already holds (used for status.json, so a run can still say
    that it failed).
    """
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    tmp = temp_path(path)
    try:
        _write_file(tmp, raw, fsync=fsync)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if not isinstance(e, OSError) or not (
            in_place_fallback and e.errno in DISK_FULL and _fits_in_place(path, raw)
        ):
            raise
        with open(path, "r+b") as f:  # no new blocks needed: the file already holds them
            f.write(raw)
            f.truncate(len(raw))
    if sync_dir:
        _fsync_dir(path.parent)


def _fits_in_place(path: Path, data: bytes) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    allocated = getattr(st, "st_blocks", 0) * 512 or st.st_size
    return 0 < len(data) <= allocated


# --------------------------------------------------------------------------- processes


def process_start_ticks(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat``
    field 22), or None where there is no /proc or no such process. Two processes that had the
    same pid one after the other have different values."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start ticks) of a process from /proc, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int | None, start_ticks: int | None = None) -> bool:
    """Whether process ``pid`` still runs (and is the same process: same ``start_ticks``).

    A zombie (ended, not yet reaped) counts as gone. Without /proc only existence is checked.
    """
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        # no /proc here (not Linux): existence is all we can check; with /proc, it just ended
        return not Path("/proc/self/stat").exists()
    state, ticks = stat
    if state in ("Z", "X"):
        return False
    return start_ticks is None or ticks == start_ticks


def _main_process() -> bool:
    """False in the non-main processes of ``accelerate launch`` / torchrun (RANK > 0)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, *, keep: int = 0) -> Path:
    """Write a torch checkpoint so that ``path`` is either absent or complete and loadable.

    ``torch.save`` into a temp file beside ``path``, fsync, read it back (structure and
    every record's header, memory-mapped: cheap), then rename it into place and fsync the
    folder. On any failure (e.g. a full disk) the temp file is removed, earlier checkpoints
    are untouched, and the error propagates. ``keep > 0`` then deletes all but the ``keep``
    newest checkpoints with the same name prefix (``step-*.pt`` for ``step-000100.pt``).
    """
    import torch

    path = Path(path)
    try:
        with atomic_target(path, sync_dir=True) as tmp:
            with open(tmp, "wb") as f:
                torch.save(state, f)
            try:
                torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                raise OSError(
                    errno.EIO, f"checkpoint did not read back after writing ({describe_error(e)})",
                    str(path),
                ) from e  # fmt: skip
    except OSError as e:
        if e.filename is None:  # torch.save into a file object: name the checkpoint
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    if keep > 0:
        prefix = path.name.split("-", 1)[0]
        for old in sorted(path.parent.glob(f"{prefix}-*{path.suffix}"))[:-keep]:
            with contextlib.suppress(OSError):
                old.unlink()
    return path


def checkpoint_files(folder: str | os.PathLike, prefix: str) -> list[Path]:
    """The ``<prefix>-*.pt`` checkpoints in ``folder``, oldest first (their names hold the
    zero-padded step or epoch, so they sort by it); ``[]`` when there is none."""
    return sorted(Path(folder).glob(f"{prefix}-*.pt"))


def require_keys(keys: Sequence[str], what: str) -> Callable[[dict[str, Any]], None]:
    """A ``check`` for :func:`load_newest_checkpoint`: refuse a loadable file lacking any of
    ``keys`` (``ValueError: not a <what> (no [...])``), one that is not our checkpoint."""

    def check(state: dict[str, Any]) -> None:
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"not a {what} (no {missing})")

    return check


def prune_checkpoints(paths: Sequence[Path], *, keep: int = 1) -> list[Path]:
    """Delete all but the ``keep`` newest of ``paths`` (given oldest first); the deleted ones.

    Called when a run finishes: the newest checkpoint is what a resume (or a later run that
    continues it) needs; the older ones -- kept during the run in case the newest is cut short
    -- only take disk (about 100 MB each for a nano personalization).
    """
    if keep < 1:
        raise ValueError(
            f"keep must be >= 1 (the newest checkpoint is what resume needs), got {keep}"
        )
    gone = []
    for old in list(paths)[:-keep]:
        with contextlib.suppress(OSError):
            old.unlink()
            gone.append(old)
    if gone:
        logger.info("run finished: removed %d older checkpoint(s), kept %s", len(gone),
                    Path(list(paths)[-1]).name)  # fmt: skip
    return gone


def load_newest_checkpoint(
    paths: Sequence[Path], *, check: Callable[[dict[str, Any]], None] | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint of ``paths`` (given oldest first) that loads.

    Each one that does not load (truncated, corrupt, or rejected by ``check``, which raises)
    is renamed to ``<name>.corrupt`` (kept for inspection, never tried again) with a warning,
    and the next older one is tried; the warning names the one resumed from. Returns None
    when ``paths`` is empty; raises ValueError (one line) when none of them loads.
    """
    import torch

    bad: list[tuple[Path, str]] = []
    for path in reversed(list(paths)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError(f"holds a {type(state).__name__}, not a checkpoint dict")
            if check is not None:
                check(state)
        except Exception as e:
            reason = describe_error(e)
            logger.warning("checkpoint %s does not load (%s); trying an older one", path, reason)
            bad.append((path, reason))
            continue
        if bad:
            logger.warning(
                "resuming from %s, the newest checkpoint that loads (%d newer one(s) unreadable, "
                "renamed *.corrupt)", path.name, len(bad),
            )  # fmt: skip
            for p, _ in bad:
                with contextlib.suppress(OSError):
                    p.rename(p.with_name(p.name + ".corrupt"))
        return path, state
    if not bad:
        return None
    newest, reason = bad[0]
    raise ValueError(
        f"cannot resume: none of the {len(bad)} checkpoint(s) in {newest.parent} loads "
        f"(newest {newest.name}: {reason}); delete that folder to start over, or use another --out"
    )


class RunDir:
    """A job's run directory (created on first use)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    # -- config ---------------------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write(self.path / "config.json", json.dumps(config, indent=2, default=str) + "\n")

    def read_config(self) -> dict[str, Any] | None:
        p = self.path / "config.json"
        return json.loads(p.read_text()) if p.is_file() else None

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The status as last written (``{"state": "queued"}`` when none was written yet).

        Readers that show a run use :meth:`live_status` (it knows about dead processes)."""
        p = self.path / "status.json"
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return {"state": "queued"}

    def set_status(self, state: str | None = None, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into status.json (and the state, one of :data:`STATES`)."""
        st = self.status()
        now = time.time()
        if state is not None:
            if state not in STATES:
                raise ValueError(f"unknown run state {state!r}; one of {STATES}")
            if state == "running" and st.get("state") != "running":
                st["started"] = now
                st["pid"] = os.getpid()
            if state in ("done", "failed", "cancelled"):
                st["finished"] = now
            st["state"] = state
        st.update(fields)
        st["updated"] = now
        atomic_write(
            self.path / "status.json", json.dumps(st, default=str) + "\n", in_place_fallback=True
        )
        return st

    def live_status(self) -> dict[str, Any]:
        """:meth:`status`, but ``failed`` when it says queued/running and its process is gone.

        The pid (and its start time, ``pid_start``) recorded in status.json are checked; the
        message then reads "process N ended without a final status" (``kill -9``, the OOM
        killer, a power cut) and ``crashed`` is True. Nothing is written.
        """
        st = self.status()
        pid = st.get("pid")
        active = st.get("state") in ("queued", "running") and isinstance(pid, int)
        if active and not pid_alive(pid, st.get("pid_start")):
            st = self.status()  # it may have written its final status just before it ended
            if st.get("state") in ("queued", "running") and st.get("pid") == pid:
                return {**st, "state": "failed", "crashed": True,
                        "message": f"process {pid} ended without a final status"}  # fmt: skip
        return st

    @contextlib.contextmanager
    def lifecycle(
        self, stage: str, *, report: bool | None = None, log: bool = True, **fields: Any
    ) -> Iterator[RunDir]:
        """Run a stage's body so that however it stops, its status ends honest.

        On entry the status becomes ``running`` with this process's pid, its start time and
        ``fields``. On the way out: :class:`Cancelled` and Ctrl-C leave ``cancelled``;
        SIGTERM (turned into :class:`Terminated` while inside, main thread only) leaves
        ``cancelled`` when a cancel was requested, else ``failed``; any other exception leaves
        ``failed`` with :func:`describe_error`'s one line (and a ``failed`` event). The
        exception propagates. Success must set ``done`` itself (it knows its final figures).
        ``report`` (default: not a non-main process of ``accelerate launch``) False makes
        this a no-op for the status, so only one process writes it. With ``log`` (and
        ``report``) the ``diffmix`` loggers also write to log.txt while inside.
        """
        report = _main_process() if report is None else report
        handler = self.log_to_file() if report and log else None
        try:
            if report:
                self.set_status("running", pid=os.getpid(), pid_start=process_start_ticks(os.getpid()),
                            started=time.time(), stage=stage, finished=None, error=None,
                            **fields)  # fmt: skip
        except BaseException:
            if handler is not None:
                logging.getLogger("diffmix").removeHandler(handler)
                handler.close()
            raise
        restore = _catch_sigterm()
        try:
            yield self
        except Cancelled:
            logger.info("%s cancelled; run it again with --resume to continue", stage)
            if report:
                self._final("cancelled", "cancelled; resume to continue")
            raise
        except Terminated as e:
            if report:
                if self.cancel_requested():
                    self._final("cancelled", "cancelled (SIGTERM); resume to continue")
                else:
                    self._final("failed", f"{e}; resume to continue")
            raise
        except KeyboardInterrupt:
            if report:
                self._final("cancelled", "interrupted (Ctrl-C); resume to continue")
            raise
        except BaseException as e:
            if report:
                self._final("failed", describe_error(e), error=type(e).__name__)
            raise
        finally:
            restore()
            if handler is not None:
                logging.getLogger("diffmix").removeHandler(handler)
                handler.close()

    def _final(self, state: str, message: str, **fields: Any) -> None:
        """The last status write of a stopped stage; never masks the error that stopped it."""
        try:
            self.set_status(state, message=message, **fields)
        except OSError as e:
            logger.warning("could not record %s status in %s: %s", state, self.path, e)
        with contextlib.suppress(OSError):
            self.event(state, message=message)

    # -- events ---------------------------------------------------------------------------
    def event(self, kind: str, **data: Any) -> None:
        """Append one event line ``{"time", "kind", ...data}`` to events.jsonl."""
        line = json.dumps({"time": time.time(), "kind": kind, **data}, default=float)
        with open(self.path / "events.jsonl", "a") as f:
            f.write(line + "\n")
            f.flush()

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """All events (of ``kind`` when given); a torn last line (crash mid-write) is ignored."""
        p = self.path / "events.jsonl"
        if not p.is_file():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if kind is None or ev.get("kind") == kind:
                out.append(ev)
        return out

    def drop_events(self, kind: str, keep: Callable[[dict[str, Any]], bool]) -> int:
        """Rewrite events.jsonl without the ``kind`` events for which ``keep`` is false (e.g.
        epochs a resume from an older checkpoint makes again); returns how many were dropped."""
        p = self.path / "events.jsonl"
        if not p.is_file():
            return 0
        lines, dropped = [], 0
        for line in p.read_text().splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if ev.get("kind") == kind and not keep(ev):
                dropped += 1
            else:
                lines.append(line + "\n")
        if dropped:
            atomic_write(p, "".join(lines))
        return dropped

    # -- cancel ---------------------------------------------------------------------------
    def request_cancel(self) -> None:
        (self.path / "CANCEL").touch()

    def cancel_requested(self) -> bool:
        return (self.path / "CANCEL").exists()

    def clear_cancel(self) -> None:
        (self.path / "CANCEL").unlink(missing_ok=True)

    def clear_stale_cancel(self) -> None:
        """Called by a stage as it starts: drop a cancel left over from an earlier run.

        A process launched by :mod:`diffmix.jobs` (``DIFFMIX_JOB`` set) keeps the file: the
        launcher cleared it before starting, so any cancel present now was asked for since.
        """
        if not os.environ.get(JOB_ENV):
            self.clear_cancel()

    def check_cancel(self) -> None:
        """Raise :class:`Cancelled` when a cancel was requested."""
        if self.cancel_requested():
            raise Cancelled(f"cancel requested for {self.path}")

    # -- log ------------------------------------------------------------------------------
    def log_to_file(self, level: int = logging.INFO) -> logging.Handler:
        """Attach a handler writing the ``diffmix`` loggers to log.txt; returns it (to remove).

        A record that cannot be written (a full disk) is dropped silently rather than printing
        a logging traceback: the stage's own error says what happened."""
        handler = _QuietFileHandler(self.path / "log.txt")
        handler.setLevel(level)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("diffmix").addHandler(handler)
        return handler


class _QuietFileHandler(logging.FileHandler):
    """A FileHandler that drops a record it cannot write instead of printing a traceback."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 -- logging's name
        pass


def _catch_sigterm() -> Callable[[], None]:
    """Turn SIGTERM into :class:`Terminated` in the main thread (where the default action
    would kill the process with no word); returns the function that restores the handler.

    Leaves an embedding application's own handler alone, and does nothing off the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, AttributeError):
        return lambda: None
    if previous not in (signal.SIG_DFL, None):
        return lambda: None

    def on_term(signum, frame):
        raise Terminated("stopped by SIGTERM")

    signal.signal(signal.SIGTERM, on_term)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
