"""Train page: train a classifier on the selected real images (+ synthetic folders), compare runs.

Widget values become ``diffmix train`` arguments (:func:`train_args`, checked with
:class:`~diffmix.classify.TrainConfig`); the job writes ``<workspace>/runs/<name>`` with one
``epoch`` event per epoch, then ``metrics.json`` and ``confusion.json``. The page draws the loss
and accuracy curves live, the per-class accuracy, the confusion matrix at the end, and a table
comparing finished runs -- grouped by their configuration minus the seed, with mean ± std over
seeds (:func:`comparison_table`), e.g. baseline against Diff-Mix.

Run alone with ``python pages/train.py``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from plotly.subplots import make_subplots  # noqa: E402

from diffmix.classify.config import DEFAULT_P, TrainConfig  # noqa: E402
from diffmix.config import field_default  # noqa: E402
from diffmix.experiment.table import format_mean_std  # noqa: E402
from diffmix.runs import RunDir  # noqa: E402
from diffmix.settings import Settings  # noqa: E402
from pages import common, estimates, jobs_ui, presets_ui  # noqa: E402
from pages.selection import selection_line, selection_subset, whole_number  # noqa: E402

logger = logging.getLogger(__name__)

TITLE = "Train"
PATH = "train"
STAGE = "train"
#: "auto": by dataset -- ResNet-18 from scratch at 64 px on the demo, the built-in ImageNet
#: EfficientNet-Lite0 (frozen, head trained) at 224 px on real photos (TrainConfig's rule).
AUTO_ARCH = "auto"
ARCHS = (AUTO_ARCH, "smallcnn", "resnet18", "resnet34", "resnet50", "tf_efficientnet_lite0")
MIXES = ("none", "mixup", "cutmix")
LOSSES = ("ce", "balanced-softmax", "drw")
#: The widgets' defaults are the config's (one place for each default).
DEFAULTS = {name: field_default(TrainConfig, name)
            for name in ("gamma", "epochs", "batch_size", "lr", "seed")}  # fmt: skip
#: Config keys that do not define *what* is compared (the seed varies inside a group).
NOT_GROUPED = ("seed", "num_threads", "tensorboard", "cache", "eval_batch_size", "eval_every")
COMPARE_COLUMNS = ["setup", "dataset", "arch", "epochs", "px", "seeds", "test accuracy (%)",
                   "mean class acc. (%)", "head / medium / tail (%)", "runs"]  # fmt: skip
#: Column widths of the comparison table: a narrow column wrapped its header letter by letter.
COMPARE_WIDTHS = ["15%", "11%", "8%", "6%", "5%", "6%", "10%", "10%", "13%", "16%"]


# --------------------------------------------------------------------------- plain functions


def synthetic_folders(
    names: Sequence[str] | None,
    class_names: Sequence[str],
    *,
    owner: str | None,
    settings: Settings,
) -> list[Path]:
    """The synthetic dataset folders named (checked: visible, finished, same classes)."""
    out = []
    for name in names or []:
        path = jobs_ui.open_run("generate", name, owner=owner, settings=settings)
        try:
            record = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            raise ValueError(f"synthetic dataset {name!r} has no readable config.json") from None
        if not (path / "metadata.jsonl").is_file():
            raise ValueError(f"synthetic dataset {name!r} has no images yet")
        theirs = list(record.get("class_names") or [])
        if theirs != list(class_names):
            raise ValueError(
                f"synthetic dataset {name!r} was made for other classes "
                f"({len(theirs)} classes: {', '.join(theirs[:4])}…) than the selected dataset "
                f"({len(class_names)}: {', '.join(list(class_names)[:4])}…)"
            )
        out.append(path)
    return out


def train_config(
    selection: dict[str, Any] | None,
    *,
    synthetic: Sequence[str] | None = None,
    p: float | None = None,
    gamma: float | None = DEFAULTS["gamma"],
    arch: str = AUTO_ARCH,
    epochs: float | None = DEFAULTS["epochs"],
    resolution: float | None = None,
    batch_size: float | None = DEFAULTS["batch_size"],
    lr: float | None = DEFAULTS["lr"],
    seed: float | None = DEFAULTS["seed"],
    threads: float | None = None,
    mix: str = "none",
    balanced_sampling: bool = False,
    loss: str = "ce",
    settings: Settings,
    owner: str | None = None,
) -> Any:
    """The :class:`~diffmix.classify.TrainConfig` of the page's values (checked).

    The real images are the Dataset page's subset (its seed draws it: ``--subset-seed``);
    ``seed`` is the training seed, so runs with several seeds share one subset.
    """
    sub = selection_subset(selection, settings)
    whole = whole_number
    folders = synthetic_folders(
        synthetic, selection.get("class_names") or [], owner=owner, settings=settings
    )
    p_value = None if p in (None, "") else float(p)
    if not folders:
        p_value = None  # no synthetic data: p has nothing to replace with
    cfg = TrainConfig(
        dataset=sub["spec"], shots=sub["shots"], imbalance=sub["imbalance"],
        subset_seed=sub["seed"], synthetic=[str(f) for f in folders], p=p_value,
        gamma=float(gamma if gamma not in (None, "") else DEFAULTS["gamma"]),
        arch=None if (arch or "").strip() in ("", AUTO_ARCH) else arch.strip(),
        epochs=whole(epochs, "epochs", default=DEFAULTS["epochs"], minimum=1),
        resolution=whole(resolution or None, "resolution", default=None, minimum=16),
        batch_size=whole(batch_size, "batch size", default=DEFAULTS["batch_size"], minimum=1),
        lr=float(lr if lr not in (None, "") else DEFAULTS["lr"]),
        seed=whole(seed, "seed", default=DEFAULTS["seed"]),
        num_threads=whole(threads or None, "threads", default=None, minimum=1),
        mix=mix or "none", balanced_sampling=bool(balanced_sampling), loss=loss or "ce",
    )  # fmt: skip
    return cfg


def train_args(selection: dict[str, Any] | None, **values: Any) -> list[str]:
    """``diffmix train`` arguments for the page's values (:func:`train_config`): the core's
    command line (:func:`diffmix.command.command_args`), so the command the page shows and the
    job it starts cannot drift; the spec after ``--`` (never read as an option)."""
    from diffmix.command import command_args

    cfg = train_config(selection, **values)
    return [*command_args("train", cfg), "--", cfg.dataset]


def run_prefix(arch: str, synthetic: Sequence[str] | None, mix: str) -> str:
    """A default run-name prefix: ``resnet18-baseline``, ``smallcnn-diffmix``, ``…-mixup``."""
    kind = "diffmix" if synthetic else (mix if mix and mix != "none" else "baseline")
    return f"{(arch or 'model').strip()}-{kind}"


#: Up to this many classes the per-class chart shows every class; above it, a summary.
PER_CLASS_ALL = 30
#: Up to this many classes the confusion view is the full matrix; above it, the top pairs.
CONFUSION_GRID_MAX = 20
#: Worst / best classes shown in the per-class summary, and confusion pairs listed.
SUMMARY_N = 10
TOP_CONFUSIONS = 15


def no_data(fig: go.Figure, text: str = "no data yet") -> go.Figure:
    """``fig`` with its axes hidden and ``text`` in the middle (a plot with nothing to show)."""
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 15, "color": "#78909c"})  # fmt: skip
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def curves_figure(events: Sequence[dict[str, Any]]) -> go.Figure:
    """Train loss (left axis) and test accuracy (right axis) against epoch."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    ep = [e for e in events if "epoch" in e]
    fig.add_scatter(x=[e["epoch"] for e in ep], y=[e.get("train_loss") for e in ep],
                    mode="lines+markers", name="train loss", line={"color": "#1e88e5"},
                    secondary_y=False)  # fmt: skip
    acc = [e for e in ep if e.get("test_accuracy") is not None]
    fig.add_scatter(x=[e["epoch"] for e in acc], y=[100 * e["test_accuracy"] for e in acc],
                    mode="lines+markers", name="test accuracy", line={"color": "#43a047"},
                    secondary_y=True)  # fmt: skip
    fig.update_layout(
        title="Loss and accuracy", height=320, template="plotly_white",
        margin={"l": 50, "r": 50, "t": 50, "b": 45},
        legend={"orientation": "h", "y": 1.14, "x": 1, "xanchor": "right"},
    )  # fmt: skip
    if not ep:
        fig.update_layout(showlegend=False)
        return no_data(fig, "no data yet: start a run or watch one")
    fig.update_xaxes(title_text="epoch", dtick=1 if len(ep) <= 12 else None)
    fig.update_yaxes(title_text="train loss", secondary_y=False)
    fig.update_yaxes(title_text="test accuracy (%)", range=[0, 100], secondary_y=True)
    return fig


