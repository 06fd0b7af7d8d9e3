"""Generate page: plan a synthetic dataset, see what it costs, make it in the background.

The plan (strategy, multiplier, strengths, target sampling, filter) is checked with
:class:`diffmix.generate.GenerateConfig` and turned into ``diffmix generate`` arguments with the
core's own :func:`~diffmix.generate.command_for`, so the page and the CLI cannot drift. Before
starting, :func:`estimate` gives the number of images, the time (:mod:`diffmix.costs`: rates
measured once on this machine by :func:`probe` -- "Measure speed" -- or a rough guess that says
so) and the disk space. The job writes
``<workspace>/synthetic/<name>`` (images per target class + ``metadata.jsonl``); the page shows
its progress and the newest images as they appear.

Run alone with ``python pages/generate.py``.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from diffmix.config import field_default  # noqa: E402
from diffmix.data import open_rgb  # noqa: E402
from diffmix.generate import GenerateConfig  # noqa: E402
from diffmix.settings import Settings, check_prompt  # noqa: E402
from diffmix.synthetic import tail_rows  # noqa: E402
from pages import common, jobs_ui, presets_ui  # noqa: E402
from pages.preview import Request, display, run_translation  # noqa: E402
from pages.selection import (  # noqa: E402
    adapter_line,
    carry_adapter,
    default_strategy,
    other_class,
    resolve_adapter,
    selection_line,
    selection_subset,
    strategy_names,
    whole_number,
)

logger = logging.getLogger(__name__)

TITLE = "Generate"
PATH = "generate"
STAGE = "generate"
TARGET_RULES = ("uniform", "tail", "confusion")
#: Metadata bytes per image (one JSON row).
ROW_BYTES = 1200
#: PNG bytes per pixel assumed before a probe measured it.
PNG_BYTES_PER_PIXEL = 2.0
#: The widgets' defaults are the config's (one place for each default).
DEFAULTS = {name: field_default(GenerateConfig, name)
            for name in ("multiplier", "filter_bottom", "num_inference_steps", "seed",
                         "guidance_scale")}  # fmt: skip


# --------------------------------------------------------------------------- plain functions


def unavailable_reason() -> str | None:
    """Why generation cannot start in this version (None when it can)."""
    if importlib.util.find_spec("diffmix.generate") is None:
        return "the generation module (diffmix/generate.py) is not part of this version yet"
    return None


def parse_strengths(text: str | Sequence[float] | None) -> list[float] | None:
    """``"0.7"`` or ``"0.3, 0.5, 0.7"`` -> floats (None when empty: the strategy's default)."""
    if text is None:
        return None
    if not isinstance(text, str):
        values = [float(s) for s in text]
        return values or None
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"strengths must be numbers in (0, 1] separated by commas, got {text!r}"
        ) from None
    bad = [s for s in values if not 0.0 < s <= 1.0]
    if bad:
        raise ValueError(f"strength must be in (0, 1], got {bad[0]:g}")
    return values or None


