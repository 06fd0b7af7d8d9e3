"""UI helpers shared by every page: settings, header, the selection hand-off, launching.

Pages import this module; ``diffmix`` never imports gradio. Everything here is small and
stateless except :func:`get_settings` (read once per process), the small dataset cache
behind :func:`load_cached` (heavy objects live there, never in page state) and the
per-process secret that encrypts the selection kept in the browser.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import re
import secrets
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import gradio as gr

from diffmix import workspace
from diffmix.data import DatasetError, ImageDataset, Subset, load_dataset
from diffmix.pipeline import device_report
from diffmix.settings import Settings, check_spec, is_upload

logger = logging.getLogger(__name__)

APP_TITLE = "Diff-Mix Studio"
APP_TAGLINE = (
    "Enlarge a fine-grained image dataset by inter-class image translation with a "
    "personalized Stable Diffusion (Diff-Mix, Wang et al., CVPR 2024)."
)
REPO_ROOT = Path(__file__).resolve().parents[1]
CSS_PATH = REPO_ROOT / "assets" / "style.css"

#: localStorage key of the loaded dataset selection (shared by all pages of the app).
SELECTION_KEY = "diffmix-selection"
#: Encrypts the selection in the browser; new per server process, so a restart forgets it.
_SELECTION_SECRET = secrets.token_urlsafe(24)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


#: The recipe menu's "no recipe" entry (the page's own defaults).
NO_RECIPE = "(none)"


def recipe_choices() -> list[str]:
    """The recipe menu: no recipe, then the authors' recipes (:mod:`diffmix.recipes`)."""
    from diffmix.recipes import recipe_names

    return [NO_RECIPE, *recipe_names()]


def recipe_values(name: str | None, stage: str) -> tuple[dict[str, Any], str]:
    """``(fields, markdown)`` of recipe ``name`` for ``stage``: the config fields it sets and a
    list of its values with their sources; ``({}, "")`` for no recipe."""
    from diffmix.recipes import describe, recipe_fields

    if not name or name == NO_RECIPE:
        return {}, ""
    return recipe_fields(name, stage), f"**Recipe {name}** (the authors' run.sh):\n{describe(name)}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The operator settings of this process (read from the environment once)."""
    return Settings.from_env()


def page_blocks(title: str) -> gr.Blocks:
    """A page's ``gr.Blocks``: titled, with analytics and Gradio's version check off.

    With analytics on, every ``gr.Blocks()`` starts a thread that asks PyPI for the latest
    Gradio version; the app must not reach out to the network on its own.
    """
    return gr.Blocks(title=f"{title} · {APP_TITLE}", analytics_enabled=False)


def selection_state() -> gr.BrowserState:
    """The dataset selection (a plain dict, or None before a dataset is loaded).

    Every page creates its own component with the same storage key: routes are separate page
    loads (a ``gr.State`` would not survive navigation), while the browser's localStorage
    does. Through the API the selection is a plain JSON parameter / return value.
    """
    return gr.BrowserState(None, storage_key=SELECTION_KEY, secret=_SELECTION_SECRET)


#: localStorage key of the adapter chosen on the Personalize page (later pages reuse it).
ADAPTER_KEY = "diffmix-adapter"
#: localStorage key of this browser's job-owner token (public mode: who may see which jobs).
OWNER_KEY = "diffmix-owner"
_OWNER_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def adapter_state() -> gr.BrowserState:
    """The adapter chosen on the Personalize page (a plain dict with its run ``name``, or None).

    Kept in the browser like :func:`selection_state`; pages resolve the name to a folder under
    ``<workspace>/adapters`` again (with the owner check), never trusting a path from a client.
    """
    return gr.BrowserState(None, storage_key=ADAPTER_KEY, secret=_SELECTION_SECRET)


#: localStorage key of the plan Translate's "Send to Generate" hands to the Generate page.
PLAN_KEY = "diffmix-send-generate"


def plan_state() -> gr.BrowserState:
    """A plan sent from Translate to Generate (strategy, strength, guidance, prompt template,
    source / target), or None. Kept in the browser like :func:`selection_state` (same
    mechanism as the selection and the adapter); Generate fills its fields from it once and
    clears it, so a later visit starts from Generate's own defaults."""
    return gr.BrowserState(None, storage_key=PLAN_KEY, secret=_SELECTION_SECRET)