def _short(name: str, width: int = 26) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def class_extremes(
    class_names: Sequence[str], accuracy: Sequence[float | None], n: int = SUMMARY_N
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """``(worst, best)``: the ``n`` classes with the lowest accuracy (lowest first) and the ``n``
    with the highest (highest first), ties by class order; classes without a value are left
    out, and a class is in only one list."""
    have = [(i, float(a)) for i, a in enumerate(accuracy) if a is not None]
    order = sorted(have, key=lambda t: (t[1], t[0]))
    worst = order[:n]
    rest = order[len(worst) :]
    best = sorted(rest, key=lambda t: (-t[1], t[0]))[:n]
    return ([(class_names[i], a) for i, a in worst], [(class_names[i], a) for i, a in best])


def per_class_figure(class_names: Sequence[str], accuracy: Sequence[float | None] | None,
                     *, title: str = "Per-class test accuracy") -> go.Figure:  # fmt: skip
    """Per-class accuracy (percent): every class as a bar up to :data:`PER_CLASS_ALL` classes;
    above that, a histogram of the class accuracies beside the worst and best
    :data:`SUMMARY_N` classes by name (hover: the full name)."""
    if accuracy is None or not len(accuracy):
        fig = go.Figure()
        fig.update_layout(title=title, height=300, template="plotly_white")
        return no_data(fig, "no data yet: per-class accuracy appears after the first evaluation")
    if len(accuracy) <= PER_CLASS_ALL:
        fig = go.Figure()
        # None: a class absent from the test split (no accuracy to show; drawn as no bar)
        y = [None if a is None else 100 * a for a in accuracy]
        fig.add_bar(x=list(class_names), y=y, marker_color="#1e88e5")
        fig.update_layout(title=title, height=300, template="plotly_white", yaxis_range=[0, 100],
                          yaxis_title="accuracy (%)", margin={"l": 50, "r": 20, "t": 50, "b": 80})  # fmt: skip
        fig.update_xaxes(tickangle=-35)
        return fig
    have = [100 * a for a in accuracy if a is not None]
    worst, best = class_extremes(class_names, accuracy)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.35, 0.65], horizontal_spacing=0.27,
                        subplot_titles=(f"{len(have)} classes by accuracy",
                                        f"worst {len(worst)} (red) and best {len(best)} (green)"))  # fmt: skip
    counts, edges = np.histogram(have, bins=10, range=(0, 100))
    fig.add_bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=10, marker_color="#1e88e5",
                hovertemplate="%{x:.0f} ± 5 %%: %{y} classes<extra></extra>", row=1, col=1)  # fmt: skip
    rows = [*reversed(best), *reversed(worst)]  # plotly draws the first category at the bottom
    fig.add_bar(
        y=[f"{_short(n)} " for n, _ in rows], x=[100 * a for _, a in rows], orientation="h",
        marker_color=["#43a047"] * len(best) + ["#e53935"] * len(worst),
        customdata=[n for n, _ in rows], hovertemplate="%{customdata}: %{x:.1f} %<extra></extra>",
        row=1, col=2,
    )  # fmt: skip
    fig.update_xaxes(title_text="accuracy (%)", range=[0, 100], row=1, col=1)
    fig.update_yaxes(title_text="classes", row=1, col=1)
    fig.update_xaxes(title_text="accuracy (%)", range=[0, 100], row=1, col=2)
    fig.update_yaxes(tickfont={"size": 10}, row=1, col=2)
    fig.update_layout(title=title, height=max(320, 60 + 17 * len(rows)), showlegend=False,
                      template="plotly_white", margin={"l": 50, "r": 20, "t": 70, "b": 45})  # fmt: skip
    return fig