def generate_config(
    selection: dict[str, Any] | None,
    adapter: dict[str, Any] | None,
    *,
    strategy: str | None,
    multiplier: float | None,
    strengths: str | Sequence[float] | None,
    targets: str = "uniform",
    confusion_run: str | None = None,
    filter_bottom: float | None = DEFAULTS["filter_bottom"],
    limit: float | None = None,
    steps: float | None = DEFAULTS["num_inference_steps"],
    seed: float | None = DEFAULTS["seed"],
    score: bool = True,
    guidance: float | None = None,
    prompt_template: str | None = None,
    settings: Settings,
    owner: str | None = None,
):
    """The :class:`~diffmix.generate.GenerateConfig` of the page's values (checked).

    ``guidance`` defaults to the config's 7.5; ``prompt_template`` (empty: the strategy's own
    prompt) is checked as a typed prompt (:func:`diffmix.settings.check_prompt`).
    """
    from diffmix.adapter import check_prompt_template
    from diffmix.strategies import get_strategy

    sub = selection_subset(selection, settings)
    st = get_strategy(strategy or default_strategy(adapter))
    model, adapter_dir = settings.model, None
    if st.uses_adapter:
        found = resolve_adapter(adapter, owner=owner, settings=settings)
        if found is None:
            alt = st.name.replace("diff-", "real-").replace("ti-", "real-")
            raise ValueError(
                f"strategy {st.name!r} needs an adapter: choose one on the Personalize page, "
                f"or use {alt!r} (base model)"
            )
        adapter_dir, model = str(found[0]), str(found[1].get("base_model") or settings.model)
    confusion = None
    if targets == "confusion":
        if not confusion_run:
            raise ValueError(
                "target sampling 'confusion' needs a finished training run (its confusion "
                "matrix): train a baseline on the Train page and choose it here"
            )
        run = jobs_ui.open_run("train", confusion_run, owner=owner, settings=settings)
        if not (run / "confusion.json").is_file():
            raise ValueError(f"training run {confusion_run!r} has no confusion matrix yet")
        confusion = str(run / "confusion.json")
    fields = {
        "dataset": sub["spec"],
        "shots": sub["shots"],
        "imbalance": sub["imbalance"],
        "subset_seed": sub["seed"],
        "strategy": st.name,
        "model": model,
        "adapter": adapter_dir,
        "multiplier": whole_number(multiplier, "multiplier", 1, minimum=1),
        "strengths": parse_strengths(strengths),
        "targets": targets or "uniform",
        "confusion": confusion,
        "filter_bottom": float(filter_bottom or 0.0),
        "limit": whole_number(limit, "limit", None, minimum=0) or None,
        "num_inference_steps": whole_number(
            steps, "steps", DEFAULTS["num_inference_steps"], minimum=1
        ),
        "seed": whole_number(seed, "seed", DEFAULTS["seed"]),
        "score": bool(score),
    }
    if guidance not in (None, ""):
        fields["guidance_scale"] = float(guidance)
    template = (prompt_template or "").strip()
    if template:
        check_prompt(template, settings, what="prompt template")
        fields["prompt_template"] = check_prompt_template(template, require_token=False)
    return GenerateConfig(**fields).resolved()


def generate_args(config) -> list[str]:
    """``diffmix generate`` arguments of a config (the core's command line, minus the prefix).

    The dataset spec goes last, after ``--``, so that it can never be read as an option.
    """
    from diffmix.generate import command_for

    parts = shlex.split(command_for(config))
    if parts[:3] != ["diffmix", "generate", config.dataset]:
        raise ValueError(f"unexpected generate command {parts[:3]}")
    return [*parts[3:], "--", config.dataset]


def planned_images(config, selection: dict[str, Any]) -> int:
    """How many images the plan makes: multiplier × subset size, capped by ``limit``."""
    n = int(selection.get("num_images") or len(selection.get("indices") or []))
    total = config.multiplier * n
    return min(total, config.limit) if config.limit else total


def estimate(
    config,
    selection: dict[str, Any],
    probe_result: dict[str, Any] | None = None,
    *,
    pixels: int = 64 * 64,
) -> dict[str, Any]:
    """Images, seconds and bytes a plan will take.

    Seconds: :func:`diffmix.costs.generate_estimate` (this machine's measured rates for the
    plan's model, device, dtype and batch when :func:`probe` or a run measured them, else a rough
    guess; ``basis`` says which). Bytes: the PNG size :func:`probe` measured for the same model,
    or :data:`PNG_BYTES_PER_PIXEL` × ``pixels`` (of a source image), plus one metadata row each.
    """
    from diffmix import costs

    n = planned_images(config, selection)
    est = costs.generate_estimate(config, images=n)
    per_image = (est.seconds - est.rates["generate_overhead"]) / max(n, 1)
    same_model = bool(probe_result) and probe_result.get("model") == config.model
    if same_model and probe_result.get("bytes_per_image"):
        per_bytes = float(probe_result["bytes_per_image"])
    else:
        per_bytes = pixels * PNG_BYTES_PER_PIXEL
    return {
        "images": n,
        "seconds": est.seconds,
        "seconds_per_image": per_image,
        "bytes": int(n * (per_bytes + ROW_BYTES)),
        "basis": est.rates.basis,
        "measured": est.rates.measured,
    }


