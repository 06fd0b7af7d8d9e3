"""Where Diff-Mix Studio keeps what it makes: one workspace folder.

The workspace holds the cached demo dataset, extracted zip uploads, run directories,
adapters and synthetic datasets. It is ``$DIFFMIX_HOME`` when set, else ``./workspace``
(relative to the current directory, so a cloned repo keeps everything beside itself).
Nothing is written outside it unless the user passes an explicit output path.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "DIFFMIX_HOME"


def home() -> Path:
    """The workspace root (created on first use)."""
    root = Path(os.environ.get(ENV_HOME) or "workspace").expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def subdir(*parts: str) -> Path:
    """A folder inside the workspace, created on demand (e.g. ``subdir("datasets")``)."""
    path = home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path`` resolves (symlinks followed) to ``root`` or somewhere below it."""
    p, r = Path(path).resolve(), Path(root).resolve()
    return p == r or r in p.parents