def top_confusions(confusion: dict[str, Any], k: int = TOP_CONFUSIONS) -> list[dict[str, Any]]:
    """The ``k`` most frequent mistakes of a confusion matrix (rows: true class, columns:
    predicted): ``{"true", "predicted", "count", "share"}`` with ``share`` the fraction of the
    true class's test images, most frequent first (ties: matrix order)."""
    m = np.asarray(confusion["matrix"], dtype=np.int64)
    names = list(confusion["class_names"])
    off = m.copy()
    np.fill_diagonal(off, 0)
    flat = np.flatnonzero(off)
    if not len(flat):
        return []
    order = flat[np.lexsort((flat, -off.ravel()[flat]))][:k]
    totals = m.sum(axis=1)
    out = []
    for idx in order:
        i, j = divmod(int(idx), m.shape[1])
        out.append({"true": names[i], "predicted": names[j], "count": int(m[i, j]),
                    "share": float(m[i, j] / totals[i]) if totals[i] else 0.0})  # fmt: skip
    return out


def confusion_figure(confusion: dict[str, Any] | None) -> go.Figure:
    """The final confusion matrix: a heatmap (rows: true class, columns: predicted) up to
    :data:`CONFUSION_GRID_MAX` classes; above that, the :data:`TOP_CONFUSIONS` most frequent
    confusions as ``true → predicted`` bars with their counts."""
    fig = go.Figure()
    if not confusion:
        fig.update_layout(title="Confusion (final epoch)", height=300, template="plotly_white")
        return no_data(fig, "no confusion matrix yet: it is written when a run finishes")
    names = list(confusion["class_names"])
    if len(names) <= CONFUSION_GRID_MAX:
        fig.add_heatmap(z=confusion["matrix"], x=names, y=names, colorscale="Blues",
                        hovertemplate="true %{y}<br>predicted %{x}<br>%{z}<extra></extra>")  # fmt: skip
        fig.update_yaxes(autorange="reversed", title_text="true class")
        fig.update_xaxes(title_text="predicted class", tickangle=-35)
        fig.update_layout(title="Confusion matrix (final epoch)", height=380,
                          template="plotly_white", margin={"l": 90, "r": 20, "t": 50, "b": 90})  # fmt: skip
        return fig
    pairs = top_confusions(confusion)
    title = f"Top {len(pairs)} confusions of {len(names)} classes (final epoch)"
    if not pairs:
        fig.update_layout(title=title, height=300, template="plotly_white")
        return no_data(fig, "no confusions: every test image was classified correctly")
    pairs = pairs[::-1]  # the most frequent at the top
    fig.add_bar(
        y=[f"{_short(p['true'], 22)} → {_short(p['predicted'], 22)} " for p in pairs],
        x=[p["count"] for p in pairs], orientation="h", marker_color="#fb8c00",
        text=[f"{p['count']} ({100 * p['share']:.0f} %)" for p in pairs], textposition="auto",
        customdata=[[p["true"], p["predicted"]] for p in pairs],
        hovertemplate="true %{customdata[0]}<br>predicted %{customdata[1]}<br>%{x} test "
                      "images<extra></extra>",
    )  # fmt: skip
    fig.update_xaxes(title_text="test images (share of the true class)")
    fig.update_yaxes(tickfont={"size": 10})
    fig.update_layout(title=title, height=max(320, 70 + 22 * len(pairs)),
                      template="plotly_white", margin={"l": 20, "r": 20, "t": 50, "b": 45})  # fmt: skip
    fig.update_yaxes(automargin=True)
    return fig


