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

Work limits (a whole number each; ``0`` means "no limit"). Public deployments get small ones
so that one visitor cannot hold the machine; the operator can raise any of them. Defaults:

================================  =======  ==========  ==========================================
Variable                          public   private     Bounds
================================  =======  ==========  ==========================================
``DIFFMIX_MAX_STEPS``             5000     1000000     personalize optimiser steps (SD default 5000)
``DIFFMIX_MAX_SAMPLING_STEPS``    100      1000        denoising steps of translate / generate
``DIFFMIX_MAX_RANK``              64       1024        LoRA rank (authors: 10)
``DIFFMIX_MAX_BATCH``             64       4096        batch size, gradient accumulation
``DIFFMIX_MAX_EPOCHS``            200      100000      classifier epochs (authors: 120)
``DIFFMIX_MAX_THREADS``           4        1024        torch CPU threads of a training job
``DIFFMIX_MAX_RESOLUTION``        512      4096        training / generation side in px
``DIFFMIX_MAX_MULTIPLIER``        10       1000        synthetic images per real image (authors: 5)
``DIFFMIX_MAX_JOBS_PER_VISITOR``  2        0           live background jobs of one browser
``DIFFMIX_MAX_JOBS``              4        0           live background jobs in total
``DIFFMIX_MAX_EXTRACT_MB``        2048     4096        total size a dataset zip may expand to
``DIFFMIX_MAX_ZIP_RATIO``         100      200         total expanded / compressed size of a zip
``DIFFMIX_MAX_DEMO_SEEDS``        8        0           ``demo:SEED`` seeds allowed (0 .. N-1)
``DIFFMIX_PREVIEW_CONCURRENCY``   4        2           Translate previews run at the same time
================================  =======  ==========  ==========================================

:func:`check_request` applies the limits and the path rules to a stage's settings; the job
launcher (:func:`diffmix.jobs.start_job`) and the command line of each stage call it, so no
page, API request or command-line flag skips them.

Over 400 lines (fifty of them this docstring) because the settings, the limits and the checks
that enforce them are one security boundary: every check reads the same :class:`Settings`, so no
caller can apply one rule and miss another.
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
class Limit:
    """One work limit: its variable, public and private defaults, and what it bounds."""

    env: str
    public: int
    private: int
    what: str


#: Work limits by :class:`Limits` field (see the module's table).
LIMITS: dict[str, Limit] = {
    "max_steps": Limit("DIFFMIX_MAX_STEPS", 5000, 1_000_000, "personalization steps"),
    "max_sampling_steps": Limit("DIFFMIX_MAX_SAMPLING_STEPS", 100, 1000, "denoising steps"),
    "max_rank": Limit("DIFFMIX_MAX_RANK", 64, 1024, "LoRA rank"),
    "max_batch": Limit("DIFFMIX_MAX_BATCH", 64, 4096, "batch size"),
    "max_epochs": Limit("DIFFMIX_MAX_EPOCHS", 200, 100_000, "epochs"),
    "max_threads": Limit("DIFFMIX_MAX_THREADS", 4, 1024, "CPU threads"),
    "max_resolution": Limit("DIFFMIX_MAX_RESOLUTION", 512, 4096, "image side (px)"),
    "max_multiplier": Limit("DIFFMIX_MAX_MULTIPLIER", 10, 1000, "images per real image"),
    "max_jobs_per_visitor": Limit("DIFFMIX_MAX_JOBS_PER_VISITOR", 2, 0, "jobs per visitor"),
    "max_jobs": Limit("DIFFMIX_MAX_JOBS", 4, 0, "jobs in total"),
    "max_extract_mb": Limit("DIFFMIX_MAX_EXTRACT_MB", 2048, 4096, "expanded zip size (MB)"),
    "max_zip_ratio": Limit("DIFFMIX_MAX_ZIP_RATIO", 100, 200, "zip expansion ratio"),
    "max_demo_seeds": Limit("DIFFMIX_MAX_DEMO_SEEDS", 8, 0, "demo seeds"),
    "preview_concurrency": Limit("DIFFMIX_PREVIEW_CONCURRENCY", 4, 2, "concurrent previews"),
}