def estimate_markdown(est: dict[str, Any], config=None) -> str:
    """The estimate as one line (and the command that will run)."""
    mb = est["bytes"] / 2**20
    size = f"{mb:.1f} MB" if mb < 1024 else f"{mb / 1024:.2f} GB"
    text = (
        f"**{est['images']} images** · about **{jobs_ui.format_eta(est['seconds']) or '0 s'}** "
        f"({est['seconds_per_image']:.2f} s/image, {est['basis']}) · about **{size}** on disk."
    )
    if not est.get("measured", True):
        text += " Press **Measure speed** for an estimate measured on this machine."
    if config is not None:
        text += f"\n\n`{' '.join(['diffmix', 'generate', *generate_args(config)])}`"
    return text


def source_pixels(selection: dict[str, Any], settings: Settings) -> int:
    """Pixels of the selection's first image (its size stands for the dataset's)."""
    ds, subset = common.open_selection(selection, settings)
    first = subset.indices[0] if subset is not None and len(subset) else 0
    w, h = ds.image(first).size
    return w * h


def probe(config, selection: dict[str, Any], *, settings: Settings) -> dict[str, Any]:
    """Measure this machine's generation rates for the plan (:func:`diffmix.costs.
    calibrate_generate`: a few UNet steps at the plan's batch, stored for every later estimate)
    and the PNG size of one translated image."""
    from diffmix import costs

    costs.calibrate_generate(config.model, batch=config.batch_size, device=config.device,
                             dtype=config.dtype)  # fmt: skip
    ds, subset = common.open_selection(selection, settings)
    indices = list(subset.indices) if subset is not None else list(range(len(ds)))
    first = indices[0]
    src_class = ds.class_names[ds.items[first].label]
    st_target = "same" if config.strategy.endswith("-aug") else "other"
    target = src_class if st_target == "same" else other_class(ds.class_names, src_class)
    mean_s = sum(config.strengths) / len(config.strengths)
    partner = None
    if config.strategy in ("mixup", "cutmix"):
        pool = [i for i in indices if ds.class_names[ds.items[i].label] == target]
        partner = ds.image(pool[0]) if pool else ds.image(first)
    gen = config.strategy.endswith("-gen")
    req = Request(
        ds, None if gen else ds.image(first), None if gen else src_class, target,
        [1.0 if gen else mean_s], 0, config.strategy, config.model, config.adapter,
        config.num_inference_steps, partner,
    )  # fmt: skip
    preview = run_translation(req)
    buf = io.BytesIO()
    preview.results[0].image.save(buf, format="PNG")
    return {"model": config.model, "bytes_per_image": len(buf.getvalue())}


def settings_from_config(config: dict[str, Any]) -> list[Any]:
    """The plan widgets' values (:data:`RESTORED_PARAMS` order) of a run's ``config.json``: a
    reload of the page shows the watched run's settings, not the defaults."""
    strengths = config.get("strengths") or []
    return [
        config.get("strategy"),
        config.get("multiplier"),
        ", ".join(f"{float(s):g}" for s in strengths),
        config.get("targets") or "uniform",
        float(config.get("filter_bottom") or 0.0),
        config.get("limit"),
        config.get("num_inference_steps"),
        config.get("seed"),
        bool(config.get("score", True)),
    ]


#: The widgets :func:`settings_from_config` fills, in its order.
RESTORED_PARAMS = ("strategy", "multiplier", "strengths", "targets", "filter_bottom", "limit",
                   "steps", "seed", "score")  # fmt: skip


def newest_images(run_dir: Path | None, n: int = 12) -> list[tuple[Image.Image, str]]:
    """The newest ``n`` images of a generation folder, newest first, captioned."""
    if run_dir is None:
        return []
    out = []
    for row in tail_rows(run_dir / "metadata.jsonl", n):
        try:
            img = display(open_rgb(run_dir / str(row["file_name"])), 128)
        except (OSError, KeyError, ValueError):  # ValueError: ImageDecodeError
            continue
        cap = f"{row.get('source_class')} → {row.get('target_class')} · s={row.get('strength')}"
        if isinstance(row.get("faithfulness"), (int, float)):
            cap += f" · f={row['faithfulness']:.2f}"
        out.append((img, cap))
    return out