def run_record(run_dir: Path) -> dict[str, Any] | None:
    """Config and final metrics of a finished training run (None otherwise)."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return {"name": run_dir.name, "config": config, "metrics": metrics}


def group_key(config: dict[str, Any]) -> tuple:
    """What a run compares by: its config minus the seed and run-only fields.

    Synthetic folders count by their names (the same folder reached by two paths is one).
    """
    key = {k: v for k, v in config.items() if k not in NOT_GROUPED}
    key["synthetic"] = sorted(Path(s).name for s in config.get("synthetic") or [])
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in key.items()))


def setup_label(config: dict[str, Any]) -> str:
    """``baseline``, ``diff-mix (syn-a) p=0.1 γ=0.5``, ``mixup``, plus long-tail options."""
    syn = [Path(s).name for s in config.get("synthetic") or []]
    if syn:
        label = f"synthetic ({', '.join(syn)}) p={config.get('p')} γ={config.get('gamma')}"
    elif config.get("mix", "none") != "none":
        label = str(config["mix"])
    else:
        label = "baseline"
    if config.get("balanced_sampling"):
        label += " + balanced sampling"
    if config.get("loss", "ce") != "ce":
        label += f" + {config['loss']}"
    return label


def comparison_table(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Finished runs grouped by config minus seed: mean ± std (sample std) over the seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(group_key(r["config"]), []).append(r)
    rows = []
    for runs in groups.values():
        cfg = runs[0]["config"]
        m = [r["metrics"] for r in runs]
        sub = (f"{cfg['shots']}-shot" if cfg.get("shots") else
               f"long-tail {cfg['imbalance']:g}" if cfg.get("imbalance") else "full")  # fmt: skip
        hmt = ""
        if cfg.get("imbalance"):
            hmt = " / ".join(format_mean_std([x.get(g) for x in m]) or "-"
                             for g in ("head_accuracy", "medium_accuracy", "tail_accuracy"))  # fmt: skip
        spec = str(cfg.get("dataset", ""))
        spec = spec if spec.startswith(("demo", "hub:")) else Path(spec).name
        rows.append([
            setup_label(cfg), f"{spec} ({sub})", cfg.get("arch"), cfg.get("epochs"),
            cfg.get("resolution"), ", ".join(str(r["config"].get("seed")) for r in runs),
            format_mean_std([x.get("test_accuracy") for x in m]),
            format_mean_std([x.get("mean_class_accuracy") for x in m]), hmt,
            ", ".join(r["name"] for r in runs),
        ])  # fmt: skip
    df = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    if len(df):
        order = [float(str(v).split(" ")[0] or "nan") if v else float("nan")
                 for v in df["test accuracy (%)"]]  # fmt: skip
        df = df.assign(_o=order).sort_values(["dataset", "_o"], ascending=[True, False])
        df = df.drop(columns="_o").reset_index(drop=True)
    return df


def finished_records(*, owner: str | None, settings: Settings) -> list[dict[str, Any]]:
    """Config + metrics of every finished training run this session may see."""
    out = []
    for r in jobs_ui.list_runs(STAGE, owner=owner, settings=settings):
        rec = run_record(Path(r["path"]))
        if rec is not None:
            out.append(rec)
    return out


def synthetic_choices(*, owner: str | None, settings: Settings) -> list[str]:
    """Names of the finished synthetic datasets this session may see."""
    return [
        r["name"]
        for r in jobs_ui.list_runs("generate", owner=owner, settings=settings)
        if r["state"] == "done" and (Path(r["path"]) / "metadata.jsonl").is_file()
    ]


def live_figures(run_dir: Path | None) -> tuple[go.Figure, go.Figure, go.Figure]:
    """Curves (live), per-class accuracy (latest evaluation) and confusion (at the end)."""
    if run_dir is None:
        return curves_figure([]), per_class_figure([], None), confusion_figure(None)
    events = RunDir(run_dir).events("epoch")
    names: list[str] = []
    conf = None
    try:
        conf = json.loads((run_dir / "confusion.json").read_text())
        names = list(conf["class_names"])
    except (OSError, ValueError, KeyError):
        conf = None
    per_class = None
    title = "Per-class test accuracy"
    evaluated = [e for e in events if e.get("per_class_accuracy") is not None]
    if evaluated:
        per_class = evaluated[-1]["per_class_accuracy"]
        title += f" (epoch {evaluated[-1]['epoch']})"
    if not names:
        names = _class_names(run_dir, len(per_class or []))
    return (
        curves_figure(events),
        per_class_figure(names, per_class, title=title),
        confusion_figure(conf),
    )


def _class_names(run_dir: Path, n: int) -> list[str]:
    """Class names of a run still in progress (from its dataset; indices if unavailable)."""
    cfg = RunDir(run_dir).read_config() or {}
    try:
        ds = common.load_cached(str(cfg.get("dataset", "")), "train")
        if ds.num_classes == n:
            return list(ds.class_names)
    except (ValueError, OSError):
        pass
    return [str(i) for i in range(n)]


# --------------------------------------------------------------------------- callbacks


def _recipe_action(name: str | None) -> tuple[Any, Any, str]:
    """The recipe menu: fill p and γ with the recipe's values (no recipe: leave them)."""
    fields, text = common.recipe_values(name, "train")
    if not fields:
        return gr.update(), gr.update(), ""
    return gr.update(value=fields["p"]), gr.update(value=fields["gamma"]), text


