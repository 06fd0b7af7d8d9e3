"""Operator settings: what a deployment of Diff-Mix Studio lets its users do.

Settings are read once from the environment (:meth:`Settings.from_env`) and never change the
environment. A *public* deployment (a Hugging Face Space, or ``DIFFMIX_PUBLIC=1``) is opened by
strangers, so by default it refuses dataset specs that name folders on the server and keeps
uploads small; a *private* one (a researcher's own machine) allows both.

=============================  ===============================================================
Variable                       Meaning
=============================  ===============================================================
``DIFFMIX_HOME``               workspace folder (default ``./workspace``)
``SPACE_ID``                   set by Hugging Face Spaces: makes the deployment public
``DIFFMIX_PUBLIC``             ``1`` forces public, ``0`` forces private (wins over SPACE_ID)
``DIFFMIX_ALLOW_LOCAL_PATHS``  ``1``/``0``: allow dataset specs naming server folders or zips
``DIFFMIX_ALLOWED_ROOTS``      folders (``os.pathsep``-separated) that local specs must be in
``DIFFMIX_MAX_UPLOAD_MB``      largest accepted upload in MB (200 public, 2048 private)
``DIFFMIX_MODEL``              base diffusion model: ``nano``, a hub id or a local folder
``DIFFMIX_ALLOW_HUB``          ``1``/``0``: allow ``hub:owner/name`` dataset specs
=============================  ===============================================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from diffmix import workspace

ENV_PUBLIC = "DIFFMIX_PUBLIC"
ENV_ALLOW_LOCAL = "DIFFMIX_ALLOW_LOCAL_PATHS"
ENV_ALLOWED_ROOTS = "DIFFMIX_ALLOWED_ROOTS"
ENV_MAX_UPLOAD = "DIFFMIX_MAX_UPLOAD_MB"
ENV_MODEL = "DIFFMIX_MODEL"
ENV_ALLOW_HUB = "DIFFMIX_ALLOW_HUB"
ENV_SPACE_ID = "SPACE_ID"

DEFAULT_MAX_UPLOAD_MB_PUBLIC = 200
DEFAULT_MAX_UPLOAD_MB_PRIVATE = 2048
DEFAULT_MODEL = "nano"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")
_DEMO = re.compile(r"^demo(:-?\d+)?$")


@dataclass(frozen=True)
class Settings:
    """What this deployment allows; build it with :meth:`from_env`."""

    #: Workspace folder where everything the app makes is written (``DIFFMIX_HOME``).
    home: Path
    #: True on a public deployment (``SPACE_ID`` set or ``DIFFMIX_PUBLIC=1``).
    public: bool = False
    #: Whether dataset specs may name folders / zip files on the server.
    allow_local_paths: bool = True
    #: When non-empty, local specs must resolve inside one of these folders (or the workspace).
    allowed_roots: tuple[Path, ...] = ()
    #: Largest accepted upload, in megabytes.
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB_PRIVATE
    #: Base diffusion model: ``"nano"`` (embedded), a hub id or a local diffusers folder.
    model: str = DEFAULT_MODEL
    #: Whether ``hub:owner/name`` dataset specs are allowed (they download from the Hub).
    allow_hub: bool = True

    @property
    def mode(self) -> str:
        """``"public"`` or ``"private"``, for display."""
        return "public" if self.public else "private"

    @property
    def max_upload_bytes(self) -> int:
        """:attr:`max_upload_mb` in bytes."""
        return self.max_upload_mb * 1024 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``env`` (default ``os.environ``); a ``ValueError`` names a bad variable."""
        env = os.environ if env is None else env
        # 1. Public or private: an explicit DIFFMIX_PUBLIC wins over the Spaces marker.
        public = env_flag(env, ENV_PUBLIC)
        if public is None:
            public = bool(env.get(ENV_SPACE_ID, "").strip())
        # 2. What users may point at.
        allow_local = env_flag(env, ENV_ALLOW_LOCAL)
        allow_hub = env_flag(env, ENV_ALLOW_HUB)
        roots = tuple(
            Path(p).expanduser().resolve()
            for p in env.get(ENV_ALLOWED_ROOTS, "").split(os.pathsep)
            if p.strip()
        )
        # 3. Sizes and model.
        default_mb = DEFAULT_MAX_UPLOAD_MB_PUBLIC if public else DEFAULT_MAX_UPLOAD_MB_PRIVATE
        max_mb = _positive_int(env, ENV_MAX_UPLOAD, default_mb)
        model = env.get(ENV_MODEL, "").strip() or DEFAULT_MODEL
        home_env = env.get(workspace.ENV_HOME) or "workspace"
        return cls(
            home=Path(home_env).expanduser().resolve(),
            public=public,
            allow_local_paths=(not public) if allow_local is None else allow_local,
            allowed_roots=roots,
            max_upload_mb=max_mb,
            model=model,
            allow_hub=True if allow_hub is None else allow_hub,
        )