def done_summary(run_dir: Path | None) -> str:
    """What a finished generation made (images, kept), from its status; empty otherwise."""
    if run_dir is None:
        return ""
    st = jobs_ui.run_state(run_dir)
    if st.get("state") != "done":
        return ""
    return (
        f"Finished: {st.get('images', '?')} images, {st.get('kept', '?')} kept. Browse them on "
        "the **Inspect** page, or train with them on the **Train** page."
    )


# --------------------------------------------------------------------------- callbacks


#: The plan's widget values, in the order the listeners (and the API) take them after ``owner``.
PLAN_PARAMS = ("selection", "adapter", "strategy", "multiplier", "strengths", "targets",
               "confusion_run", "filter_bottom", "limit", "steps", "seed", "score", "guidance",
               "prompt_template")  # fmt: skip


def _config_from(settings: Settings, owner: str | None, values: Sequence[Any]):
    """The checked config of the plan widgets' ``values`` (in :data:`PLAN_PARAMS` order)."""
    plan = dict(zip(PLAN_PARAMS, values, strict=True))
    selection, adapter = plan.pop("selection"), plan.pop("adapter")
    return generate_config(selection, adapter, **plan, settings=settings, owner=owner)


def _build_args(settings: Settings):
    def build(owner: str | None, *values: Any) -> tuple[list[str], str]:
        reason = unavailable_reason()
        if reason:
            raise ValueError(f"generation is not available: {reason}")
        cfg = _config_from(settings, owner, values)
        return generate_args(cfg), f"{cfg.strategy}"

    return jobs_ui.with_params(build, ["owner", *PLAN_PARAMS])


def _estimate_action(settings: Settings):
    def generate_estimate(probe: dict | None, owner: str | None, *values: Any) -> str:
        """Images, time and disk the plan will take (and its command line)."""
        try:
            cfg = _config_from(settings, owner, values)
            px = source_pixels(values[0], settings)
            shown = None if settings.public else cfg  # no server paths on public deployments
            return estimate_markdown(estimate(cfg, values[0], probe, pixels=px), shown)
        except (*jobs_ui.USER_ERRORS, ImportError) as err:
            return common.error_box(jobs_ui.readable_error(err), settings)

    return jobs_ui.with_params(generate_estimate, ["probe", "owner", *PLAN_PARAMS])


def _probe_action(settings: Settings):
    def generate_probe(owner: str | None, *values: Any) -> tuple[Any, str]:
        """Measure this machine's speed for the plan, then estimate the plan with it."""
        try:
            cfg = _config_from(settings, owner, values)
            result = probe(cfg, values[0], settings=settings)
            px = source_pixels(values[0], settings)
            shown = None if settings.public else cfg
            return result, estimate_markdown(estimate(cfg, values[0], result, pixels=px), shown)
        except (*jobs_ui.USER_ERRORS, ImportError, RuntimeError) as err:
            return gr.skip(), common.error_box(jobs_ui.readable_error(err), settings)

    return jobs_ui.with_params(generate_probe, ["owner", *PLAN_PARAMS])


def _view(path: Path | None, owner: str | None) -> list[Any]:
    del owner
    return [newest_images(path), done_summary(path)]


def _previewed_pair(plan: dict[str, Any]) -> str:
    """``source #3 (corbane) → doravik`` (or ``an upload → doravik``) of a sent plan."""
    src = plan.get("source_index")
    where = (
        f"source #{int(src)} ({plan.get('source_class')})" if src not in (None, "") else "an upload"
    )
    return f"{where} → {plan.get('target_class')}"


def _template_note(template: str) -> str:
    """What a prompt template does per target class (``{token}`` or not)."""
    if not template:
        return "the strategy's own prompt, with each target class's token or name"
    if "{token}" in template:
        return f"prompt template “{template}”: each target class's token goes into {{token}}"
    return (
        f"prompt “{template}” names no class ({{token}} missing): every image gets this same "
        "prompt, whatever its target class"
    )