def _build_args(settings: Settings):
    def build(
        owner: str | None, selection: dict | None, synthetic: list[str] | None, p: float | None,
        gamma: float | None, arch: str, epochs: float | None, resolution: float | None,
        batch_size: float | None, lr: float | None, seed: float | None, threads: float | None,
        mix: str, balanced: bool, loss: str,
    ) -> tuple[list[str], str]:  # fmt: skip
        args = train_args(
            selection, synthetic=synthetic, p=p, gamma=gamma, arch=arch, epochs=epochs,
            resolution=resolution, batch_size=batch_size, lr=lr, seed=seed, threads=threads,
            mix=mix, balanced_sampling=balanced, loss=loss, settings=settings, owner=owner,
        )  # fmt: skip
        return args, f"{run_prefix(arch, synthetic, mix)}-s{int(seed or 0)}"

    return build


def settings_from_config(config: dict[str, Any]) -> list[Any]:
    """The settings widgets' values (synthetic sets, p, γ, backbone, epochs, resolution, batch
    size, lr, seed, threads, mixing, balanced sampling, loss) of a run's ``config.json``, so a
    reload shows the watched run's settings. Synthetic folders show as their set names."""
    return [
        [Path(str(f)).name for f in config.get("synthetic") or []],
        config.get("p") if config.get("p") is not None else 0.0,
        config.get("gamma"),
        config.get("arch") or AUTO_ARCH,
        config.get("epochs"),
        config.get("resolution"),
        config.get("batch_size"),
        config.get("lr"),
        config.get("seed"),
        config.get("num_threads"),
        config.get("mix") or "none",
        bool(config.get("balanced_sampling")),
        config.get("loss") or "ce",
    ]