@dataclass(frozen=True)
class Limits:
    """How much work one request may ask for (``0``: no limit); see :data:`LIMITS`."""

    max_steps: int = LIMITS["max_steps"].private
    max_sampling_steps: int = LIMITS["max_sampling_steps"].private
    max_rank: int = LIMITS["max_rank"].private
    max_batch: int = LIMITS["max_batch"].private
    max_epochs: int = LIMITS["max_epochs"].private
    max_threads: int = LIMITS["max_threads"].private
    max_resolution: int = LIMITS["max_resolution"].private
    max_multiplier: int = LIMITS["max_multiplier"].private
    max_jobs_per_visitor: int = LIMITS["max_jobs_per_visitor"].private
    max_jobs: int = LIMITS["max_jobs"].private
    max_extract_mb: int = LIMITS["max_extract_mb"].private
    max_zip_ratio: int = LIMITS["max_zip_ratio"].private
    max_demo_seeds: int = LIMITS["max_demo_seeds"].private
    preview_concurrency: int = LIMITS["preview_concurrency"].private

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, public: bool) -> Limits:
        """The defaults of the mode, overridden by the variables set in ``env``."""
        values = {}
        for name, lim in LIMITS.items():
            default = lim.public if public else lim.private
            values[name] = env_int(env, lim.env, default, minimum=0, unit=lim.what)
        if values["preview_concurrency"] < 1:
            raise ValueError(f"{LIMITS['preview_concurrency'].env} must be at least 1")
        return cls(**values)


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
    #: How much work a request may ask for (public deployments: small; see :data:`LIMITS`).
    limits: Limits = Limits()

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
        max_mb = env_int(env, ENV_MAX_UPLOAD, default_mb, minimum=1, unit="megabytes")
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
            limits=Limits.from_env(env, public=public),
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


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int, unit: str) -> int:
    """An integer variable ``>= minimum``, ``default`` when unset; ``ValueError`` naming it.

    ``unit`` words the value in the error (``"megabytes"``); with ``minimum`` 0 the value 0
    means "no limit" and the error says so.
    """
    raw = env.get(name, "").strip()
    if not raw:
        return default
    what = f"({unit}; 0 means no limit)" if minimum == 0 else f"({unit})"
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number {what}") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be a whole number >= {minimum} {what}")
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
    if spec.startswith("-"):
        raise ValueError(f"dataset {spec!r} refused: a dataset spec cannot start with '-'")
    if _DEMO.match(spec):
        return _check_demo(spec, settings)
    if spec.startswith("hub:"):
        return _check_hub(spec, settings)
    return _check_local(spec, settings)


def _check_demo(spec: str, settings: Settings) -> str:
    """``demo:SEED`` renders a new dataset per seed: public deployments allow a few seeds."""
    seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
    cap = settings.limits.max_demo_seeds
    if cap and not 0 <= seed < cap:
        raise ValueError(
            f"dataset {spec!r} refused: this deployment renders demo seeds 0 to {cap - 1} only "
            f"(the operator can raise {LIMITS['max_demo_seeds'].env})"
        )
    return spec


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


# --------------------------------------------------------------------------- stage requests

#: Config field -> the :class:`Limits` field that bounds it (same names in every stage).
FIELD_LIMITS: dict[str, str] = {
    "steps": "max_steps",
    "personalize_steps": "max_steps",
    "num_inference_steps": "max_sampling_steps",
    "rank": "max_rank",
    "batch_size": "max_batch",
    "eval_batch_size": "max_batch",
    "grad_accum": "max_batch",
    "epochs": "max_epochs",
    "num_threads": "max_threads",
    "resolution": "max_resolution",
    "multiplier": "max_multiplier",
}
#: Config fields naming a file or folder on the server (checked like dataset folders).
PATH_FIELDS = ("adapter", "confusion", "config", "source", "synthetic")
#: Config fields holding a prompt a user typed (checked by :func:`check_prompt`).
PROMPT_FIELDS = ("prompt", "prompt_template")
#: Longest prompt a request may carry, in characters: the adapters' template limit
#: (``diffmix.adapter.MAX_TEMPLATE_CHARS``); CLIP reads only 77 tokens anyway.
MAX_PROMPT_CHARS = 300


def check_prompt(prompt: object, settings: Settings, *, what: str = "prompt") -> str:
    """A prompt typed by a user, refused with a ``ValueError`` when it is too long
    (:data:`MAX_PROMPT_CHARS`), holds control characters or, on a public deployment, names a
    server path (prompts are plain text; the message never repeats the path)."""
    text = str(prompt)
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"{what} is {len(text)} characters long, more than {MAX_PROMPT_CHARS} (the text "
            "encoder reads only its first 77 tokens); shorten it"
        )
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(f"{what} holds a control character ({bad!r}); type plain text")
    if settings.public and workspace.ABS_PATH.search(text):
        raise ValueError(
            f"{what} refused: it names a server path, and this deployment takes plain-text "
            "prompts only; remove the path"
        )
    return text