def sent_plan_line(plan: dict[str, Any]) -> str:
    """What a plan sent from Translate set here, in one line (and what Generate does with the
    source / target choice: it translates every selected image, toward drawn target classes)."""
    prompt = f", prompt “{plan['prompt']}”" if plan.get("prompt") else ""
    return (
        f"**From Translate:** {plan.get('strategy')}, strength {plan.get('strengths')}, guidance "
        f"{plan.get('guidance')}{prompt}; you previewed {_previewed_pair(plan)}. Generate fills "
        "in the settings, not the pair: it translates every selected image (see the plan box "
        "above Estimate)."
    )


def sent_plan_box(
    plan: dict[str, Any] | None,
    selection: dict[str, Any] | None,
    *,
    strategy: str | None,
    strengths: str | None,
    guidance: float | None,
    template: str | None,
    targets: str | None,
    multiplier: Any = None,
    limit: Any = None,
) -> str:
    """The plan box's note on a plan sent from Translate: what of it this batch applies, what
    it does not (the previewed source / target pair was one example), and which sent settings
    were changed here since. Empty without a sent plan.

    ``strategy``, ``strengths``, ``guidance``, ``template``, ``targets``, ``multiplier`` and
    ``limit`` are the page's current values (the strength as typed, e.g. ``"0.5"``; guidance
    >= 0; template may be ""; multiplier >= 1; limit None / 0 = every image).
    """
    if not isinstance(plan, dict) or plan.get("from") != "translate":
        return ""
    from diffmix.strategies import get_strategy

    now = {"strategy": strategy or "", "strength": str(strengths or "").strip(),
           "guidance": "" if guidance in (None, "") else f"{float(guidance):g}",
           "prompt template": (template or "").strip()}  # fmt: skip
    sent = {"strategy": str(plan.get("strategy") or ""),
            "strength": str(plan.get("strengths") or ""),
            "guidance": "" if plan.get("guidance") in (None, "") else f"{float(plan['guidance']):g}",
            "prompt template": str(plan.get("prompt_template") or "")}  # fmt: skip
    changed = [f"{k} {sent[k] or '(empty)'} → {now[k] or '(empty)'}"
               for k in sent if sent[k] != now[k]]  # fmt: skip
    applied = [f"{k} {now[k]}" for k in ("strategy", "strength", "guidance") if sent[k] == now[k]]
    if sent["prompt template"] == now["prompt template"]:
        applied.append(_template_note(now["prompt template"]))
    try:
        st = get_strategy(strategy or "")
        same = st.target == "same"
    except ValueError:
        same = False
    n = (selection or {}).get("num_images")
    every = f"every selected image ({n})" if n else "every selected image"
    try:
        first = int(limit) if limit not in (None, "") else 0
    except (TypeError, ValueError):
        first = 0
    if first and (not n or first < n):
        every = f"the first {first} selected images (the limit)"
    try:
        times = (
            f"{int(multiplier)} time(s)" if multiplier not in (None, "") else "`multiplier` times"
        )
    except (TypeError, ValueError):
        times = "`multiplier` times"
    toward = (
        f"keeping its own class ({strategy} translates within the class)"
        if same
        else f"toward target classes drawn by the **{targets or 'uniform'}** rule"
    )
    lines = [
        "**Sent from Translate** — applied to this batch: "
        + ("; ".join(applied) if applied else "nothing (all changed here)")
        + ".",
        f"Not applied: the pair you previewed, {_previewed_pair(plan)}. It was one example; "
        f"the batch translates {every} {times} each, {toward}.",
    ]
    if changed:
        lines.append("Changed here since it was sent: " + "; ".join(changed) + ".")
    return "\n\n".join(lines)