#: The page's settings, in the order the command listener takes them.
COMMAND_PARAMS = ("owner", "selection", "synthetic", "p", "gamma", "arch", "epochs",
                  "resolution", "batch_size", "lr", "seed", "threads", "mix", "balanced_sampling",
                  "loss")  # fmt: skip


def _command_action(settings: Settings):
    def train_command(owner: str | None, selection: dict | None, *values: Any) -> str:
        """The ``diffmix train`` command of the page's settings (or what is missing)."""
        from diffmix.command import command_for

        kw = dict(zip(COMMAND_PARAMS[2:], values, strict=True))
        return jobs_ui.command_text(
            lambda: command_for("train", train_config(selection, **kw, settings=settings,
                                                      owner=owner)),
            settings,
        )  # fmt: skip

    return jobs_ui.with_params(train_command, list(COMMAND_PARAMS))


#: The settings a preset holds, in widget order (:data:`diffmix.presets.PRESET_FIELDS`).
PRESET_WIDGETS = ("p", "gamma", "arch", "epochs", "resolution", "batch_size", "lr", "seed",
                  "num_threads", "mix", "balanced_sampling", "loss")  # fmt: skip


def preset_fields(p: Any, gamma: Any, arch: str | None, epochs: Any, resolution: Any,
                  batch_size: Any, lr: Any, seed: Any, threads: Any, mix: str | None,
                  balanced: bool, loss: str | None) -> dict[str, Any]:  # fmt: skip
    """The page's settings as TrainConfig fields ("auto" backbone and blank resolution /
    threads kept as null, so loading restores them)."""
    whole = whole_number
    fields: dict[str, Any] = {
        "p": None if p in (None, "") else float(p),
        "gamma": None if gamma in (None, "") else float(gamma),
        "epochs": whole(epochs, "epochs", default=None, minimum=1),
        "batch_size": whole(batch_size, "batch size", default=None, minimum=1),
        "lr": None if lr in (None, "") else float(lr),
        "seed": whole(seed, "seed", default=None),
        "mix": mix or None, "loss": loss or None, "balanced_sampling": bool(balanced),
    }  # fmt: skip
    fields = {k: v for k, v in fields.items() if v is not None}
    fields["arch"] = None if (arch or "").strip() in ("", AUTO_ARCH) else arch.strip()
    fields["resolution"] = whole(resolution or None, "resolution", default=None, minimum=16)
    fields["num_threads"] = whole(threads or None, "threads", default=None, minimum=1)
    return fields


def preset_updates(fields: dict[str, Any]) -> list[Any]:
    """One update per preset widget (:data:`PRESET_WIDGETS`) for a loaded preset."""
    out = []
    for key in PRESET_WIDGETS:
        if key not in fields:
            out.append(gr.skip())
        elif key == "arch":
            out.append(gr.update(value=fields[key] or AUTO_ARCH))
        else:
            out.append(gr.update(value=fields[key]))
    return out


def _view(settings: Settings):
    def view(path: Path | None, owner: str | None) -> list[Any]:
        curves, per_class, conf = live_figures(path)
        active = path is not None and jobs_ui.run_state(path).get("state") in jobs_ui.ACTIVE_STATES
        table = (
            gr.skip()
            if active
            else comparison_table(finished_records(owner=owner, settings=settings))
        )
        return [curves, per_class, conf, table]

    return view