def empty_figure(message: str = "no data yet", *, height: int = 260) -> Any:
    """A plotly figure with no axes and one short ``message`` (instead of meaningless axes
    before there is anything to plot)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper",
                       showarrow=False, font={"size": 15, "color": "#78909c"})  # fmt: skip
    fig.update_layout(height=height, template="plotly_white",
                      margin={"l": 10, "r": 10, "t": 10, "b": 10},
                      xaxis={"visible": False}, yaxis={"visible": False})  # fmt: skip
    return fig


def owner_state() -> gr.BrowserState:
    """This browser's job-owner token (see :func:`ensure_owner`).

    Gradio's ``session_hash`` changes on every page load (each route is one), so it cannot say
    whose job a run is after a reload; a random token kept in localStorage (encrypted with the
    per-process secret) can, and is shared by the tabs of one browser. A server restart
    changes the secret, so browsers get a new token then.
    """
    return gr.BrowserState(None, storage_key=OWNER_KEY, secret=_SELECTION_SECRET)


def ensure_owner(owner: str | None) -> str:
    """``owner`` when it is a well-formed token, else a fresh unguessable one."""
    if isinstance(owner, str) and _OWNER_RE.match(owner):
        return owner
    return secrets.token_urlsafe(18)


def mode_line(settings: Settings) -> str:
    """One line telling users what this deployment allows."""
    local = "server folders allowed" if settings.allow_local_paths else "no server folders"
    hub = "Hub datasets allowed" if settings.allow_hub else "no Hub datasets"
    return (
        f"**{settings.mode.capitalize()} mode**: {local} · {hub} · uploads up to "
        f"{settings.max_upload_mb} MB · model `{_model_name(settings)}`"
    )


def _model_name(settings: Settings) -> str:
    """The base model as shown: a local folder by its name only on public deployments."""
    model = settings.model
    if settings.public and model.startswith(("/", ".", "~")):
        return Path(model).name
    return model


def header(settings: Settings) -> gr.Markdown:
    """The app header: title, one-line description, operator mode, the compute device."""
    text = f"# {APP_TITLE}\n{APP_TAGLINE}\n\n{mode_line(settings)}"
    on_gpu, device_line = device_report()  # say plainly when everything runs on the CPU
    text += f"\n\n{'' if on_gpu else '⚠️ '}{device_line}"
    return gr.Markdown(text, elem_id="app-header", elem_classes=["dm-header"])


def error_box(message: str, settings: Settings | None = None) -> str:
    """Markdown/HTML for an error shown in the page (escaped, never a traceback).

    On a public deployment server paths in ``message`` are shown as :func:`display_path`
    shows them (``settings`` defaults to this process's settings); log the full message.
    """
    text = workspace.redact_paths(message, settings or get_settings())
    return f'<div class="dm-error">⚠️ {html.escape(text)}</div>'


def info_box(message: str, settings: Settings | None = None) -> str:
    """Markdown/HTML for a success or info line (paths shown as in :func:`error_box`)."""
    text = workspace.redact_paths(message, settings or get_settings())
    return f'<div class="dm-info">{html.escape(text)}</div>'


def redact(message: str, settings: Settings | None = None) -> str:
    """``message`` with server paths shown as :func:`display_path` shows them (public only)."""
    return workspace.redact_paths(message, settings or get_settings())


def display_path(path: str | os.PathLike, settings: Settings | None = None) -> str:
    """A server path as users of this deployment see it (see :func:`diffmix.workspace.display_path`).

    Public: a staged upload as ``upload:<file name>``, workspace paths relative to the
    workspace, other paths by name only. Private: unchanged.
    """
    return workspace.display_path(path, settings or get_settings())


def display_spec(spec: str, settings: Settings | None = None) -> str:
    """How a dataset spec is shown: ``demo`` / ``hub:…`` as is, a staged upload (its path or its
    token) as ``upload:<file name>``, any other path as :func:`display_path` shows it."""
    spec = str(spec or "")
    if spec == "demo" or spec.startswith(("demo:", "hub:")):
        return spec
    if workspace.is_upload_token(spec):
        return workspace.UPLOAD_PREFIX + spec.rsplit("/", 1)[-1]
    settings = settings or get_settings()
    if workspace.upload_token(spec, settings.home) is not None:
        return workspace.UPLOAD_PREFIX + Path(spec).name
    return display_path(spec, settings)


def selection_spec(spec: str, settings: Settings) -> str:
    """The dataset spec a selection's ``spec`` names on this server.

    A staged upload travels to the browser as an opaque ``upload:<digest>/<name>`` token (no
    server path); it is mapped back here. Any other spec is returned as is (the callers check
    it against the settings again).
    """
    spec = (spec or "").strip()
    if spec.startswith(workspace.UPLOAD_PREFIX):  # malformed tokens are refused, never paths
        return str(workspace.resolve_upload_token(spec, settings.home))
    return spec


def client_spec(spec: str, settings: Settings) -> str:
    """What a selection sent to the browser carries for ``spec``: a token for staged uploads."""
    return workspace.upload_token(spec, settings.home) or spec


def uploaded_image(**kwargs: Any) -> gr.Image:
    """An image upload that reaches the listener as its file path, never decoded by Gradio.

    ``gr.Image(type="pil")`` decodes every upload inside Gradio before the listener runs, so a
    small file declaring a huge size (a decompression bomb) costs its full decoded size in
    memory; even ``type="filepath"`` opens it with PIL first (and PIL's own, larger, limit
    answers with a bare error). This ``gr.Image`` hands over the uploaded file's path unread;
    listeners decode it with :func:`diffmix.data.images.open_rgb`, which checks the pixel limit
    from the header. (Its ``preprocess`` is replaced on the instance: a subclass would make
    Gradio write a ``.pyi`` stub next to this module at import time.)
    """
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    image.preprocess = _unread_upload  # type: ignore[method-assign]
    return image


def _unread_upload(payload: Any) -> str | None:
    """``gr.Image.preprocess`` for :func:`uploaded_image`: the upload's path, not opened."""
    if payload is None:
        return None
    path = getattr(payload, "path", None)
    if path is None:  # a data: URL, which Gradio would decode itself: refused
        raise gr.Error("send the image as an uploaded file (a data: URL is not accepted)")
    return str(path)


def session_id(request: gr.Request | None) -> str:
    """A filesystem-safe id of the browser session (``"local"`` outside a request)."""
    raw = getattr(request, "session_hash", None) or "local"
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(raw))[:64] or "local"