def plan_updates(plan: dict[str, Any] | None, adapter: dict[str, Any] | None) -> list[Any]:
    """Updates of strategy, strengths, guidance and prompt template for a plan sent from
    Translate (:func:`pages.translate.generate_plan`); without one, the strategy's default and
    the other fields unchanged."""
    if not isinstance(plan, dict) or plan.get("from") != "translate":
        return [gr.update(value=default_strategy(adapter)), gr.update(), gr.update(),
                gr.update()]  # fmt: skip
    return [gr.update(value=plan.get("strategy") or default_strategy(adapter)),
            gr.update(value=str(plan.get("strengths") or "0.7")),
            gr.update(value=float(plan.get("guidance") or DEFAULTS["guidance_scale"])),
            gr.update(value=plan.get("prompt_template") or "")]  # fmt: skip


def _keep_sent(open_fn):
    """``open_fn`` (:func:`_on_open`'s callback) plus the sent plan itself as one more output:
    the plan box keeps it after the browser's copy is cleared (used once)."""

    def on_open(owner: str | None, selection: dict | None, adapter: dict | None,
                sent: dict | None = None) -> list[Any]:  # fmt: skip
        kept = sent if isinstance(sent, dict) and sent.get("from") == "translate" else None
        return [*open_fn(owner, selection, adapter, sent), kept]

    return on_open


def _sent_box_action(
    plan: dict | None,
    selection: dict | None,
    strategy: str | None,
    strengths: str | None,
    guidance: float | None,
    template: str | None,
    targets: str | None,
    multiplier: Any = None,
    limit: Any = None,
) -> str:
    """The plan box's note on a sent plan, for the page's current values (thin callback)."""
    return sent_plan_box(plan, selection, strategy=strategy, strengths=strengths,
                         guidance=guidance, template=template, targets=targets,
                         multiplier=multiplier, limit=limit)  # fmt: skip


def _on_open(settings: Settings):
    def on_open(
        owner: str | None,
        selection: dict | None,
        adapter: dict | None,
        sent: dict | None = None,
    ) -> list[Any]:
        """Runs with a confusion matrix, the carried adapter, and a plan sent from Translate
        (used once: the stored plan is cleared)."""
        runs = jobs_ui.list_runs("train", owner=owner, settings=settings)
        with_conf = [r["name"] for r in runs if (Path(r["path"]) / "confusion.json").is_file()]
        adapter = carry_adapter(adapter, selection, owner=owner, settings=settings)
        line = selection_line(selection) + " " + adapter_line(adapter)
        reason = unavailable_reason()
        if reason:
            line += "\n\n" + common.error_box(f"Generation is not available: {reason}.", settings)
        strategy, strengths, guidance, template = plan_updates(sent, adapter)
        if isinstance(sent, dict) and sent.get("from") == "translate":
            line += "\n\n" + sent_plan_line(sent)
        return [line, strategy, gr.update(choices=with_conf), strengths, guidance, template,
                None, adapter]  # fmt: skip

    return on_open


def _recipe_action(name: str | None) -> tuple[Any, Any, str]:
    """The recipe menu: fill the multiplier and the strength (no recipe: leave them)."""
    fields, text = common.recipe_values(name, "generate")
    if not fields:
        return gr.update(), gr.update(), ""
    strengths = ", ".join(f"{s:g}" for s in fields["strengths"])
    return gr.update(value=fields["multiplier"]), gr.update(value=strengths), text


#: The settings a preset holds, in widget order (:data:`diffmix.presets.PRESET_FIELDS`).
PRESET_WIDGETS = ("strategy", "multiplier", "strengths", "targets", "filter_bottom", "limit",
                  "num_inference_steps", "seed", "score")  # fmt: skip