def env_flag(env: Mapping[str, str], name: str) -> bool | None:
    """A boolean variable: None when unset or empty; ``ValueError`` on anything unrecognised."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean; use 1 or 0")


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    """A positive integer variable, ``default`` when unset; ``ValueError`` naming it otherwise."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer (megabytes)") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be a positive number of megabytes")
    return value


def is_upload(spec: str, settings: Settings) -> bool:
    """True when ``spec`` is a file the app staged in ``<workspace>/uploads`` (always allowed)."""
    spec = (spec or "").strip()
    if not spec or _DEMO.match(spec) or spec.startswith("hub:"):
        return False
    return workspace.is_inside(Path(spec).expanduser(), settings.home / "uploads")


def check_spec(spec: str, settings: Settings) -> str:
    """Validate a dataset spec typed in the UI against ``settings``; return it stripped.

    ``"demo"`` / ``"demo:SEED"`` is always allowed; ``"hub:owner/name[:split]"`` needs :attr:`Settings.allow_hub`;
    anything else is a server path (folder or ``.zip``) and needs
    :attr:`Settings.allow_local_paths` and, when :attr:`Settings.allowed_roots` is set, must
    resolve inside one of those roots or the workspace. Raises ``ValueError`` naming the spec
    and the setting an operator would change to allow it.
    """
    spec = (spec or "").strip()
    if not spec:
        raise ValueError("empty dataset spec: use 'demo', a folder, a .zip or 'hub:owner/name'")
    if _DEMO.match(spec):
        return spec
    if spec.startswith("hub:"):
        return _check_hub(spec, settings)
    return _check_local(spec, settings)


def _check_hub(spec: str, settings: Settings) -> str:
    """Hub specs: allowed by the operator and shaped like ``hub:owner/name[:split]``."""
    if not settings.allow_hub:
        raise ValueError(
            f"dataset {spec!r} refused: Hub datasets are disabled on this deployment "
            f"(the operator can set {ENV_ALLOW_HUB}=1 to allow them)"
        )
    if not _HUB_ID.match(spec[len("hub:") :]):
        raise ValueError(f"dataset {spec!r} is not a Hub id; expected 'hub:owner/name[:split]'")
    return spec


def _check_local(spec: str, settings: Settings) -> str:
    """Server paths: allowed by the operator and inside the allowed roots (when set)."""
    if not settings.allow_local_paths:
        why = "public" if settings.public else "this"
        raise ValueError(
            f"dataset {spec!r} refused: server paths are not allowed on {why} deployment "
            f"(the operator can set {ENV_ALLOW_LOCAL}=1 to allow them); "
            "upload a .zip or use 'demo' or 'hub:owner/name' instead"
        )
    if settings.allowed_roots:
        roots = (*settings.allowed_roots, settings.home)
        if not any(workspace.is_inside(Path(spec).expanduser(), root) for root in roots):
            listed = os.pathsep.join(str(r) for r in settings.allowed_roots)
            raise ValueError(
                f"dataset {spec!r} refused: it is outside the allowed folders ({listed}) and "
                f"the workspace; the operator can add its folder to {ENV_ALLOWED_ROOTS}"
            )
    return spec