def newest_synthetic(
    selection: dict | None, *, owner: str | None, settings: Settings
) -> str | None:
    """The newest finished synthetic set made from the selected dataset (same fingerprint and
    classes), or None: what the Train page starts with after Generate."""
    fingerprint = (selection or {}).get("fingerprint")
    if not fingerprint:
        return None
    for run in jobs_ui.list_runs("generate", owner=owner, settings=settings):  # newest first
        path = Path(run["path"])
        if run["state"] != "done" or not (path / "metadata.jsonl").is_file():
            continue
        try:
            record = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if record.get("dataset_fingerprint") == fingerprint and list(
            record.get("class_names") or []
        ) == list((selection or {}).get("class_names") or []):
            return run["name"]
    return None


def _on_open(settings: Settings):
    def on_open(owner: str | None, selection: dict | None) -> list[Any]:
        choices = synthetic_choices(owner=owner, settings=settings)
        newest = newest_synthetic(selection, owner=owner, settings=settings)
        line = selection_line(selection)
        if newest:
            line += (
                f" Synthetic set: `{newest}`, the newest one made from this dataset (clear "
                "the box for the real-data baseline)."
            )
        elif selection:
            line += " No synthetic set yet: this trains the real-data baseline."
        value = [newest] if newest else []
        return [line, gr.update(choices=choices, value=value)]

    return on_open


def _compare_action(settings: Settings):
    def train_compare(owner: str | None) -> tuple[pd.DataFrame, Any]:
        """The comparison of finished runs, and the synthetic datasets to choose from."""
        table = comparison_table(finished_records(owner=owner, settings=settings))
        return table, gr.update(choices=synthetic_choices(owner=owner, settings=settings))

    return train_compare


# --------------------------------------------------------------------------- layout


