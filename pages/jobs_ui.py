"""Shared job widgets for the pages that start background jobs (personalize, generate, train).

A long stage runs as ``python -m diffmix <stage> ...`` (:mod:`diffmix.jobs`) writing a run
directory under the workspace -- ``adapters/<name>``, ``synthetic/<name>``, ``runs/<name>`` --
and the page only ever reads that directory, so a reload, a second tab or a crashed job all
show the same state. The run a page watches is remembered in the browser (a
``gr.BrowserState`` holding its *name*; a name from a client is checked again, never a path).

The run registry -- the stage folders, run names, who may see a run (the owner rule), start /
cancel / resume -- lives in the core, :mod:`diffmix.registry`; its names are re-exported here
for the pages. This module holds the widgets and the listeners.

:class:`JobPanel` holds the widgets (name box, Start / Cancel / Resume / Refresh, progress
bar, status line, run picker, ``gr.Timer``) and :func:`wire` connects them with ``api_name`` s
``<stage>_start``, ``<stage>_cancel``, ``<stage>_resume``, ``<stage>_status`` and
``<stage>_runs``.

Dropdowns whose choices are filled when a page opens (classes, runs, adapters) are made with
``allow_custom_value=True``: Gradio checks API values against a dropdown's *initial* choices,
which are empty, and every value is checked again by the page functions anyway.
"""

from __future__ import annotations

import html
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from diffmix import jobs, registry  # noqa: F401 -- jobs: the launcher, as pages.jobs_ui.jobs
from diffmix.registry import (  # noqa: F401 -- re-exported: the pages' names for the registry
    ACTIVE_STATES,
    OWNER_FILE,
    RESUMABLE_STATES,
    RESUME_WAIT_S,
    STAGE_DIRS,
    cancel_run,
    check_name,
    list_runs,
    may_see,
    open_run,
    owner_filter,
    resume_args,
    resume_run,
    run_name,
    run_owner,
    run_state,
    stage_root,
    write_owner,
)
from diffmix.runs import RunDir
from diffmix.settings import Settings
from pages import common, zerogpu

logger = logging.getLogger(__name__)

#: Seconds between two polls of a running job.
POLL_SECONDS = 1.5
_STATE_COLORS = {
    "queued": "#90a4ae",
    "running": "#1e88e5",
    "done": "#43a047",
    "failed": "#e53935",
    "crashed": "#e53935",
    "cancelled": "#fb8c00",
}
#: Errors shown as a message in the page (anything else is a bug and is logged).
USER_ERRORS = (ValueError, PermissionError, OSError, KeyError)


# --------------------------------------------------------------------------- plain functions