def check_request(stage: str, fields: Mapping[str, object], settings: Settings) -> None:
    """Refuse a stage's settings that this deployment does not allow (``ValueError``).

    ``fields`` are the stage's config keys (``dataset``, ``model``, ``steps``, ...; unknown
    keys are ignored). Checked: the dataset spec (:func:`check_spec`; files the app staged in
    ``<workspace>/uploads`` are allowed), the base model and every server path
    (:func:`check_path`; ``pretrained`` too unless it is ``timm``, the built-in ``lite0`` /
    ``scratch`` or a Hub id), a typed prompt (:func:`check_prompt`), and every
    number against :attr:`Settings.limits`. The page, the job launcher and the command line
    all call this, so none of them can skip it.
    """
    # 1. What the stage reads: dataset, model, other files.
    spec = fields.get("dataset")
    if spec is not None and not is_upload(str(spec), settings):
        check_spec(str(spec), settings)
    model = fields.get("model")
    if model is not None:
        check_model(str(model), settings)
    for key in PATH_FIELDS:
        value = fields.get(key)
        if value in (None, "", []):
            continue
        if key == "source" and str(value).strip().lstrip("-").isdigit():
            continue  # a train-split index, not a file
        values = value.split(",") if isinstance(value, str) and key == "synthetic" else value
        for v in values if isinstance(values, (list, tuple)) else [values]:
            if str(v).strip():
                check_path(str(v).strip(), key, settings)
    for key in PROMPT_FIELDS:
        value = fields.get(key)
        if value not in (None, ""):
            check_prompt(value, settings, what=key)
    pretrained = fields.get("pretrained")
    if pretrained not in (None, "", "timm", "lite0", "scratch"):  # built-in names: no file
        check_model(str(pretrained), settings, what="pretrained weights")
    # 2. How much work it asks for.
    for key, limit_name in FIELD_LIMITS.items():
        value = fields.get(key)
        if value is None or isinstance(value, bool):
            continue
        check_limit(key, value, limit_name, settings, stage=stage)


def check_limit(key: str, value: object, limit_name: str, settings: Settings, *,
                stage: str = "") -> None:  # fmt: skip
    """``ValueError`` when ``value`` of field ``key`` exceeds ``settings.limits.<limit_name>``."""
    cap = getattr(settings.limits, limit_name)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return  # not a number: the stage's config reports it
    if cap and number > cap:
        where = f"{stage} " if stage else ""
        lim = LIMITS[limit_name]
        raise ValueError(
            f"{where}{key} = {value} is over this deployment's limit of {cap} ({lim.what}; "
            f"the operator can raise {lim.env})"
        )


def check_path(path: str, what: str, settings: Settings) -> str:
    """A file or folder named in a request: inside the workspace, or allowed by the operator.

    Public deployments (``allow_local_paths`` off) accept only paths inside the workspace
    (runs, adapters, uploads the app made); private ones accept any path, inside
    :attr:`Settings.allowed_roots` when that is set. Raises ``ValueError`` naming ``what``.
    """
    if path.startswith("-"):
        raise ValueError(f"{what} {path!r} refused: a path cannot start with '-'")
    p = Path(path).expanduser()
    if workspace.is_inside(p, settings.home):
        return path
    if not settings.allow_local_paths:
        raise ValueError(
            f"{what} {path!r} refused: this deployment reads files from its workspace only "
            f"(the operator can set {ENV_ALLOW_LOCAL}=1)"
        )
    if settings.allowed_roots and not any(
        workspace.is_inside(p, root) for root in settings.allowed_roots
    ):
        listed = os.pathsep.join(str(r) for r in settings.allowed_roots)
        raise ValueError(
            f"{what} {path!r} refused: it is outside the allowed folders ({listed}) and the "
            f"workspace; the operator can add its folder to {ENV_ALLOWED_ROOTS}"
        )
    return path


def check_model(model: str, settings: Settings, *, what: str = "model") -> str:
    """A base model (or weights) name: the operator's model, ``nano``, a Hub id or a folder.

    The operator's :attr:`Settings.model` and ``nano`` are always allowed; a Hub id needs
    :attr:`Settings.allow_hub`; anything else is a server path (:func:`check_path`).
    """
    model = model.strip()
    if model in (settings.model, "nano"):
        return model
    if model.startswith("-"):
        raise ValueError(f"{what} {model!r} refused: a name cannot start with '-'")
    path = Path(model).expanduser()
    local = path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1
    if local:
        return check_path(model, what, settings)
    if not settings.allow_hub:
        raise ValueError(
            f"{what} {model!r} refused: Hub downloads are disabled on this deployment "
            f"(the operator can set {ENV_ALLOW_HUB}=1)"
        )
    return model
