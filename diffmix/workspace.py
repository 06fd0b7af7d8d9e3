"""Where Diff-Mix Studio keeps what it makes: one workspace folder.

The workspace holds the cached demo dataset, extracted zip uploads, run directories,
adapters and synthetic datasets. It is ``$DIFFMIX_HOME`` when set, else ``./workspace``
(relative to the current directory, so a cloned repo keeps everything beside itself).
Nothing is written outside it unless the user passes an explicit output path.
"""

from __future__ import annotations

import os
import re
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


#: Workspace folder of each stage's run directories (the app's run registry,
#: :mod:`diffmix.registry`): ``adapters/<name>``, ``synthetic/<name>``, ``runs/<name>``.
STAGE_DIRS = {"personalize": "adapters", "generate": "synthetic", "train": "runs"}


def stage_root(stage: str) -> Path:
    """``<workspace>/<adapters|synthetic|runs>`` (created on demand)."""
    if stage not in STAGE_DIRS:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGE_DIRS)}")
    return subdir(STAGE_DIRS[stage])


def name_pattern(max_length: int, *, spaces: bool = False) -> re.Pattern[str]:
    """A typed name that is safe as one file or folder name of the workspace: 1 to
    ``max_length`` letters, digits, ``.``, ``_``, ``-`` (and spaces with ``spaces``), starting
    with a letter or digit (so never a path, never hidden)."""
    space = " " if spaces else ""
    return re.compile(rf"^[A-Za-z0-9][A-Za-z0-9{space}._-]{{0,{max_length - 1}}}$")


def check_file_name(name: str | None, what: str, *, max_length: int, spaces: bool = False) -> str:
    """``name`` as typed (stripped) when :func:`name_pattern` allows it and it holds no ``..``;
    else ``ValueError`` naming ``what`` (e.g. ``"run"``), the name and the rule."""
    text = (name or "").strip()
    if not name_pattern(max_length, spaces=spaces).match(text) or ".." in text:
        allowed = "letters, digits, spaces," if spaces else "letters, digits,"
        raise ValueError(
            f"{what} name {text!r} is not allowed: use up to {max_length} {allowed} '.', '_' or "
            "'-' (starting with a letter or digit)"
        )
    return text


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path`` resolves (symlinks followed) to ``root`` or somewhere below it."""
    p, r = Path(path).resolve(), Path(root).resolve()
    return p == r or r in p.parents


# --------------------------------------------------------------------------- public display
#
# A public deployment must not show server paths (its workspace prefix, staged-upload folders)
# in messages or in values returned to clients. Staged uploads are named by an opaque token
# ``upload:<digest>/<file name>`` (the digest is the content hash the upload was staged under)
# that the server maps back with :func:`resolve_upload_token`; everything else inside the
# workspace is shown relative to it, and paths outside it by their name only. Logs keep full
# paths. ``settings`` below is a :class:`diffmix.settings.Settings` (anything with ``home``
# and ``public``).

UPLOADS = "uploads"
UPLOAD_PREFIX = "upload:"
_UPLOAD_TOKEN = re.compile(r"^upload:([0-9a-f]{8,64})/([^/\\\x00]+)$")
#: An absolute POSIX path in free text: starts the text or follows a space, a quote, ``(``,
#: ``[`` or ``=`` (so ``<folder>/train``, URLs and relative paths are left alone).
_ABS_PATH = re.compile(r"(?<![^\s'\"`(\[=])/[^\s'\"`<>|,;()\[\]{}]+")
#: An absolute path inside free text (what :func:`redact_paths` rewrites).
ABS_PATH = _ABS_PATH


def upload_token(path: str | os.PathLike, home: str | os.PathLike) -> str | None:
    """``upload:<digest>/<name>`` for a file staged at ``<home>/uploads/<session>/<digest>/<name>``.

    None when ``path`` is not such a file (any other path, a spec like ``demo``).
    """
    try:
        rel = Path(path).expanduser().resolve().relative_to(Path(home).resolve() / UPLOADS)
    except (ValueError, OSError):
        return None
    if len(rel.parts) != 3:
        return None
    token = f"{UPLOAD_PREFIX}{rel.parts[1]}/{rel.parts[2]}"
    return token if _UPLOAD_TOKEN.match(token) else None


def is_upload_token(spec: str) -> bool:
    """True when ``spec`` has the shape of an upload token (see :func:`upload_token`)."""
    return bool(_UPLOAD_TOKEN.match(spec or ""))


def resolve_upload_token(token: str, home: str | os.PathLike) -> Path:
    """The staged file an upload token names; ``ValueError`` when it is malformed or gone.

    The token is parsed (a hex digest and a plain file name, never a path) and looked up under
    ``<home>/uploads/*/<digest>/<name>``; the result is checked to lie inside the uploads folder.
    """
    m = _UPLOAD_TOKEN.match(token or "")
    if m is None or m.group(2) in (".", ".."):
        raise ValueError(f"{token!r} is not an upload name; upload the .zip again")
    root = Path(home).resolve() / UPLOADS
    for candidate in sorted(root.glob(f"*/{m.group(1)}/{m.group(2)}")):
        if candidate.is_file() and is_inside(candidate, root):
            return candidate
    raise ValueError(
        f"upload {m.group(2)!r} is no longer on the server; upload it again on the Dataset page"
    )


def display_path(path: str | os.PathLike, settings) -> str:
    """How a server path is shown to users of this deployment.

    Private deployments: the path as given. Public ones: a staged upload as
    ``upload:<file name>``, a path inside the workspace relative to it (``runs/x/config.json``;
    the workspace itself as ``workspace``), any other path by its name only.
    """
    text = os.fspath(path)
    if not settings.public:
        return text
    p = Path(text).expanduser()
    home_dir = Path(settings.home).resolve()
    try:
        rel = p.resolve().relative_to(home_dir)
    except (ValueError, OSError):
        try:
            rel = p.relative_to(home_dir)  # a path that resolves elsewhere (symlink)
        except ValueError:
            return p.name or text
    if not rel.parts:
        return "workspace"
    if rel.parts[0] == UPLOADS and len(rel.parts) >= 4:
        return UPLOAD_PREFIX + "/".join(rel.parts[3:])
    return rel.as_posix()


def redact_paths(text: str, settings) -> str:
    """``text`` with every absolute path shown as :func:`display_path` shows it (public only).

    Used on messages shown in the page or returned to API clients; logs keep the full text.
    """
    if not settings.public or not text:
        return text

    def one(m: re.Match[str]) -> str:
        raw = m.group(0)
        tail = ""
        while raw and raw[-1] in ".:!?'\"":
            raw, tail = raw[:-1], raw[-1] + tail
        return (display_path(raw, settings) if raw else "") + tail

    return _ABS_PATH.sub(one, text)