def readable_error(err: BaseException) -> str:
    """One readable line for a user error (pydantic's multi-line reports flattened)."""
    errors = getattr(err, "errors", None)
    if callable(errors) and type(err).__name__ == "ValidationError":
        parts = []
        for e in errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "__root__")
            msg = str(e.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
        return "; ".join(parts) or str(err)
    text = " ".join(str(err).split())
    return text or type(err).__name__


def start_run(
    stage: str,
    args: Sequence[str],
    name: str,
    *,
    owner: str | None,
    settings: Settings | None = None,
) -> Path:
    """:func:`diffmix.registry.start_run`, refused first on ZeroGPU hardware for a diffusion
    job with a non-nano model (:func:`pages.zerogpu.check_job_hardware`)."""
    zerogpu.check_job_hardware(stage, args)
    return registry.start_run(stage, args, name, owner=owner,
                              settings=settings or common.get_settings())  # fmt: skip


# --------------------------------------------------------------------------- views


def format_eta(seconds: float | None) -> str:
    """``42 s``, ``3 min``, ``1 h 05 min`` (empty for None / negative)."""
    if seconds is None or seconds < 0:
        return ""
    s = int(round(seconds))
    if s < 90:
        return f"{s} s"
    if s < 3600:
        return f"{round(s / 60)} min"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def status_text(st: dict[str, Any], name: str | None = None) -> str:
    """One Markdown line: state, step/total, loss or accuracy, speed, ETA, message."""
    state = st.get("state", "unknown")
    parts = [f"**{state}**"]
    if name:
        parts.insert(0, f"`{name}`")
    if st.get("epoch") is not None and st.get("epochs"):
        parts.append(f"epoch {st['epoch']}/{st['epochs']}")
    elif st.get("total"):
        parts.append(f"step {st.get('step') or 0}/{st['total']}")
    # One loss figure: the running EMA (diffmix.progress.LOSS_NAME) of personalization and
    # training; a finished epoch's mean only when no running figure exists.
    for key, label in (("loss", "loss (EMA)"), ("train_loss", "epoch loss (mean)")):
        if isinstance(st.get(key), (int, float)):
            parts.append(f"{label} {st[key]:.4f}")
            break
    if isinstance(st.get("test_accuracy"), (int, float)):
        parts.append(f"test accuracy {100 * st['test_accuracy']:.1f}%")
    if isinstance(st.get("images_per_s"), (int, float)) and st.get("images_per_s"):
        parts.append(f"{st['images_per_s']:.2f} img/s")
    if isinstance(st.get("steps_per_s"), (int, float)) and st.get("steps_per_s"):
        parts.append(f"{st['steps_per_s']:.2f} steps/s")
    eta = format_eta(st.get("eta_s")) if state in ACTIVE_STATES else ""
    if eta:
        parts.append(f"ETA {eta}")
    msg = str(st.get("message") or "").strip()
    if msg and state != "done":
        msg = msg.splitlines()[-1][:240]
        # a job's message may name server paths: public deployments show them relative
        parts.append(html.escape(common.redact(msg)))
    return " · ".join(parts)


def progress_html(fraction: float, state: str, label: str = "") -> str:
    """A small progress bar (inline styles; ``data-state`` / ``data-progress`` for tests)."""
    f = min(1.0, max(0.0, float(fraction or 0.0)))
    color = _STATE_COLORS.get(state, "#90a4ae")
    text = html.escape(label or f"{state} · {100 * f:.0f}%")
    return (
        f'<div class="dm-progress" data-state="{html.escape(state)}" data-progress="{f:.4f}">'
        '<div style="background:#e3e8ec;border-radius:6px;height:14px;overflow:hidden">'
        f'<div style="width:{100 * f:.1f}%;background:{color};height:100%;'
        'transition:width .4s"></div></div>'
        f'<div style="font-size:.85em;margin-top:2px">{text}</div></div>'
    )


@dataclass
class JobView:
    """What the shared widgets show for one run (or for none)."""

    name: str | None
    state: str
    progress: float
    status: dict[str, Any]
    bar: str
    text: str

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def can_cancel(self) -> bool:
        return self.active

    @property
    def can_resume(self) -> bool:
        return self.state in RESUMABLE_STATES


def job_view(run_dir: Path | None) -> JobView:
    """The view of ``run_dir`` (None: nothing selected yet)."""
    if run_dir is None:
        return JobView(None, "idle", 0.0, {}, progress_html(0, "idle", "no run yet"), "No run yet.")
    st = run_state(run_dir)
    state = str(st.get("state", "unknown"))
    frac = 1.0 if state == "done" else float(st.get("progress") or 0.0)
    phase = str(st.get("phase") or "")
    label = f"{phase} · {100 * frac:.0f}%" if state == "running" and phase else ""
    return JobView(
        run_dir.name, state, frac, st, progress_html(frac, state, label),
        status_text(st, run_dir.name),
    )  # fmt: skip


def runs_choices(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Dropdown choices for runs: their names, newest first (states change; the status line
    below the picker shows the watched run's)."""
    return [r["name"] for r in runs]


# --------------------------------------------------------------------------- widgets


@dataclass
class JobPanel:
    """The shared widgets of one stage's job panel (create with :func:`job_panel`)."""

    stage: str
    prefix: str
    name: gr.Textbox
    start: gr.Button
    cancel: gr.Button
    resume: gr.Button
    refresh: gr.Button
    runs: gr.Dropdown
    bar: gr.HTML
    status: gr.Markdown
    message: gr.Markdown
    timer: gr.Timer
    run: gr.BrowserState


def run_browser_state(stage: str) -> gr.BrowserState:
    """The name of the run a page watches, kept in the browser (per stage)."""
    return gr.BrowserState(
        None, storage_key=f"diffmix-run-{stage}", secret=common._SELECTION_SECRET
    )


def job_panel(stage: str, prefix: str, *, start_label: str, name_placeholder: str) -> JobPanel:
    """Name box, buttons, run picker, progress bar and status line; call inside a layout."""
    name = gr.Textbox(
        label="Run name (optional)",
        placeholder=name_placeholder,
        max_lines=1,
        elem_id=f"{prefix}-name",
    )
    with gr.Row():
        start = gr.Button(start_label, variant="primary", elem_id=f"{prefix}-start")
        cancel = gr.Button("Cancel", variant="stop", interactive=False, elem_id=f"{prefix}-cancel")
        resume = gr.Button("Resume", interactive=False, elem_id=f"{prefix}-resume")
    message = gr.Markdown(elem_id=f"{prefix}-message")
    with gr.Row(equal_height=True):
        runs = gr.Dropdown(
            [], label="Watch run", interactive=True, scale=4, elem_id=f"{prefix}-runs"
        )
        refresh = gr.Button("↻ Refresh", scale=1, elem_id=f"{prefix}-refresh")
    bar = gr.HTML(progress_html(0, "idle", "no run yet"), elem_id=f"{prefix}-progress")
    status = gr.Markdown("No run yet.", elem_id=f"{prefix}-status")
    timer = gr.Timer(POLL_SECONDS, active=False)
    return JobPanel(
        stage, prefix, name, start, cancel, resume, refresh, runs, bar, status, message, timer,
        run_browser_state(stage),
    )  # fmt: skip


def _base_outputs(panel: JobPanel) -> list[Any]:
    return [panel.bar, panel.status, panel.cancel, panel.resume, panel.timer]


def with_params(fn: Callable[..., Any], names: Sequence[str]) -> Callable[..., Any]:
    """Give a ``*values`` listener named parameters (Gradio names API parameters after them)."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    fn.__signature__ = inspect.Signature([inspect.Parameter(n, kind) for n in names])  # type: ignore[attr-defined]
    return fn


def param_names(fn: Callable[..., Any], skip: int = 0) -> list[str]:
    """Names of ``fn``'s positional parameters after the first ``skip``."""
    params = list(inspect.signature(fn).parameters.values())
    return [p.name for p in params[skip:] if p.kind is p.POSITIONAL_OR_KEYWORD]


def wire(
    panel: JobPanel,
    *,
    page: gr.Blocks,
    settings: Settings,
    owner: gr.BrowserState,
    build_args: Callable[..., tuple[list[str], str]],
    start_inputs: Sequence[Any],
    view: Callable[[Path | None, str | None], Sequence[Any]],
    view_outputs: Sequence[Any],
    on_open: Callable[..., Sequence[Any]] | None = None,
    open_inputs: Sequence[Any] = (),
    open_outputs: Sequence[Any] = (),
    restore: Callable[[dict[str, Any]], Sequence[Any]] | None = None,
    restore_outputs: Sequence[Any] = (),
) -> None:
    """Connect a :class:`JobPanel` to its page.

    ``build_args(owner, *start_values) -> (cli_args, name_prefix)`` turns the page's widget
    values into the stage's CLI arguments (raising ``ValueError`` with a readable message); its
    parameter names become the ``/<stage>_start`` API parameters (after ``owner`` and ``name``).
    ``view(run_dir, owner) -> values`` fills ``view_outputs`` (curves, images) for the watched
    run (``run_dir`` None when there is none). ``on_open(owner, *open_values)`` fills
    ``open_outputs`` when the page loads (after the owner token exists). Listeners: Start /
    Cancel / Resume / Refresh, the run picker, the poll timer. ``restore(config) -> values``
    fills ``restore_outputs`` (the page's settings widgets) from the watched run's
    ``config.json`` when the page (re)loads and when another run is picked, so a reload shows
    the settings of the run it watches, not the defaults.
    """
    stage = panel.stage
    owner_state = owner
    outs = [*_base_outputs(panel), *view_outputs]

    def _view_values(path: Path | None, owner: str | None) -> list[Any]:
        v = job_view(path)
        return [
            v.bar,
            v.text,
            gr.update(interactive=v.can_cancel),
            gr.update(interactive=v.can_resume),
            gr.Timer(active=v.active),
            *view(path, owner),
        ]

    def _watched(name: str | None, owner: str | None) -> Path | None:
        if not name:
            return None
        try:
            return open_run(stage, name, owner=owner, settings=settings)
        except USER_ERRORS:
            return None

    def _choices(owner: str | None, value: str | None) -> Any:
        runs = list_runs(stage, owner=owner, settings=settings)
        names = [r["name"] for r in runs]
        return gr.update(choices=runs_choices(runs), value=value if value in names else None)

    def status(name: str | None, owner: str | None) -> list[Any]:
        """The watched run's progress, status line and views (never an error: a poll tick)."""
        path = _watched(name, owner)
        try:
            return _view_values(path, owner)
        except Exception:  # a bug in a view must not fail every tick of the poll timer
            logger.exception("%s status of %s failed", stage, name)
            v = job_view(path)
            return [v.bar, v.text, gr.skip(), gr.skip(), gr.Timer(active=False),
                    *[gr.skip()] * len(view_outputs)]  # fmt: skip

    def start(owner: str | None, name: str | None, *values: Any) -> list[Any]:
        """Start a job from the page's settings; returns the owner token and the run name."""
        owner = common.ensure_owner(owner)
        try:
            args, prefix = build_args(owner, *values)
            rname = run_name(name, prefix)
            path = start_run(stage, args, rname, owner=owner, settings=settings)
        except USER_ERRORS as err:
            logger.info("%s start refused: %s", stage, err)
            skip = gr.skip()
            return [
                owner,
                skip,
                skip,
                common.error_box(readable_error(err), settings),
                *[skip] * len(outs),
            ]
        msg = common.info_box(f"Started {stage} run {rname}.", settings)
        return [owner, rname, _choices(owner, rname), msg, *_view_values(path, owner)]

    def cancel(name: str | None, owner: str | None) -> list[Any]:
        """Ask the watched run to stop at its next step."""
        try:
            msg = common.info_box(cancel_run(stage, name, owner=owner, settings=settings), settings)
        except USER_ERRORS as err:
            msg = common.error_box(readable_error(err), settings)
        return [msg, *_view_values(_watched(name, owner), owner)]

    def resume(name: str | None, owner: str | None) -> list[Any]:
        """Continue the watched run from its last checkpoint."""
        try:
            path = resume_run(stage, name, owner=owner, settings=settings)
            msg = common.info_box(f"Resumed {path.name}.", settings)
        except USER_ERRORS as err:
            msg = common.error_box(readable_error(err), settings)
        return [msg, *_view_values(_watched(name, owner), owner)]

    def runs(owner: str | None, name: str | None) -> Any:
        """The runs this session may see (choices of the run picker)."""
        return _choices(owner, name)

    def pick(name: str | None, owner: str | None) -> list[Any]:
        """Watch another run."""
        return [name, *_view_values(_watched(name, owner), owner)]

    def restore_settings(name: str | None, owner: str | None) -> list[Any]:
        """The watched run's settings in the page's widgets (unchanged when none is watched)."""
        skip = [gr.skip()] * len(restore_outputs)
        path = _watched(name, owner)
        try:
            config = RunDir(path).read_config() if path is not None else None
            return list(restore(config)) if config and restore is not None else skip
        except Exception:  # an old or foreign config must not break the page
            logger.exception("%s: cannot show the settings of %s", stage, name)
            return skip

    def open_page(owner: str | None, name: str | None, *values: Any) -> list[Any]:
        """The page's state when it opens: the runs, the watched run, the page's own values."""
        extra = list(on_open(owner, *values)) if on_open is not None else []
        return [_choices(owner, name), *_view_values(_watched(name, owner), owner), *extra]

    with_params(start, ["owner", "name", *param_names(build_args, skip=1)])
    if on_open is not None:
        with_params(open_page, ["owner", "name", *param_names(on_open, skip=1)])
    private = {"api_visibility": "private"}
    opened = page.load(common.ensure_owner, owner_state, owner_state, queue=False, **private).then(
        open_page,
        [owner_state, panel.run, *open_inputs],
        [panel.runs, *outs, *open_outputs],
        api_name=f"{stage}_open",
    )
    panel.start.click(
        start,
        [owner_state, panel.name, *start_inputs],
        [owner_state, panel.run, panel.runs, panel.message, *outs],
        api_name=f"{stage}_start",
        concurrency_limit=1,
        concurrency_id=f"{stage}-start",
    )
    panel.cancel.click(
        cancel, [panel.run, owner_state], [panel.message, *outs], api_name=f"{stage}_cancel"
    )
    panel.resume.click(
        resume, [panel.run, owner_state], [panel.message, *outs], api_name=f"{stage}_resume"
    )
    panel.refresh.click(status, [panel.run, owner_state], outs, api_name=f"{stage}_status").then(
        runs, [owner_state, panel.run], panel.runs, api_name=f"{stage}_runs"
    )
    picked = panel.runs.input(pick, [panel.runs, owner_state], [panel.run, *outs], **private)
    if restore is not None:
        for event in (opened, picked):
            event.then(restore_settings, [panel.run, owner_state], list(restore_outputs),
                       **private)  # fmt: skip
    panel.timer.tick(
        status, [panel.run, owner_state], outs, show_progress="hidden", queue=False, **private
    )


# --------------------------------------------------------------------------- command line


def command_box(prefix: str) -> gr.Code:
    """The stage's equivalent ``diffmix`` command (kohya_ss-style), read-only with a copy button."""
    return gr.Code(
        label="Same run from the command line (OUT_DIR: a new folder)",
        language="shell",
        interactive=False,
        lines=2,
        wrap_lines=True,
        show_line_numbers=False,
        buttons=["copy"],
        elem_id=f"{prefix}-command",
    )


def command_text(make: Callable[[], str], settings: Settings) -> str:
    """``make()``'s command with server paths shown as this deployment shows them; a user error
    becomes a shell comment saying what is missing (never a traceback)."""
    try:
        return common.redact(make(), settings)
    except USER_ERRORS as err:
        return "# " + common.redact(readable_error(err), settings)
