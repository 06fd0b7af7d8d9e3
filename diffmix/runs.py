"""Run directories: the one place a long job (personalize, generate, train) reports to.

Layout of a run directory::

    config.json     the resolved config the job runs with
    status.json     {"state", "progress" (0-1), "step", "total", "pid", "started", "updated",
                     "finished", "message"} -- rewritten atomically
    events.jsonl    append-only progress/metric events, one JSON object per line
    log.txt         the job's log (``logging`` handler attached by :meth:`RunDir.log_to_file`)
    CANCEL          present when a cancel was requested; the job stops at its next check

The UI and the CLI read only these files, so a reload or a second browser tab shows the same
live state and a crashed job leaves a readable record behind.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

STATES = ("queued", "running", "done", "failed", "cancelled")
#: Set in the environment of a stage launched by :mod:`diffmix.jobs`.
JOB_ENV = "DIFFMIX_JOB"


class Cancelled(Exception):
    """Raised inside a job when its run directory asks it to stop."""


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDir:
    """A job's run directory (created on first use)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    # -- config ---------------------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        _atomic_write(self.path / "config.json", json.dumps(config, indent=2, default=str) + "\n")

    def read_config(self) -> dict[str, Any] | None:
        p = self.path / "config.json"
        return json.loads(p.read_text()) if p.is_file() else None

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The current status (``{"state": "queued"}`` when none was written yet)."""
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
        _atomic_write(self.path / "status.json", json.dumps(st, default=str) + "\n")
        return st

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
        """Attach a handler writing the ``diffmix`` loggers to log.txt; returns it (to remove)."""
        handler = logging.FileHandler(self.path / "log.txt")
        handler.setLevel(level)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("diffmix").addHandler(handler)
        return handler
