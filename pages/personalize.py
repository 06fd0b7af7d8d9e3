"""Personalize page: learn one token per class + a UNet LoRA on the selected dataset.

Widget values become ``diffmix personalize`` arguments (:func:`personalize_args`, checked
with :class:`~diffmix.personalize.PersonalizeConfig` before anything starts) and the job runs
in the background (:mod:`pages.jobs_ui`), writing ``<workspace>/adapters/<name>``. The page
draws the loss curve from the run's ``events.jsonl`` and shows its newest per-class sample grid
(``samples/step-XXXXXX.png``). Finished adapters are listed and one can be chosen for the later
pages (kept in the browser, :func:`pages.common.adapter_state`, as its run *name*; pages turn it
back into a folder with :func:`resolve_adapter`).

Run alone with ``python pages/personalize.py``.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from PIL import Image  # noqa: E402

from diffmix.config import field_default  # noqa: E402
from diffmix.data import open_rgb  # noqa: E402
from diffmix.personalize import PersonalizeConfig  # noqa: E402
from diffmix.runs import RunDir  # noqa: E402
from diffmix.settings import Settings  # noqa: E402
from pages import common, estimates, jobs_ui, presets_ui  # noqa: E402
from pages.selection import (  # noqa: E402, F401 -- the hand-off, also named here
    _short_model,
    adapter_line,
    adapter_meta,
    carry_adapter,
    choose_adapter,
    resolve_adapter,
    selection_line,
    selection_subset,
    whole_number,
)

logger = logging.getLogger(__name__)

TITLE = "Personalize"
PATH = "personalize"
STAGE = "personalize"
ADAPTER_COLUMNS = ["name", "state", "steps", "final loss (EMA)", "base model", "dataset", "created"]
_SAMPLE_RE = re.compile(r"^step-(\d+)\.png$")


# --------------------------------------------------------------------------- plain functions


def check_model(model: str | None, settings: Settings) -> str:
    """The base model typed in the page, checked against the deployment's settings.

    The operator's model (``DIFFMIX_MODEL``) and ``nano`` are always allowed; a local diffusers
    folder needs ``DIFFMIX_ALLOW_LOCAL_PATHS``, a Hub id ``DIFFMIX_ALLOW_HUB``. Folders must hold
    an SD 1.x/2.x pipeline (:func:`diffmix.pipeline.resolve_model`; nothing is loaded here).
    """
    from diffmix.pipeline import resolve_model
    from diffmix.settings import check_model as check_allowed

    model = check_allowed((model or "").strip() or settings.model, settings)
    return resolve_model(model).name


def model_defaults(model: str, batch: int = 8) -> dict[str, Any]:
    """Steps, sample-grid spacing and LoRA learning rate for ``model`` on this machine.

    Steps and grids are sized to the hardware (:func:`diffmix.costs.personalize_defaults`: the
    full default on a GPU, what fits ~15 min on a CPU at its speed -- the speed measured on this
    machine when a measurement is stored, the rough one until then); ``source`` says which, and
    ``measured`` whether it was measured. Nothing is measured here: building the page or a
    listener never waits for a measurement (:func:`measure_in_background` takes it). The
    learning rate is the core's (nano vs Stable Diffusion).
    """
    from diffmix import costs
    from diffmix.personalize import PersonalizeConfig

    cfg = PersonalizeConfig(model=model).resolved()
    try:
        sized = costs.personalize_defaults(model, batch=batch, calibrate=False)
    except (ValueError, OSError, RuntimeError) as err:  # an unloadable model: the core's numbers
        logger.info("no hardware-sized defaults for %s: %s", model, err)
        sized = {"steps": cfg.steps, "sample_every": 0, "source": f"{cfg.steps}: the core default"}
        sized["measured"] = True  # nothing a measurement could change
    return {"steps": sized["steps"], "sample_every": sized["sample_every"],
            "source": sized["source"], "lr": cfg.lr, "measured": sized["measured"]}  # fmt: skip


_MEASURING: dict[str, threading.Thread] = {}
_MEASURING_LOCK = threading.Lock()
#: The measurement, run in a child process: loading a diffusers model patches
#: ``torch.nn.Module`` process-wide for its duration (accelerate's empty-weights loading), so a
#: load in a background thread would corrupt models other threads build at the same moment.
_MEASURE_CODE = (
    "import sys, torch; torch.set_num_threads(int(sys.argv[3])); from diffmix import costs; "
    "costs.calibrate_personalize(sys.argv[1], batch=int(sys.argv[2]))"
)


def _measure(model: str, batch: int) -> None:
    """Run :func:`diffmix.costs.calibrate_personalize` in a child process with this process's
    torch thread count (the calibration key names it) and wait for it; it stores the rates."""
    import subprocess

    import torch

    argv = [sys.executable, "-c", _MEASURE_CODE, model, str(batch), str(torch.get_num_threads())]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"exit code {done.returncode}: {tail[0]}")


def measure_in_background(model: str, batch: int = 8) -> threading.Thread | None:
    """Measure personalization speed for ``model`` on this machine in the background, once per
    process (nano only: a few seconds idle, about a minute on a loaded 2-core machine), so the
    app starts at once and the page sizes its steps with the measurement when it is opened
    after it lands (:func:`_on_open`). A daemon thread waits for the child process that
    measures (:func:`_measure`). Returns the thread, or None when nothing is to measure."""
    if model != "nano" or model_defaults(model, batch)["measured"]:
        return None

    def run() -> None:
        try:
            _measure(model, batch)
        except Exception:  # a failed measurement leaves the rough sizing; never breaks the app
            logger.exception("measuring personalization speed for %s failed", model)

    with _MEASURING_LOCK:
        thread = _MEASURING.get(model)
        if thread is None:
            thread = threading.Thread(target=run, name=f"measure-{model}", daemon=True)
            _MEASURING[model] = thread
            thread.start()
    return thread


def personalize_config(
    selection: dict[str, Any] | None,
    *,
    model: str | None,
    steps: float | None,
    rank: float | None,
    lr: float | None,
    seed: float | None,
    sample_every: float | None,
    batch_size: float | None = None,
    ti_only: bool = False,
    class_balanced: str | bool | None = None,
    settings: Settings,
) -> Any:
    """The :class:`~diffmix.personalize.PersonalizeConfig` of the page's values (checked).

    The seed also draws the subset, so with a few-shot / long-tail selection it must be the
    Dataset page's seed (otherwise the adapter would learn from other images).
    """
    # 1. Check inputs.
    sub = selection_subset(selection, settings)
    model = check_model(model, settings)
    seed_i = whole_number(seed, "seed", default=sub["seed"])
    if sub["subset"] != "full" and seed_i != sub["seed"]:
        raise ValueError(
            f"seed {seed_i} would draw another {sub['subset']} subset than the selected one "
            f"(seed {sub['seed']}); use seed {sub['seed']} or reload the dataset with seed {seed_i}"
        )
    fields: dict[str, Any] = {
        "dataset": sub["spec"],
        "shots": sub["shots"],
        "imbalance": sub["imbalance"],
        "seed": seed_i,
        "model": model,
        "steps": whole_number(steps, "steps", default=None, minimum=1),
        "rank": whole_number(
            rank, "rank", default=field_default(PersonalizeConfig, "rank"), minimum=1
        ),
        "lr": None if lr in (None, "", 0) else float(lr),
        "sample_every": whole_number(sample_every, "sample every", default=0, minimum=0),
        "ti_only": bool(ti_only),
        "class_balanced": _balanced(class_balanced),
    }
    if batch_size not in (None, ""):
        fields["batch_size"] = whole_number(
            batch_size,
            "batch size",
            default=field_default(PersonalizeConfig, "batch_size"),
            minimum=1,
        )
    return PersonalizeConfig(**{k: v for k, v in fields.items() if v is not None})


def personalize_args(selection: dict[str, Any] | None, **values: Any) -> list[str]:
    """``diffmix personalize`` arguments for the page's values (:func:`personalize_config`):
    the core's command line (:func:`diffmix.command.command_args`), so the command the page
    shows and the job it starts cannot drift. The dataset spec goes last, after ``--``, so that
    it can never be read as an option."""
    from diffmix.command import command_args

    cfg = personalize_config(selection, **values)
    return [*command_args("personalize", cfg), "--", cfg.dataset]


#: Choices of the class-balanced sampling menu -> PersonalizeConfig.class_balanced.
BALANCED_CHOICES = {"auto (on for long-tail)": None, "on": True, "off": False}


def _balanced(value: str | bool | None) -> bool | None:
    """The menu's choice (or a bool) as ``class_balanced``; ``ValueError`` for another value."""
    if value is None or isinstance(value, bool):
        return value
    if value not in BALANCED_CHOICES:
        raise ValueError(
            f"class-balanced sampling {value!r}: choose one of {', '.join(BALANCED_CHOICES)}"
        )
    return BALANCED_CHOICES[value]