# --------------------------------------------------------------------------- datasets


def load_cached(spec: str, split: str) -> ImageDataset:
    """``load_dataset(spec, split=split)``, memoized for the whole process (a few entries).

    A local spec is keyed by its path's modification time too, so a re-extracted zip or a
    folder whose top level changed is read again.
    """
    return _load_cached(spec, split, _mtime(spec))


def clear_dataset_cache() -> None:
    """Forget every cached dataset."""
    _load_cached.cache_clear()


@lru_cache(maxsize=4)
def _load_cached(spec: str, split: str, mtime: float | None) -> ImageDataset:
    del mtime  # part of the cache key only
    return load_dataset(spec, split=split)


def _mtime(spec: str) -> float | None:
    """Modification time of a local spec's path (None for demo / hub / missing paths)."""
    if spec.startswith(("demo", "hub:")) and not Path(spec).exists():
        return None
    try:
        return Path(spec).expanduser().stat().st_mtime
    except OSError:
        return None


def open_selection(
    selection: dict[str, Any] | None, settings: Settings
) -> tuple[ImageDataset, Subset | None]:
    """The dataset and subset a selection (from the Dataset page) names, checked again.

    The spec is re-validated against ``settings`` (a selection may come from an API client),
    the dataset must still have the fingerprint it had when selected, and the subset indices
    are rebuilt as a :class:`~diffmix.data.Subset` and checked against it. Raises
    ``ValueError`` (``DatasetError``) with a message that says to reload on the Dataset page.
    """
    if not selection or not selection.get("spec"):
        raise ValueError("no dataset selected: load one on the Dataset page first")
    split = str(selection.get("split", "train"))
    spec = selection_spec(str(selection["spec"]), settings)
    if not is_upload(spec, settings):
        check_spec(spec, settings)
    ds = load_cached(spec, split)
    if ds.fingerprint != selection.get("fingerprint"):
        raise DatasetError(
            f"dataset {display_spec(spec, settings)!r} ({split}) changed since it was selected "
            "(fingerprint "
            f"{selection.get('fingerprint')} -> {ds.fingerprint}); load it again on the "
            "Dataset page"
        )
    if selection.get("indices") is None:
        return ds, None
    record = {k: selection.get(k) for k in ("spec", "split", "fingerprint", "seed", "shots")}
    record.update(
        imbalance=selection.get("imbalance"),
        indices=selection["indices"],
        counts=selection.get("counts") or {},
    )
    subset = Subset.from_dict(record)
    subset.check(ds)
    return ds, subset


# --------------------------------------------------------------------------- memory

#: glibc's ``mallopt`` parameter for the number of malloc arenas (``M_ARENA_MAX``).
_M_ARENA_MAX = -8
#: Arenas the server allows when the operator did not set ``MALLOC_ARENA_MAX``.
SERVER_MALLOC_ARENAS = 2