def build(settings: Settings | None = None) -> gr.Blocks:
    """The Train page as a standalone ``gr.Blocks``."""
    settings = settings or common.get_settings()
    with common.page_blocks(TITLE) as page:
        selection = common.selection_state()
        owner = common.owner_state()
        gr.Markdown(
            "## 5 · Train\nTrain a classifier on the selected real images, optionally replacing "
            "each with probability p by a synthetic image with its soft label, and compare "
            "runs on the test split."
        )
        current = gr.Markdown(selection_line(None), elem_id="tn-selection")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                preset = presets_ui.preset_panel(STAGE, "tn")
                synthetic = gr.Dropdown([], allow_custom_value=True, multiselect=True, label="Synthetic datasets",
                                        elem_id="tn-synthetic",
                                        info="none = the real-data baseline")  # fmt: skip
                recipe = gr.Dropdown(common.recipe_choices(), value=common.NO_RECIPE,
                                     label="Recipe (the authors' settings)", elem_id="tn-recipe",
                                     info="fills p and γ; the subset comes from the Dataset page")  # fmt: skip
                recipe_note = gr.Markdown(elem_id="tn-recipe-note")
                with gr.Row():
                    p = gr.Slider(0, 1, value=DEFAULT_P, step=0.05, label="p (replace probability)",
                                  info="each real image is swapped for a synthetic one with "
                                       "probability p (authors: 0.1 full data, 0.3 few-shot)",
                                  elem_id="tn-p")  # fmt: skip
                    gamma = gr.Number(DEFAULTS["gamma"], label="γ (soft-label power)", minimum=0.01,
                                      info="an image from A toward B at strength s is labelled "
                                           "(1-s^γ)·A + s^γ·B (authors: 0.5)",
                                      elem_id="tn-gamma")  # fmt: skip
                arch = gr.Dropdown(list(ARCHS), value=AUTO_ARCH, allow_custom_value=True,
                                   label="Backbone (auto, smallcnn or a timm name)", elem_id="tn-arch",
                                   info="auto: ResNet-18 from scratch on the demo; ImageNet "
                                        "EfficientNet-Lite0 (built in) on photos")  # fmt: skip
                with gr.Row():
                    epochs = gr.Number(DEFAULTS["epochs"], label="Epochs", precision=0, minimum=1,
                                       elem_id="tn-epochs")  # fmt: skip
                    # minimum 0: the browser sends a blank box as 0 (0 and blank both mean auto)
                    resolution = gr.Number(None, label="Resolution (px; 0 or blank: auto)", precision=0,
                                           minimum=0, elem_id="tn-resolution")  # fmt: skip
                    seed = gr.Number(DEFAULTS["seed"], label="Seed", precision=0, minimum=0,
                                     elem_id="tn-seed")  # fmt: skip
                with gr.Accordion("More options", open=False):
                    with gr.Row():
                        batch_size = gr.Number(DEFAULTS["batch_size"], label="Batch size", precision=0, minimum=1,
                                               elem_id="tn-batch")  # fmt: skip
                        lr = gr.Number(DEFAULTS["lr"], label="Learning rate", elem_id="tn-lr")
                        threads = gr.Number(None, label="CPU threads (0 or blank: auto)", precision=0,
                                            minimum=0, elem_id="tn-threads")  # fmt: skip
                    mix = gr.Radio(list(MIXES), value="none", label="Batch mixing baseline",
                                   elem_id="tn-mix")  # fmt: skip
                    balanced = gr.Checkbox(False, label="Class-balanced sampling (long tail)",
                                           elem_id="tn-balanced")  # fmt: skip
                    loss = gr.Radio(list(LOSSES), value="ce", label="Loss", elem_id="tn-loss")
                estimate = gr.Markdown(elem_id="tn-estimate")
                panel = jobs_ui.job_panel(STAGE, "tn", start_label="Start training",
                                          name_placeholder="<arch>-<kind>-s<seed>-<date>-<time>")  # fmt: skip
                command = jobs_ui.command_box("tn")
            with gr.Column(scale=2):
                curves = gr.Plot(label="Curves", elem_id="tn-curves")
                # one per row: with 200 classes each needs the column's width to stay readable
                per_class = gr.Plot(label="Per-class accuracy", elem_id="tn-per-class")
                conf = gr.Plot(label="Confusion", elem_id="tn-confusion")
        with gr.Row(equal_height=True):
            gr.Markdown("### Comparison of finished runs (mean ± std over seeds)")
            compare_btn = gr.Button("↻ Refresh", scale=0, min_width=110, elem_id="tn-compare-btn")
        table = gr.Dataframe(headers=COMPARE_COLUMNS, interactive=False, wrap=True,
                             column_widths=COMPARE_WIDTHS, elem_id="tn-compare")  # fmt: skip
        common.next_step(
            "inspect", "Inspect",
            "look at the synthetic images, their scores and soft labels; filter and export.",
        )  # fmt: skip

        jobs_ui.wire(
            panel, page=page, settings=settings, owner=owner, build_args=_build_args(settings),
            start_inputs=[selection, synthetic, p, gamma, arch, epochs, resolution,
                          batch_size, lr, seed, threads, mix, balanced, loss],
            view=_view(settings), view_outputs=[curves, per_class, conf, table],
            on_open=_on_open(settings), open_inputs=[selection],
            open_outputs=[current, synthetic],
            restore=settings_from_config,
            restore_outputs=[synthetic, p, gamma, arch, epochs, resolution, batch_size, lr, seed,
                             threads, mix, balanced, loss],
        )  # fmt: skip
        start_values = [selection, synthetic, p, gamma, arch, epochs, resolution, batch_size, lr,
                        seed, threads, mix, balanced, loss]  # fmt: skip
        estimate_fn = estimates.estimate_action(STAGE, _build_args(settings), settings)
        page.load(estimate_fn, [owner, *start_values], estimate, api_visibility="private")
        for widget in (synthetic, arch, epochs, resolution, batch_size, threads):
            widget.change(estimate_fn, [owner, *start_values], estimate,
                          show_progress="hidden", api_visibility="private")  # fmt: skip
        compare_btn.click(_compare_action(settings), owner, [table, synthetic],
                          api_name="train_compare")  # fmt: skip
        recipe.change(_recipe_action, recipe, [p, gamma, recipe_note], queue=False,
                      api_visibility="private")  # fmt: skip
        settings_in = [owner, selection, synthetic, p, gamma, arch, epochs, resolution,
                       batch_size, lr, seed, threads, mix, balanced, loss]  # fmt: skip
        command_fn = _command_action(settings)
        page.load(command_fn, settings_in, command, api_name="train_command")
        for widget in settings_in[2:]:
            widget.change(command_fn, settings_in, command, queue=False, show_progress="hidden",
                          api_visibility="private")  # fmt: skip
        presets_ui.wire_presets(
            preset, page=page, settings=settings, owner=owner,
            widgets=[p, gamma, arch, epochs, resolution, batch_size, lr, seed, threads, mix,
                     balanced, loss],
            to_fields=preset_fields, from_fields=preset_updates,
        )  # fmt: skip
    return page


if __name__ == "__main__":
    common.run(build, description=f"{common.APP_TITLE} · {TITLE} page")