def loss_figure(events: list[dict[str, Any]], *, title: str = "Training loss") -> go.Figure:
    """The loss curve from ``progress`` events (step, loss: the run's EMA, the figure the status
    line, the adapter table and the CLI show)."""
    pts = [(e["step"], e["loss"]) for e in events if e.get("loss") is not None and "step" in e]
    fig = go.Figure()
    fig.add_scatter(
        x=[p[0] for p in pts],
        y=[p[1] for p in pts],
        mode="lines+markers",
        name="loss",
        line={"color": "#1e88e5"},
    )
    fig.update_layout(
        title=title,
        height=320,
        margin={"l": 50, "r": 20, "t": 50, "b": 45},
        xaxis_title="step",
        yaxis_title="loss (EMA)",
        template="plotly_white",
        showlegend=False,
    )
    if not pts:
        fig.add_annotation(text="no progress yet", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")  # fmt: skip
    return fig


def latest_sample(run_dir: Path | None) -> tuple[Path | None, int | None]:
    """The newest ``samples/step-XXXXXX.png`` of a run and its step (None, None if none)."""
    if run_dir is None or not (run_dir / "samples").is_dir():
        return None, None
    found = [
        (int(m.group(1)), p)
        for p in (run_dir / "samples").iterdir()
        if (m := _SAMPLE_RE.match(p.name))
    ]
    if not found:
        return None, None
    step, path = max(found)
    return path, step


def adapter_rows(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per personalization run (finished or not) for the adapters table."""
    rows = []
    for r in runs:
        path = Path(r["path"])
        meta = adapter_meta(path) or {}
        cfg = meta.get("config") or RunDir(path).read_config() or {}
        st = r.get("status") or {}
        loss = meta.get("final_loss", st.get("loss"))
        sub = cfg.get("shots") and f"{cfg['shots']}-shot" or (
            cfg.get("imbalance") and f"long-tail {cfg['imbalance']:g}"
        ) or "full"  # fmt: skip
        steps = st.get("step")
        total = st.get("total") or cfg.get("steps")
        rows.append(
            [
                r["name"],
                r["state"],
                f"{steps or 0}/{total}" if total else "",
                "" if loss is None else f"{loss:.4f}",
                _short_model(meta.get("base_model") or cfg.get("model") or ""),
                f"{_short_spec(cfg.get('dataset', ''))} ({sub})" if cfg else "",
                time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"])),
            ]
        )
    return pd.DataFrame(rows, columns=ADAPTER_COLUMNS)


def adapter_choices(runs: list[dict[str, Any]]) -> list[str]:
    """Names of the finished adapters (those with an adapter.json)."""
    return [r["name"] for r in runs if adapter_meta(Path(r["path"])) is not None]


def _short_spec(spec: str) -> str:
    return spec if spec.startswith(("demo", "hub:")) else Path(spec).name


def regrid(image: Image.Image, columns: int = 6) -> Image.Image:
    """A one-row grid of square cells (the core's sample strip) re-tiled ``columns`` wide."""
    side = image.height
    n = image.width // side if side else 0
    if n <= columns or image.width != n * side:
        return image
    rows = -(-n // columns)
    out = Image.new("RGB", (columns * side, rows * side), (255, 255, 255))
    for k in range(n):
        cell = image.crop((k * side, 0, (k + 1) * side, side))
        out.paste(cell, ((k % columns) * side, (k // columns) * side))
    return out


def _enlarge(image: Image.Image, side: int) -> Image.Image:
    """Small sample grids enlarged (nearest neighbour) so their cells are visible."""
    scale = max(1, side // max(1, min(image.size)))
    return (
        image
        if scale == 1
        else image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    )


def _load_image(path: Path | None) -> Image.Image | None:
    if path is None:
        return None
    try:
        return open_rgb(path)
    except (OSError, ValueError):  # ValueError: ImageDecodeError
        return None


# --------------------------------------------------------------------------- callbacks


def _view(settings: Settings):
    def view(path: Path | None, owner: str | None) -> list[Any]:
        """Loss curve, newest sample grid, and (when the run is over) the adapter list."""
        events = RunDir(path).events("progress") if path is not None else []
        sample, step = latest_sample(path)
        caption = f"Samples at step {step} (one per class)" if step else "No samples yet"
        st = jobs_ui.run_state(path) if path is not None else {}
        over = st.get("state") not in jobs_ui.ACTIVE_STATES
        lists = _adapter_lists(owner, settings) if over else (gr.skip(), gr.skip())
        note = gr.skip()
        if over and path is not None and adapter_meta(path) is not None:
            # the watched run just finished (or was opened finished): offer it to "Use"
            lists = (lists[0], gr.update(choices=lists[1]["choices"], value=path.name))
            note = common.info_box(
                f"{path.name} is finished. The next pages use the newest adapter trained on "
                "this dataset, unless you chose one with “Use for later pages” or “Use none”.",
                settings,
            )
        image = _load_image(sample)
        if image is not None:
            image = _enlarge(regrid(image), 96)
        return [loss_figure(events), gr.update(value=image, label=caption), *lists, note]

    return view


def _adapter_lists(owner: str | None, settings: Settings) -> tuple[Any, Any]:
    runs = jobs_ui.list_runs(STAGE, owner=owner, settings=settings)
    return adapter_rows(runs), gr.update(choices=adapter_choices(runs))


def _build_args(settings: Settings):
    def build(
        owner: str | None,
        selection: dict[str, Any] | None,
        model: str | None,
        steps: float | None,
        rank: float | None,
        lr: float | None,
        seed: float | None,
        sample_every: float | None,
        batch_size: float | None,
        ti_only: bool,
        class_balanced: str | None = None,
    ) -> tuple[list[str], str]:
        args = personalize_args(
            selection, model=model, steps=steps, rank=rank, lr=lr, seed=seed,
            sample_every=sample_every, batch_size=batch_size, ti_only=ti_only,
            class_balanced=class_balanced, settings=settings,
        )  # fmt: skip
        return args, "adapter"

    return build


#: The page's settings, in the order the command listener takes them.
COMMAND_PARAMS = ("selection", "model", "steps", "rank", "lr", "seed", "sample_every",
                  "batch_size", "ti_only", "class_balanced")  # fmt: skip


def _command_action(settings: Settings):
    def personalize_command(*values: Any) -> str:
        """The ``diffmix personalize`` command of the page's settings (or what is missing)."""
        from diffmix.command import command_for

        kw = dict(zip(COMMAND_PARAMS, values, strict=True))
        return jobs_ui.command_text(
            lambda: command_for("personalize", personalize_config(**kw, settings=settings)),
            settings,
        )

    return jobs_ui.with_params(personalize_command, list(COMMAND_PARAMS))


#: The settings a preset holds, in widget order (:data:`diffmix.presets.PRESET_FIELDS`).
PRESET_WIDGETS = ("model", "steps", "rank", "lr", "sample_every", "batch_size", "ti_only",
                  "class_balanced")  # fmt: skip


def preset_fields(model: str | None, steps: Any, rank: Any, lr: Any, sample_every: Any,
                  batch_size: Any, ti_only: bool, class_balanced: Any) -> dict[str, Any]:  # fmt: skip
    """The page's settings as PersonalizeConfig fields (blank numbers left out; the class-
    balanced menu's "auto" kept as null, so loading restores it)."""
    fields: dict[str, Any] = {
        "model": (model or "").strip() or None,
        "steps": whole_number(steps, "steps", default=None, minimum=1),
        "rank": whole_number(rank, "rank", default=None, minimum=1),
        "lr": None if lr in (None, "", 0) else float(lr),
        "sample_every": whole_number(sample_every, "sample every", default=None, minimum=0),
        "batch_size": whole_number(batch_size, "batch size", default=None, minimum=1),
        "ti_only": bool(ti_only),
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    fields["class_balanced"] = _balanced(class_balanced)
    return fields


def preset_updates(fields: dict[str, Any]) -> list[Any]:
    """One update per preset widget (:data:`PRESET_WIDGETS`) for a loaded preset."""
    menu = {v: k for k, v in BALANCED_CHOICES.items()}
    out = []
    for key in PRESET_WIDGETS:
        if key not in fields:
            out.append(gr.skip())
        elif key == "class_balanced":
            out.append(gr.update(value=menu[fields[key]]))
        else:
            out.append(gr.update(value=fields[key]))
    return out


def _use_action(settings: Settings):
    def use_adapter(name: str | None, owner: str | None) -> tuple[Any, Any, Any]:
        """Choose a finished adapter for the Translate and Generate pages."""
        try:
            state = choose_adapter(name, owner=owner, settings=settings)
        except jobs_ui.USER_ERRORS as err:
            return gr.skip(), gr.skip(), common.error_box(jobs_ui.readable_error(err), settings)
        return (
            state,
            adapter_line(state),
            common.info_box(f"Using adapter {state['name']}.", settings),
        )

    def clear_adapter() -> tuple[Any, Any, Any]:
        """Use no adapter (base model only), and carry none forward."""
        state = {"none": True}
        return state, adapter_line(state), common.info_box("No adapter: base model only.", settings)

    def adapters(owner: str | None) -> tuple[Any, Any]:
        """The personalization runs this session may see, and the finished ones."""
        return _adapter_lists(owner, settings)

    return use_adapter, clear_adapter, adapters


def measuring(model: str) -> bool:
    """Whether the background measurement of ``model``'s speed is under way."""
    thread = _MEASURING.get(model)
    return thread is not None and thread.is_alive()


def sized_update(built: dict[str, Any], steps: Any, sample_every: Any, model: str) -> list[Any]:
    """The steps and sample-grid widgets' updates when the page opens: the sizing measured on
    this machine since the page was built (rough then), as long as both widgets still hold the
    built defaults (a value the visitor typed, or a watched run's, is kept)."""
    keep = [gr.skip(), gr.skip()]
    if built["measured"] or (steps, sample_every) != (built["steps"], built["sample_every"]):
        return keep
    now = model_defaults(model)
    if not now["measured"]:
        return keep
    return [gr.update(value=now["steps"], info=now["source"]), gr.update(value=now["sample_every"])]


def _on_open(settings: Settings, built: dict[str, Any]):
    def on_open(
        owner: str | None,
        selection: dict[str, Any] | None,
        adapter: dict[str, Any] | None,
        steps: Any = None,
        sample_every: Any = None,
    ) -> list[Any]:
        seed = (selection or {}).get("seed")
        table, choices = _adapter_lists(owner, settings)
        carried = carry_adapter(adapter, selection, owner=owner, settings=settings)
        return [
            selection_line(selection),
            gr.update(value=seed) if seed is not None else gr.skip(),
            table,
            choices,
            adapter_line(carried),
            carried,
            *sized_update(built, steps, sample_every, settings.model),
        ]

    return on_open


def settings_from_config(config: dict[str, Any], *, public: bool = False) -> list[Any]:
    """The settings widgets' values (model, steps, rank, lr, seed, sample every, batch size,
    tokens only, class-balanced) of a run's ``config.json``, so a reload shows the watched run's
    settings. ``public``: the model box keeps its value (a server path is not shown)."""
    balanced = config.get("class_balanced")
    auto = balanced is None or bool(balanced) == (config.get("imbalance") is not None)
    choice = next(k for k, v in BALANCED_CHOICES.items() if v == (None if auto else balanced))
    return [
        gr.skip() if public else config.get("model"),
        config.get("steps"),
        config.get("rank"),
        config.get("lr"),
        config.get("seed"),
        config.get("sample_every"),
        config.get("batch_size"),
        bool(config.get("ti_only")),
        choice,
    ]


def _defaults_for(model: str | None) -> tuple[Any, Any, Any]:
    """The model's default steps, grid spacing and learning rate when another base model is
    typed (sized to this machine; the steps' description says where they come from)."""
    name = (model or "").strip() or "nano"
    d = model_defaults(name if name == "nano" else "sd")
    return (
        gr.update(value=d["steps"], info=d["source"]),
        gr.update(value=d["sample_every"]),
        gr.update(value=d["lr"]),
    )


# --------------------------------------------------------------------------- layout


def build(settings: Settings | None = None) -> gr.Blocks:
    """The Personalize page as a standalone ``gr.Blocks``."""
    settings = settings or common.get_settings()
    defaults = model_defaults(settings.model)
    measure_in_background(settings.model)  # the app starts now; the page sizes on open
    with common.page_blocks(TITLE) as page:
        selection = common.selection_state()
        adapter = common.adapter_state()
        owner = common.owner_state()
        gr.Markdown(
            "## 2 · Personalize\nTeach the base model one token per class (textual inversion) "
            "plus a LoRA on its UNet, on exactly the images selected on the Dataset page. "
            "Training runs in the background: you can reload or leave the page."
        )
        current = gr.Markdown(selection_line(None), elem_id="pz-selection")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                preset = presets_ui.preset_panel(STAGE, "pz")
                model = gr.Textbox(
                    settings.model, label="Base model", max_lines=1, elem_id="pz-model",
                    info="nano (embedded), a Hub id or a diffusers folder (where allowed)",
                )  # fmt: skip
                with gr.Row():
                    steps = gr.Number(
                        defaults["steps"], label="Steps", precision=0, minimum=1,
                        elem_id="pz-steps", info=defaults["source"],
                    )  # fmt: skip
                    rank = gr.Number(field_default(PersonalizeConfig, "rank"), label="LoRA rank",
                                     precision=0, minimum=1, elem_id="pz-rank")  # fmt: skip
                with gr.Row():
                    lr = gr.Number(defaults["lr"], label="LoRA learning rate", elem_id="pz-lr",
                                   info="1e-3 for nano, 5e-5 for SD by default")  # fmt: skip
                    seed = gr.Number(field_default(PersonalizeConfig, "seed"), label="Seed",
                                     precision=0, minimum=0, elem_id="pz-seed")  # fmt: skip
                with gr.Accordion("More options", open=False):
                    sample_every = gr.Number(
                        defaults["sample_every"], label="Sample grid every N steps (0: never)",
                        info="default: about 4 grids a run (each costs ~50 training steps)",
                        precision=0,
                        minimum=0, elem_id="pz-sample-every",
                    )  # fmt: skip
                    batch_size = gr.Number(field_default(PersonalizeConfig, "batch_size"),
                                           label="Batch size", precision=0, minimum=1,
                                           elem_id="pz-batch")  # fmt: skip
                    ti_only = gr.Checkbox(False, label="Tokens only (no LoRA; for ti-* baselines)",
                                          elem_id="pz-ti-only")  # fmt: skip
                    class_balanced = gr.Dropdown(
                        list(BALANCED_CHOICES), value=next(iter(BALANCED_CHOICES)),
                        label="Class-balanced sampling", elem_id="pz-balanced",
                        info="draw each class equally often; the authors always do on long-tail data",
                    )  # fmt: skip
                estimate = gr.Markdown(elem_id="pz-estimate")
                panel = jobs_ui.job_panel(
                    STAGE, "pz", start_label="Start personalization",
                    name_placeholder="adapter-<date>-<time>",
                )  # fmt: skip
                command = jobs_ui.command_box("pz")
            with gr.Column(scale=2):
                loss = gr.Plot(label="Loss", elem_id="pz-loss")
                sample = gr.Image(
                    label="No samples yet", type="pil", interactive=False, height=260,
                    elem_id="pz-sample",
                )  # fmt: skip
        gr.Markdown("### Adapters")
        table = gr.Dataframe(
            headers=ADAPTER_COLUMNS, interactive=False, elem_id="pz-adapters", wrap=True
        )
        with gr.Row(equal_height=True):
            use_name = gr.Dropdown(
                [],
                allow_custom_value=True,
                label="Finished adapter",
                scale=3,
                elem_id="pz-use-name",
            )
            use = gr.Button("Use for later pages", variant="primary", scale=1, elem_id="pz-use")
            clear = gr.Button("Use none", scale=1, elem_id="pz-use-none")
            relist = gr.Button("↻", scale=0, min_width=50, elem_id="pz-adapters-refresh")
        chosen = gr.Markdown(adapter_line(None), elem_id="pz-adapter")
        use_msg = gr.Markdown(elem_id="pz-use-message")
        common.next_step(
            "translate", "Translate",
            "preview translations with the adapter (a finished adapter trained on this dataset "
            "is used on the next pages unless you choose another or none above).",
        )  # fmt: skip

        jobs_ui.wire(
            panel,
            page=page,
            settings=settings,
            owner=owner,
            build_args=_build_args(settings),
            start_inputs=[
                selection,
                model,
                steps,
                rank,
                lr,
                seed,
                sample_every,
                batch_size,
                ti_only,
                class_balanced,
            ],  # fmt: skip
            view=_view(settings),
            view_outputs=[loss, sample, table, use_name, use_msg],
            on_open=_on_open(settings, defaults),
            open_inputs=[selection, adapter, steps, sample_every],
            open_outputs=[current, seed, table, use_name, chosen, adapter, steps, sample_every],
            restore=lambda config: settings_from_config(config, public=settings.public),
            restore_outputs=[model, steps, rank, lr, seed, sample_every, batch_size, ti_only,
                             class_balanced],
        )  # fmt: skip
        use_fn, clear_fn, list_fn = _use_action(settings)
        use.click(use_fn, [use_name, owner], [adapter, chosen, use_msg], api_name="use_adapter")
        clear.click(clear_fn, None, [adapter, chosen, use_msg], api_name="clear_adapter")
        relist.click(list_fn, owner, [table, use_name], api_name="list_adapters")
        model.input(_defaults_for, model, [steps, sample_every, lr], queue=False,
                    api_visibility="private")  # fmt: skip
        start_values = [selection, model, steps, rank, lr, seed, sample_every, batch_size,
                        ti_only, class_balanced]  # fmt: skip
        estimate_fn = estimates.estimate_action(
            STAGE, _build_args(settings), settings, measuring=lambda: measuring(settings.model)
        )
        page.load(estimate_fn, [owner, *start_values], estimate, api_visibility="private")
        for widget in (model, steps, batch_size, sample_every, ti_only):
            widget.change(estimate_fn, [owner, *start_values], estimate,
                          show_progress="hidden", api_visibility="private")  # fmt: skip
        settings_in = [selection, model, steps, rank, lr, seed, sample_every, batch_size, ti_only,
                       class_balanced]  # fmt: skip
        command_fn = _command_action(settings)
        page.load(command_fn, settings_in, command, api_name="personalize_command")
        for widget in settings_in[2:]:
            widget.change(command_fn, settings_in, command, queue=False, show_progress="hidden",
                          api_visibility="private")  # fmt: skip
        model.blur(command_fn, settings_in, command, queue=False, api_visibility="private")
        presets_ui.wire_presets(
            preset, page=page, settings=settings, owner=owner,
            widgets=[model, steps, rank, lr, sample_every, batch_size, ti_only, class_balanced],
            to_fields=preset_fields, from_fields=preset_updates,
        )  # fmt: skip
    return page


if __name__ == "__main__":
    common.run(build, description=f"{common.APP_TITLE} · {TITLE} page")