@lru_cache(maxsize=1)
def _libc() -> Any:
    """glibc, or None elsewhere (musl, macOS, Windows): the memory calls below are then no-ops."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt") else None


def limit_malloc_arenas(arenas: int = SERVER_MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for the threads the server starts from now on.

    Gradio runs listeners in a pool of worker threads; glibc gives threads their own arenas
    (up to 8 per core), and the large, short-lived buffers of each preview (tensors, images)
    freed in one arena are not reused by the next call landing in another, so the server's
    memory crept up call after call (benchmarks/preview_memory.py). ``MALLOC_ARENA_MAX`` set
    by the operator wins. Returns True when the limit was applied.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or arenas < 1:
        return False
    lib = _libc()
    return bool(lib is not None and lib.mallopt(_M_ARENA_MAX, int(arenas)))


def release_memory() -> bool:
    """Give the pages freed by the last call back to the system (glibc ``malloc_trim``).

    Called after each preview, whose buffers are freed by then: without it the freed pages
    stay counted in the server's resident memory. True when memory was released.
    """
    lib = _libc()
    return bool(lib is not None and lib.malloc_trim(0))


# --------------------------------------------------------------------------- launching


def _env_port() -> int:
    raw = os.environ.get("GRADIO_SERVER_PORT", "").strip()
    if not raw:
        return DEFAULT_PORT
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"GRADIO_SERVER_PORT={raw!r} is not a port number") from None


def parse_launch_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    """``--host``, ``--port``, ``--share`` (defaults from GRADIO_SERVER_NAME / _PORT)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME") or DEFAULT_HOST,
        help="interface to listen on (default 127.0.0.1; $GRADIO_SERVER_NAME)",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="port (default $GRADIO_SERVER_PORT or 7860)"
    )
    parser.add_argument("--share", action="store_true", help="open a public gradio.live link")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args(argv)


def run(
    factory: Callable[[Settings], gr.Blocks],
    argv: Sequence[str] | None = None,
    *,
    description: str = APP_TITLE,
) -> None:
    """Parse launch flags, build the Blocks with ``factory(settings)`` and serve it.

    Gradio's upload/cache folder defaults to ``<workspace>/gradio-cache`` (unless the operator
    set ``GRADIO_TEMP_DIR``) so that the app writes nothing outside the workspace; it must be
    set before any component is created, hence here and not at import time.
    """
    args = parse_launch_args(argv, description)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    try:
        settings = get_settings()
        port = args.port if args.port is not None else _env_port()
    except ValueError as err:
        logger.error("cannot start: %s", err)
        raise SystemExit(2) from None
    os.environ.setdefault("GRADIO_TEMP_DIR", str(workspace.subdir("gradio-cache")))
    on_gpu, device_line = device_report()
    (logger.info if on_gpu else logger.warning)("%s", device_line)
    logger.info(
        "starting %s (%s mode, workspace %s) on %s:%d",
        description,
        settings.mode,
        settings.home,
        args.host,
        port,
    )
    limit_malloc_arenas()  # before the worker threads exist
    demo = factory(settings)
    configure_queue(demo)
    demo.launch(**launch_kwargs(settings, host=args.host, port=port, share=args.share))


#: Events of one listener group run at once unless the listener sets its own limit. Gradio
#: (6.x) gives every listener function its own group (``concurrency_id`` defaults to the
#: function's id), so a slow event holds slots of its own group only; a page whose listeners
#: share heavy work names one group for them (Inspect: ``inspect-rows``).
DEFAULT_CONCURRENCY = 2


def configure_queue(demo: gr.Blocks) -> gr.Blocks:
    """The app's queue settings (the app and every page run alone, and the tests)."""
    return demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY)


def launch_kwargs(settings: Settings, *, host: str, port: int, share: bool) -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch`` under these settings."""
    kwargs: dict[str, Any] = {
        "server_name": host,
        "server_port": port,
        "share": share,
        "max_file_size": f"{settings.max_upload_mb}mb",
        "show_error": False,
    }
    if CSS_PATH.is_file():
        kwargs["css_paths"] = [CSS_PATH]
    return kwargs


__all__ = [
    "APP_TITLE",
    "uploaded_image",
    "adapter_state",
    "ensure_owner",
    "owner_state",
    "clear_dataset_cache",
    "empty_figure",
    "plan_state",
    "client_spec",
    "display_path",
    "display_spec",
    "redact",
    "selection_spec",
    "load_cached",
    "open_selection",
    "page_blocks",
    "error_box",
    "get_settings",
    "header",
    "info_box",
    "configure_queue",
    "launch_kwargs",
    "limit_malloc_arenas",
    "release_memory",
    "mode_line",
    "parse_launch_args",
    "run",
    "selection_state",
    "session_id",
]


def next_step(path: str, label: str, why: str) -> gr.Button:
    """The page's "next step": a line saying what to do next and a link button to that page.

    ``path`` is the next page's route (relative, so the app also works under a root path);
    the dataset selection, the adapter and the runs travel in the browser's storage.
    """
    with gr.Row(equal_height=True, elem_classes="dm-next"):
        gr.Markdown(f"**Next step:** {why}", elem_id="next-step-why")
        return gr.Button(f"Next: {label} →", link=path, variant="primary", scale=0,
                         min_width=220, elem_id="next-step")  # fmt: skip