def preset_fields(strategy: str | None, multiplier: Any, strengths: Any, targets: str | None,
                  filter_bottom: Any, limit: Any, steps: Any, seed: Any,
                  score: bool) -> dict[str, Any]:  # fmt: skip
    """The page's settings as GenerateConfig fields (a blank limit kept as null)."""
    fields: dict[str, Any] = {
        "strategy": strategy or None,
        "multiplier": whole_number(multiplier, "multiplier", default=None, minimum=1),
        "strengths": parse_strengths(strengths),
        "targets": targets or None,
        "filter_bottom": float(filter_bottom or 0.0),
        "num_inference_steps": whole_number(steps, "steps", default=None, minimum=1),
        "seed": whole_number(seed, "seed", default=None),
        "score": bool(score),
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    fields["limit"] = whole_number(limit, "limit", default=None, minimum=0) or None
    return fields


def preset_updates(fields: dict[str, Any]) -> list[Any]:
    """One update per preset widget (:data:`PRESET_WIDGETS`) for a loaded preset."""
    out = []
    for key in PRESET_WIDGETS:
        if key not in fields:
            out.append(gr.skip())
        elif key == "strengths":
            out.append(gr.update(value=", ".join(f"{s:g}" for s in fields[key])))
        else:
            out.append(gr.update(value=fields[key]))
    return out


def _targets_visibility(rule: str) -> Any:
    return gr.update(visible=rule == "confusion")


# --------------------------------------------------------------------------- layout


def build(settings: Settings | None = None) -> gr.Blocks:
    """The Generate page as a standalone ``gr.Blocks``."""
    settings = settings or common.get_settings()
    with common.page_blocks(TITLE) as page:
        selection = common.selection_state()
        adapter = common.adapter_state()
        owner = common.owner_state()
        # A hidden JSON value, not gr.State: any gr.State makes Gradio hold a heartbeat
        # connection open on every page of the app.
        probe_state = gr.JSON(None, visible=False)
        sent = common.plan_state()
        # the plan sent from Translate, kept for the plan box once ``sent`` is cleared
        previewed = gr.JSON(None, visible=False)
        gr.Markdown(
            "## 4 · Generate\nMake a synthetic dataset: every selected training image is "
            "translated `multiplier` times toward other classes. The job runs in the "
            "background and writes an image folder with one metadata row per image."
        )
        current = gr.Markdown(selection_line(None), elem_id="gen-selection")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                preset = presets_ui.preset_panel(STAGE, "gen")
                strategy = gr.Dropdown(strategy_names(), value="real-mix",
                                       label="Strategy", elem_id="gen-strategy")  # fmt: skip
                recipe = gr.Dropdown(common.recipe_choices(), value=common.NO_RECIPE,
                                     label="Recipe (the authors' settings)", elem_id="gen-recipe",
                                     info="fills the multiplier and the strength")  # fmt: skip
                recipe_note = gr.Markdown(elem_id="gen-recipe-note")
                with gr.Row():
                    multiplier = gr.Number(DEFAULTS["multiplier"], label="Multiplier (images per source)",
                                           precision=0, minimum=1, elem_id="gen-multiplier")  # fmt: skip
                    strengths = gr.Textbox(
                        "0.7", label="Strength(s)", max_lines=1, elem_id="gen-strengths",
                        info="one value = fixed; several (0.3, 0.5, 0.7) = drawn per image",
                    )  # fmt: skip
                targets = gr.Radio(list(TARGET_RULES), value="uniform", label="Target classes",
                                   elem_id="gen-targets",
                                   info="uniform (other classes) · tail: favour rare classes · confusion: "
                                        "classes a trained classifier confuses")  # fmt: skip
                confusion_run = gr.Dropdown([], allow_custom_value=True, label="Training run (its confusion matrix)",
                                            visible=False, elem_id="gen-confusion")  # fmt: skip
                filter_bottom = gr.Slider(0, 0.5, value=DEFAULTS["filter_bottom"], step=0.05, elem_id="gen-filter",
                                          label="Drop the least faithful fraction (kept: false)")  # fmt: skip
                with gr.Accordion("More options", open=False):
                    with gr.Row():
                        limit = gr.Number(None, label="Limit (first N images; empty = all)",
                                          precision=0, minimum=0, elem_id="gen-limit")  # fmt: skip
                        steps = gr.Number(DEFAULTS["num_inference_steps"], label="Denoising steps", precision=0, minimum=1,
                                          elem_id="gen-steps")  # fmt: skip
                    with gr.Row():
                        seed = gr.Number(DEFAULTS["seed"], label="Seed", precision=0, minimum=0,
                                         elem_id="gen-seed")  # fmt: skip
                        score = gr.Checkbox(True, label="Score images (faithfulness, diversity)",
                                            elem_id="gen-score")  # fmt: skip
                    with gr.Row():
                        guidance = gr.Number(DEFAULTS["guidance_scale"], minimum=0, maximum=50,
                                             label="Guidance scale (7.5: the authors')",
                                             elem_id="gen-guidance")  # fmt: skip
                        prompt_template = gr.Textbox(
                            "", label="Prompt template (empty: the strategy's own)", max_lines=2,
                            info="{token} = each target class's token (or name); {superclass}",
                            elem_id="gen-prompt-template",
                        )  # fmt: skip
                sent_box = gr.Markdown(elem_id="gen-sent")
                with gr.Row():
                    est_btn = gr.Button("Estimate", elem_id="gen-estimate-btn")
                    probe_btn = gr.Button("Measure speed", elem_id="gen-probe")
                est = gr.Markdown(elem_id="gen-estimate")
                panel = jobs_ui.job_panel(STAGE, "gen", start_label="Start generation",
                                          name_placeholder="<strategy>-<date>-<time>")  # fmt: skip
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Newest images", columns=6, height=420,
                                     object_fit="contain", elem_id="gen-gallery")  # fmt: skip
                summary = gr.Markdown(elem_id="gen-summary")
        common.next_step(
            "train", "Train",
            "train a classifier on the real images plus this synthetic set (the Train page "
            "starts with the newest finished set made from this dataset).",
        )  # fmt: skip

        plan = [selection, adapter, strategy, multiplier, strengths, targets, confusion_run,
                filter_bottom, limit, steps, seed, score, guidance, prompt_template]  # fmt: skip
        jobs_ui.wire(
            panel, page=page, settings=settings, owner=owner, build_args=_build_args(settings),
            start_inputs=plan, view=_view, view_outputs=[gallery, summary],
            on_open=_keep_sent(_on_open(settings)), open_inputs=[selection, adapter, sent],
            open_outputs=[current, strategy, confusion_run, strengths, guidance, prompt_template,
                          sent, adapter, previewed],
            restore=settings_from_config,
            restore_outputs=[strategy, multiplier, strengths, targets, filter_bottom, limit,
                             steps, seed, score],
        )  # fmt: skip
        targets.change(_targets_visibility, targets, confusion_run, queue=False,
                       api_visibility="private")  # fmt: skip
        recipe.change(_recipe_action, recipe, [multiplier, strengths, recipe_note], queue=False,
                      api_visibility="private")  # fmt: skip
        box_inputs = [previewed, selection, strategy, strengths, guidance, prompt_template,
                      targets, multiplier, limit]  # fmt: skip
        for widget in (previewed, strategy, strengths, guidance, prompt_template, targets,
                       multiplier, limit):  # fmt: skip
            widget.change(_sent_box_action, box_inputs, sent_box, queue=False,
                          show_progress="hidden", api_visibility="private")  # fmt: skip
        estimate_fn = _estimate_action(settings)
        est_btn.click(estimate_fn, [probe_state, owner, *plan], est, api_name="generate_estimate")
        page.load(estimate_fn, [probe_state, owner, *plan], est, api_visibility="private")
        for widget in (
            strategy,
            multiplier,
            strengths,
            targets,
            limit,
            steps,
            guidance,
            prompt_template,
        ):
            widget.change(estimate_fn, [probe_state, owner, *plan], est, show_progress="hidden",
                          api_visibility="private")  # fmt: skip
        presets_ui.wire_presets(
            preset, page=page, settings=settings, owner=owner,
            widgets=[strategy, multiplier, strengths, targets, filter_bottom, limit, steps, seed,
                     score],
            to_fields=preset_fields, from_fields=preset_updates,
        )  # fmt: skip
        probe_btn.click(_probe_action(settings), [owner, *plan], [probe_state, est],
                        api_name="generate_probe", concurrency_limit=1,
                        concurrency_id="translate")  # fmt: skip
    return page


if __name__ == "__main__":
    common.run(build, description=f"{common.APP_TITLE} · {TITLE} page")
