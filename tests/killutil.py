"""Start a ``diffmix`` command, wait until it reaches a point, and ``kill -9`` it there."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def sigkill_when(
    argv: Sequence[str],
    ready: Callable[[], bool],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout_s: float = 60.0,
    poll_s: float = 0.01,
) -> None:
    """Run ``argv``; once ``ready()`` is true, SIGKILL it. Fails the test when the process
    ends on its own first (the kill would prove nothing) or never gets ready in time."""
    proc = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(poll_s)
        if proc.poll() is not None:
            raise AssertionError(f"the job ended before it could be killed: {proc.stderr.read()}")
        if not ready():
            raise AssertionError(f"the job did not get ready within {timeout_s} s")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
