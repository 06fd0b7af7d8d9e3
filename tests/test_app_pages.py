"""Pages 2-6 without a browser: the plain functions behind each page and their listeners.

Jobs are not run here (the browser tests run them end to end); a job's run directory is
written by hand where a test needs one. Translation runs for real on the tiny SD; the
reference classifier is replaced by an untrained one where only the page's plumbing is tested.
"""

from __future__ import annotations

import json
import shlex
import sys
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from PIL import Image

import app
from diffmix import jobs
from diffmix.settings import Settings
from pages import common, dataset, generate, inspect, jobs_ui, personalize, train, translate

DEMO_CLASSES = 12


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def private(workspace_home: Path, tiny_sd_dir: Path) -> Settings:
    return Settings.from_env(
        {"DIFFMIX_HOME": str(workspace_home), "DIFFMIX_MODEL": str(tiny_sd_dir)}
    )


@pytest.fixture
def public(workspace_home: Path, tiny_sd_dir: Path) -> Settings:
    env = {
        "DIFFMIX_HOME": str(workspace_home),
        "DIFFMIX_MODEL": str(tiny_sd_dir),
        "SPACE_ID": "a/b",
    }
    return Settings.from_env(env)


@pytest.fixture(scope="module")
def fewshot() -> dict[str, Any]:
    """The Dataset page's selection for the demo, 5-shot, seed 0."""
    return dataset.load_selection("demo", subset="few-shot", shots=5, seed=0).selection


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _fake_run(stage: str, name: str, *, owner: str | None, state: str = "done",
              argv: list[str] | None = None, pid: int = 999_999, **status: Any) -> Path:  # fmt: skip
    """A run folder as a job leaves it: job.json (dead pid) and status.json."""
    path = jobs_ui.stage_root(stage) / name
    path.mkdir(parents=True)
    argv = argv or [sys.executable, "-m", "diffmix", stage, "demo", "--out", str(path)]
    job = {"stage": stage, "run_dir": str(path), "pid": pid, "owner": owner, "argv": argv,
           "created": 1_700_000_000.0}  # fmt: skip
    (path / jobs.JOB_FILE).write_text(json.dumps(job))
    (path / "status.json").write_text(json.dumps({"state": state, **status}))
    return path


@pytest.fixture
def untrained_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    """An untrained reference classifier instead of the one fitted in minutes per dataset."""
    import torch

    from diffmix import score
    from diffmix.refclf import SmallCNN

    def fake(ds, **_kw):
        torch.manual_seed(0)
        return score.ReferenceClassifier(SmallCNN(ds.num_classes).eval(), list(ds.class_names), 32, ds.fingerprint)  # fmt: skip

    monkeypatch.setattr(score, "reference_classifier", fake)


# --------------------------------------------------------------------------- jobs_ui


def test_run_names_are_checked() -> None:
    assert jobs_ui.check_name(" my-run_1.b ") == "my-run_1.b"
    for bad in ("", "../x", "a/b", "-x", ".hidden", "a..b", "x" * 81):
        with pytest.raises(ValueError, match="not allowed"):
            jobs_ui.check_name(bad)
    auto = jobs_ui.run_name("", "adapter")
    assert auto.startswith("adapter-") and len(auto) == len("adapter-YYYYmmdd-HHMMSS")
    assert jobs_ui.run_name("mine", "adapter") == "mine"


def test_resume_args_keep_the_command_without_out() -> None:
    argv = [sys.executable, "-m", "diffmix", "train", "demo", "--epochs", "2", "--resume",
            "--out", "/w/runs/x"]  # fmt: skip
    assert jobs_ui.resume_args(argv, "train") == ["demo", "--epochs", "2", "--resume"]
    with pytest.raises(ValueError, match="not a diffmix generate command"):
        jobs_ui.resume_args(argv, "generate")
    # positional values stay after "--" (and --resume stays an option)
    argv = [sys.executable, "-m", "diffmix", "train", "--epochs", "2", "--out", "/w/runs/x",
            "--", "demo"]  # fmt: skip
    assert jobs_ui.resume_args(argv, "train") == ["--epochs", "2", "--resume", "--", "demo"]


def test_status_line_progress_bar_and_errors() -> None:
    st = {"state": "running", "step": 30, "total": 100, "loss": 0.1234, "eta_s": 150,
          "message": "training <b>"}  # fmt: skip
    text = jobs_ui.status_text(st, "r1")
    assert text.startswith("`r1` · **running** · step 30/100 · loss (EMA) 0.1234")
    assert "ETA 2 min" in text and "&lt;b&gt;" in text
    assert "epoch 2/5" in jobs_ui.status_text({"state": "done", "epoch": 2, "epochs": 5})
    bar = jobs_ui.progress_html(0.3, "running")
    assert 'data-state="running"' in bar and 'data-progress="0.3000"' in bar and "30%" in bar
    assert jobs_ui.format_eta(3 * 3600 + 5 * 60) == "3 h 05 min"
    assert jobs_ui.format_eta(None) == ""
    from diffmix.personalize import PersonalizeConfig

    with pytest.raises(ValueError) as err:
        PersonalizeConfig(rank=0)
    assert jobs_ui.readable_error(err.value).startswith("rank: ")


def test_owners_see_only_their_runs_on_public_deployments(
    private: Settings, public: Settings
) -> None:
    mine, theirs = _name("mine"), _name("theirs")
    _fake_run("train", mine, owner="A" * 20)
    _fake_run("train", theirs, owner="B" * 20)
    names = {r["name"] for r in jobs_ui.list_runs("train", owner="A" * 20, settings=public)}
    assert mine in names and theirs not in names
    every = {r["name"] for r in jobs_ui.list_runs("train", owner=None, settings=private)}
    assert {mine, theirs} <= every
    with pytest.raises(PermissionError, match="another session"):
        jobs_ui.open_run("train", theirs, owner="A" * 20, settings=public)
    assert jobs_ui.open_run("train", theirs, owner="A" * 20, settings=private).name == theirs
    with pytest.raises(ValueError, match="no train run named"):
        jobs_ui.open_run("train", _name("missing"), owner=None, settings=private)
    # without a token a public session sees nothing, not even runs made with the CLI
    cli_made = _name("cli")
    _fake_run("train", cli_made, owner=None)
    assert jobs_ui.list_runs("train", owner=None, settings=public) == []
    with pytest.raises(PermissionError):
        jobs_ui.open_run("train", cli_made, owner=None, settings=public)
    assert cli_made in {r["name"] for r in jobs_ui.list_runs("train", owner=None, settings=private)}


def test_cancel_and_resume_rules(private: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    done = _name("done")
    _fake_run("train", done, owner="o" * 20)
    with pytest.raises(ValueError, match="not running"):
        jobs_ui.cancel_run("train", done, owner=None, settings=private)
    with pytest.raises(ValueError, match="has finished"):
        jobs_ui.resume_run("train", done, owner=None, settings=private)
    # a run whose process died mid-way is 'failed' and resumes with its own arguments
    crashed = _name("crashed")
    path = _fake_run("train", crashed, owner="o" * 20, state="running",
                     argv=[sys.executable, "-m", "diffmix", "train", "demo", "--epochs", "3",
                           "--out", "x"])  # fmt: skip
    assert jobs_ui.job_view(path).state == "failed" and jobs_ui.job_view(path).can_resume
    started: list[tuple] = []
    monkeypatch.setattr(jobs_ui.jobs, "start_job", lambda *a, **k: started.append((a, k)))
    jobs_ui.resume_run("train", crashed, owner=None, settings=private)
    (stage, args, run_dir), kw = started[0]
    assert stage == "train" and args == ["demo", "--epochs", "3", "--resume"]
    assert Path(run_dir) == path and kw == {"owner": "o" * 20, "settings": private}
    # marked queued, so the page polls until the new process reports
    assert json.loads((path / "status.json").read_text())["state"] == "queued"


def test_start_refuses_an_existing_run_name(private: Settings) -> None:
    name = _name("taken")
    _fake_run("personalize", name, owner=None)
    with pytest.raises(ValueError, match="already exists"):
        jobs_ui.start_run("personalize", ["demo"], name, owner=None)
    assert jobs_ui.job_view(None).state == "idle"


# --------------------------------------------------------------------------- personalize


def test_personalize_args_follow_the_selection(
    fewshot: dict, private: Settings, tiny_sd_dir: Path
) -> None:
    args = personalize.personalize_args(
        fewshot, model=None, steps=20, rank=4, lr=None, seed=0, sample_every=10,
        batch_size=2, settings=private,
    )  # fmt: skip
    assert args[-2:] == ["--", "demo"]  # the spec after "--": never read as an option
    pairs = dict(zip(args[0::2], args[1::2], strict=False))
    assert pairs["--model"] == str(tiny_sd_dir) and pairs["--shots"] == "5"
    assert pairs["--steps"] == "20" and pairs["--rank"] == "4" and pairs["--seed"] == "0"
    assert pairs["--sample-every"] == "10" and pairs["--batch-size"] == "2"
    assert "--lr" not in args  # the model's default
    # the CLI accepts exactly these arguments
    from diffmix import cli

    ns = cli.build_parser().parse_args(["personalize", "--out", "x", *args])
    assert (ns.spec, ns.shots, ns.steps, ns.rank, ns.sample_every) == ("demo", 5, 20, 4, 10)


def test_personalize_args_errors(fewshot: dict, private: Settings) -> None:
    kw = dict(model=None, steps=10, rank=4, lr=None, sample_every=0, settings=private)
    with pytest.raises(ValueError, match="would draw another few-shot subset"):
        personalize.personalize_args(fewshot, seed=3, **kw)
    with pytest.raises(ValueError, match="no dataset selected"):
        personalize.personalize_args(None, seed=0, **kw)
    with pytest.raises(ValueError, match="test split"):
        personalize.personalize_args({**fewshot, "split": "test"}, seed=0, **kw)
    with pytest.raises(ValueError, match="steps must be a whole number >= 1"):
        personalize.personalize_args(fewshot, seed=0, **{**kw, "steps": 0})


def test_model_choice_respects_the_deployment(
    private: Settings, public: Settings, tmp_path: Path
) -> None:
    assert personalize.check_model("", public) == public.model
    with pytest.raises(ValueError, match="DIFFMIX_ALLOW_LOCAL_PATHS=1"):
        personalize.check_model(str(tmp_path), public)
    no_hub = Settings.from_env({"DIFFMIX_HOME": str(tmp_path), "DIFFMIX_ALLOW_HUB": "0"})
    with pytest.raises(ValueError, match="DIFFMIX_ALLOW_HUB=1"):
        personalize.check_model("owner/model", no_hub)
    assert personalize.check_model("owner/model", public) == "owner/model"
    with pytest.raises(ValueError, match="does not exist"):
        personalize.check_model(str(tmp_path / "missing"), private)
    with pytest.raises(ValueError, match="not a diffusers pipeline folder"):
        personalize.check_model(str(tmp_path), private)


def test_loss_figure_and_latest_sample(tmp_path: Path) -> None:
    events = [{"kind": "progress", "step": s, "loss": 1.0 / s} for s in (10, 20, 30)]
    fig = personalize.loss_figure(events)
    assert list(fig.data[0].x) == [10, 20, 30] and fig.data[0].y[-1] == pytest.approx(1 / 30)
    assert personalize.loss_figure([]).layout.annotations[0].text == "no progress yet"
    assert personalize.latest_sample(tmp_path) == (None, None)
    (tmp_path / "samples").mkdir()
    for step in (10, 200, 30):
        Image.new("RGB", (8, 8)).save(tmp_path / "samples" / f"step-{step:06d}.png")
    (tmp_path / "samples" / "other.png").write_bytes(b"")
    path, step = personalize.latest_sample(tmp_path)
    assert step == 200 and path.name == "step-000200.png"
    strip = Image.new("RGB", (12 * 8, 8))
    strip.paste((255, 0, 0), (11 * 8, 0, 12 * 8, 8))  # the last cell
    grid = personalize.regrid(strip)
    assert grid.size == (6 * 8, 2 * 8) and grid.getpixel((5 * 8 + 1, 8 + 1)) == (255, 0, 0)
    assert personalize.regrid(Image.new("RGB", (40, 8))).size == (40, 8)


def _fake_adapter(name: str, owner: str | None, *, ti_only: bool = False) -> Path:
    path = _fake_run("personalize", name, owner=owner, step=20, total=20)
    meta = {"base_model": "nano", "class_tokens": {f"c{i}": f"<class_{i}>" for i in range(3)},
            "ti_only": ti_only, "final_loss": 0.125, "dataset": {"spec": "demo", "fingerprint": "f"},
            "config": {"dataset": "demo", "shots": 5, "steps": 20, "model": "nano"}}  # fmt: skip
    (path / "adapter.json").write_text(json.dumps(meta))
    return path


def test_adapters_are_listed_chosen_and_resolved(private: Settings, public: Settings) -> None:
    owner = "o" * 24
    done, busy = _name("ad"), _name("busy")
    _fake_adapter(done, owner)
    _fake_run("personalize", busy, owner=owner, state="queued")
    runs = jobs_ui.list_runs("personalize", owner=owner, settings=public)
    table = personalize.adapter_rows(runs)
    row = table[table["name"] == done].iloc[0]
    assert row["state"] == "done" and row["steps"] == "20/20" and row["final loss (EMA)"] == "0.1250"
    assert row["dataset"] == "demo (5-shot)"
    assert done in personalize.adapter_choices(runs) and busy not in personalize.adapter_choices(
        runs
    )
    state = personalize.choose_adapter(done, owner=owner, settings=public)
    assert state == {"name": done, "base_model": "nano", "ti_only": False, "classes": 3,
                     "dataset": "demo", "fingerprint": "f"}  # fmt: skip
    assert done in personalize.adapter_line(state)
    path, meta = personalize.resolve_adapter(state, owner=owner, settings=public)
    assert path.name == done and meta["final_loss"] == 0.125
    with pytest.raises(PermissionError):
        personalize.resolve_adapter(state, owner="x" * 24, settings=public)
    with pytest.raises(ValueError, match="not allowed"):
        personalize.resolve_adapter({"name": "../../etc"}, owner=owner, settings=private)
    with pytest.raises(ValueError, match="has no adapter yet"):
        personalize.choose_adapter(busy, owner=owner, settings=public)
    assert personalize.resolve_adapter(None, owner=owner, settings=public) is None


# --------------------------------------------------------------------------- translate


def test_source_gallery_and_defaults(fewshot: dict, private: Settings) -> None:
    ds, sub = common.open_selection(fewshot, private)
    thumbs, chosen = translate.source_gallery(ds, sub.indices, per_class=2)
    assert len(thumbs) == len(chosen) == 2 * DEMO_CLASSES
    assert set(chosen) <= set(sub.indices)
    assert thumbs[0][1] == f"#{chosen[0]} {ds.class_names[ds.items[chosen[0]].label]}"
    names = ["a", "b", "c"]
    assert translate.other_class(names, "c") == "a" and translate.other_class(names, None) == "a"
    assert translate.default_strategy(None) == "real-mix"
    assert translate.default_strategy({"name": "x"}) == "diff-mix"
    assert translate.default_strategy({"name": "x", "ti_only": True}) == "ti-mix"
    assert translate.display(Image.new("RGB", (64, 32))).size == (512, 256)
    assert translate.display(Image.new("RGB", (300, 300))).size == (300, 300)


def _request(fewshot: dict, settings: Settings, **kw: Any) -> translate.Request:
    ds, _ = common.open_selection(fewshot, settings)
    base = dict(source_mode="Dataset image", source_index=fewshot["indices"][0], upload=None,
                source_class=None, target_class=ds.class_names[3], strengths=[0.5],
                strategy="real-mix", seed=0, steps=8, settings=settings)  # fmt: skip
    return translate.build_request(fewshot, None, **{**base, **kw})


def test_sweep_is_one_call_with_scores(
    fewshot: dict, private: Settings, untrained_judge: None
) -> None:
    req = _request(fewshot, private, strengths=translate.SWEEP_STRENGTHS)
    assert req.source_class != req.target_class and req.model == private.model
    preview = translate.run_translation(req)
    assert [r.strength for r in preview.results] == list(translate.SWEEP_STRENGTHS)
    assert all(r.image.size == req.source.size for r in preview.results)
    assert [r.steps_run for r in preview.results] == [int(8 * s) for s in translate.SWEEP_STRENGTHS]
    lab = preview.results[-1].soft_label
    assert set(lab) == {req.source_class, req.target_class}
    assert sum(lab.values()) == pytest.approx(1.0)
    assert lab[req.target_class] == pytest.approx(0.9**0.5)
    assert "Scoring" in translate.scores_markdown(preview)
    translate.score_translation(preview)
    assert len(preview.faithfulness) == len(preview.diversity) == 5
    assert all(0 <= x <= 1 for x in preview.faithfulness + preview.diversity)
    assert "Faithfulness" in translate.scores_markdown(preview, 2)
    assert "5 image(s)" in translate.timing_line(preview) and "0–7 of 8" in translate.timing_line(
        preview
    )
    fig = translate.sweep_figure(
        req.strengths, preview.faithfulness, preview.diversity, chance=1 / 12
    )
    assert [t.name for t in fig.data] == ["faithfulness", "diversity"]
    assert list(fig.data[0].x) == list(translate.SWEEP_STRENGTHS)


def test_translate_requests_are_checked(fewshot: dict, private: Settings, tmp_path: Path) -> None:
    ds, _ = common.open_selection(fewshot, private)
    rgb, rgba = tmp_path / "rgb.png", tmp_path / "rgba.png"  # uploads arrive as file paths
    Image.new("RGB", (20, 30)).save(rgb)
    Image.new("RGBA", (20, 30)).save(rgba)
    with pytest.raises(ValueError, match="needs an adapter"):
        _request(fewshot, private, strategy="diff-mix")
    with pytest.raises(ValueError, match="choose a target class"):
        _request(fewshot, private, target_class="not-a-class")
    with pytest.raises(ValueError, match="pick a source image"):
        _request(fewshot, private, source_index=None)
    with pytest.raises(ValueError, match="upload a source image"):
        _request(fewshot, private, source_mode="Upload")
    with pytest.raises(ValueError, match="class of the uploaded image"):
        _request(fewshot, private, source_mode="Upload", upload=str(rgb))
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        _request(fewshot, private, strengths=[1.5])
    up = _request(fewshot, private, source_mode="Upload", upload=str(rgba),
                  source_class=ds.class_names[0])  # fmt: skip
    assert up.source.mode == "RGB" and up.source_class == ds.class_names[0]
    gen = _request(fewshot, private, strategy="real-gen", strengths=[0.3, 0.5])
    assert gen.source is None and gen.strengths == [1.0]
    mix = _request(fewshot, private, strategy="mixup", strengths=[0.4])
    assert mix.partner is not None
    out = translate.run_translation(mix)  # no model involved
    assert out.results[0].soft_label[mix.target_class] == pytest.approx(0.4)


def test_translate_listener_reports_errors_as_messages(fewshot: dict, private: Settings) -> None:
    listener = translate._translate_action(private)
    ds, _ = common.open_selection(fewshot, private)
    outs = list(listener(fewshot, None, None, "Dataset image", fewshot["indices"][0], None, None,
                         ds.class_names[0], "diff-mix", 0, 8, 0.5))  # fmt: skip
    assert len(outs) == 1 and "dm-error" in outs[0][3] and "Traceback" not in outs[0][3]
    assert "Personalize page" in outs[0][3]


# --------------------------------------------------------------------------- generate


def test_parse_strengths() -> None:
    assert generate.parse_strengths("0.7") == [0.7]
    assert generate.parse_strengths(" 0.3, 0.5;0.9 ") == [0.3, 0.5, 0.9]
    assert generate.parse_strengths("") is None and generate.parse_strengths(None) is None
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        generate.parse_strengths("0.5, 1.2")
    with pytest.raises(ValueError, match="separated by commas"):
        generate.parse_strengths("half")


def test_generate_plan_becomes_the_cli_command(fewshot: dict, private: Settings) -> None:
    owner = "g" * 24
    adapter = _fake_adapter(_name("gad"), owner)
    cfg = generate.generate_config(
        fewshot, {"name": adapter.name}, strategy=None, multiplier=2, strengths="0.5, 0.9",
        filter_bottom=0.1, limit=7, steps=5, seed=3, settings=private, owner=owner,
    )  # fmt: skip
    assert cfg.strategy == "diff-mix" and cfg.adapter == str(adapter) and cfg.model == "nano"
    args = generate.generate_args(cfg)
    from diffmix import cli

    ns = cli.build_parser().parse_args(["generate", "--out", "x", *args])
    assert (ns.spec, ns.strategy, ns.adapter, ns.multiplier) == (
        "demo",
        "diff-mix",
        str(adapter),
        2,
    )
    assert ns.strengths == [0.5, 0.9] and ns.limit == 7 and ns.num_inference_steps == 5
    assert (ns.shots, ns.filter_bottom, ns.seed) == (5, 0.1, 3)
    assert ns.subset_seed in (None, 0)  # the selection's seed (0 is the CLI default)
    # without an adapter the default strategy uses the base model
    base = generate.generate_config(fewshot, None, strategy=None, multiplier=1, strengths="0.7",
                                    settings=private)  # fmt: skip
    assert base.strategy == "real-mix" and base.model == private.model and base.adapter is None
    assert "--strength 0.7" in shlex.join(generate.generate_args(base))


def test_generate_plan_errors(fewshot: dict, private: Settings) -> None:
    kw = dict(multiplier=1, strengths="0.7", settings=private)
    with pytest.raises(ValueError, match="needs an adapter"):
        generate.generate_config(fewshot, None, strategy="diff-mix", **kw)
    with pytest.raises(ValueError, match="needs a finished training run"):
        generate.generate_config(fewshot, None, strategy="real-mix", targets="confusion", **kw)
    with pytest.raises(ValueError, match="multiplier must be a whole number >= 1"):
        generate.generate_config(fewshot, None, strategy="real-mix", **{**kw, "multiplier": 0})
    run = _fake_run("train", _name("conf"), owner=None)
    with pytest.raises(ValueError, match="no confusion matrix yet"):
        generate.generate_config(fewshot, None, strategy="real-mix", targets="confusion",
                                 confusion_run=run.name, **kw)  # fmt: skip
    (run / "confusion.json").write_text("{}")
    cfg = generate.generate_config(fewshot, None, strategy="real-mix", targets="confusion",
                                   confusion_run=run.name, **kw)  # fmt: skip
    assert cfg.confusion == str(run / "confusion.json")


def test_estimate_uses_the_probe_when_it_matches(fewshot: dict, private: Settings, tmp_path,
                                                 monkeypatch) -> None:
    from diffmix import costs

    monkeypatch.setattr(costs, "_store_path", lambda: tmp_path / "calibration.json")  # unmeasured
    cfg = generate.generate_config(fewshot, None, strategy="real-mix", multiplier=3,
                                   strengths="0.5", steps=20, settings=private)  # fmt: skip
    n = 3 * 60
    guess = generate.estimate(cfg, fewshot, None, pixels=64 * 64)
    assert guess["images"] == n and "rough guess" in guess["basis"]
    assert guess["bytes"] == n * (64 * 64 * generate.PNG_BYTES_PER_PIXEL + generate.ROW_BYTES)
    probe = {"model": cfg.model, "bytes_per_image": 1000}
    est = generate.estimate(cfg, fewshot, probe)
    assert est["bytes"] == n * (1000 + generate.ROW_BYTES)
    limited = generate.generate_config(fewshot, None, strategy="real-mix", multiplier=3,
                                       strengths="0.5", limit=10, settings=private)  # fmt: skip
    assert generate.estimate(limited, fewshot)["images"] == 10
    text = generate.estimate_markdown(est, cfg)
    assert "**180 images**" in text and "diffmix generate --model" in text and "-- demo" in text


def test_probe_times_one_image(fewshot: dict, private: Settings) -> None:
    cfg = generate.generate_config(fewshot, None, strategy="real-mix", multiplier=1,
                                   strengths="0.5", steps=6, settings=private)  # fmt: skip
    result = generate.probe(cfg, fewshot, settings=private)
    assert result["bytes_per_image"] > 100
    assert "measured on this machine" in generate.estimate(cfg, fewshot, result)["basis"]


def test_tail_rows_and_newest_images(tmp_path: Path) -> None:
    rows = []
    for k in range(30):
        (tmp_path / "c").mkdir(exist_ok=True)
        Image.new("RGB", (16, 16), (k, 0, 0)).save(tmp_path / "c" / f"{k:03d}.png")
        rows.append({"file_name": f"c/{k:03d}.png", "source_class": "a", "target_class": "c",
                     "strength": 0.5, "faithfulness": 0.25, "task": k})  # fmt: skip
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"torn": '
    (tmp_path / "metadata.jsonl").write_text(text)
    tail = generate.tail_rows(tmp_path / "metadata.jsonl", 5, chunk=300)
    assert [r["task"] for r in tail] == [29, 28, 27, 26, 25]
    imgs = generate.newest_images(tmp_path, 3)
    assert len(imgs) == 3 and imgs[0][1] == "a → c · s=0.5 · f=0.25"
    assert generate.newest_images(None) == [] and generate.tail_rows(tmp_path / "none") == []


# --------------------------------------------------------------------------- train


def _fake_synthetic(name: str, class_names: list[str], owner: str | None, n: int = 6) -> Path:
    """A small synthetic dataset folder in the generate format (demo sources)."""
    from diffmix.data import load_dataset

    ds = load_dataset("demo", split="train")
    path = _fake_run("generate", name, owner=owner, images=n, kept=n)
    rows = []
    for k in range(n):
        src = k * 60  # one source per class
        tgt = class_names[(ds.items[src].label + 1) % len(class_names)]
        (path / tgt).mkdir(exist_ok=True)
        ds.image(src).rotate(90).save(path / tgt / f"{k:07d}.png")
        rows.append({"file_name": f"{tgt}/{k:07d}.png", "task": k, "source_index": src,
                     "source_id": ds.items[src].id, "source_class": ds.class_names[ds.items[src].label],
                     "target_class": tgt, "strength": [0.3, 0.5, 0.9][k % 3],
                     "faithfulness": k / n, "diversity": 0.5, "kept": k != 0})  # fmt: skip
    (path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = {"format": "diffmix-synthetic/1", "dataset": "demo", "class_names": class_names,
              "dataset_fingerprint": ds.fingerprint, "strategy": "real-mix"}  # fmt: skip
    (path / "config.json").write_text(json.dumps(record))
    return path


def test_train_args_follow_the_selection(fewshot: dict, private: Settings) -> None:
    syn = _fake_synthetic(_name("syn"), fewshot["class_names"], owner=None)
    args = train.train_args(fewshot, synthetic=[syn.name], p=0.2, gamma=0.5, arch="smallcnn",
                            epochs=2, resolution=32, seed=4, threads=1, settings=private)  # fmt: skip
    from diffmix import cli

    ns = cli.build_parser().parse_args(["train", "--out", "x", *args])
    assert (ns.spec, ns.arch, ns.epochs, ns.resolution, ns.seed) == ("demo", "smallcnn", 2, 32, 4)
    assert (ns.shots, ns.subset_seed, ns.p, ns.gamma, ns.num_threads) == (5, 0, 0.2, 0.5, 1)
    assert ns.synthetic == str(syn)
    # the baseline: p has nothing to replace with and is left out
    base = train.train_args(fewshot, synthetic=[], p=0.2, arch="smallcnn", settings=private)
    assert "--p" not in base and "--synthetic" not in base
    # the page's default backbone is "auto": the train command's rule by dataset decides
    auto = train.train_args(fewshot, synthetic=[], settings=private)
    assert "--arch" not in auto and "--resolution" not in auto
    assert train.run_prefix("smallcnn", [], "none") == "smallcnn-baseline"
    assert train.run_prefix("resnet18", ["s"], "none") == "resnet18-diffmix"


def test_train_args_errors(fewshot: dict, private: Settings, public: Settings) -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet1'"):
        train.train_args(fewshot, arch="resnet1", settings=private)
    other = _fake_synthetic(_name("other"), ["x", "y"], owner=None, n=2)
    with pytest.raises(ValueError, match="made for other classes"):
        train.train_args(fewshot, synthetic=[other.name], arch="smallcnn", settings=private)
    with pytest.raises(PermissionError):
        train.train_args(fewshot, synthetic=[other.name], arch="smallcnn", settings=public,
                         owner="z" * 24)  # fmt: skip


def _record(name: str, seed: int, acc: float, **cfg: Any) -> dict[str, Any]:
    config = {"dataset": "demo", "shots": 5, "imbalance": None, "arch": "smallcnn", "epochs": 2,
              "resolution": 32, "synthetic": [], "p": 0.0, "gamma": 0.5, "mix": "none",
              "seed": seed, "subset_seed": 0, "num_threads": 1, **cfg}  # fmt: skip
    return {"name": name, "config": config,
            "metrics": {"test_accuracy": acc, "mean_class_accuracy": acc - 0.01}}  # fmt: skip


def test_comparison_groups_seeds_with_mean_and_std() -> None:
    records = [
        _record("b0", 0, 0.50), _record("b1", 1, 0.60, num_threads=2),
        _record("d0", 0, 0.70, synthetic=["/w/synthetic/s1"], p=0.1),
        _record("d1", 1, 0.80, synthetic=["/other/path/s1"], p=0.1),
        _record("m0", 0, 0.55, mix="mixup"),
    ]  # fmt: skip
    table = train.comparison_table(records)
    assert list(table.columns) == train.COMPARE_COLUMNS
    rows = {r["setup"]: r for r in table.to_dict("records")}
    assert set(rows) == {"baseline", "synthetic (s1) p=0.1 γ=0.5", "mixup"}
    assert rows["baseline"]["test accuracy (%)"] == "55.0 ± 7.1"
    assert rows["baseline"]["seeds"] == "0, 1" and rows["baseline"]["runs"] == "b0, b1"
    assert rows["synthetic (s1) p=0.1 γ=0.5"]["test accuracy (%)"] == "75.0 ± 7.1"
    assert rows["mixup"]["test accuracy (%)"] == "55.0"
    assert table.iloc[0]["setup"].startswith("synthetic")  # best first
    lt = train.comparison_table([_record("l", 0, 0.5, shots=None, imbalance=0.1)])
    assert lt.iloc[0]["dataset"] == "demo (long-tail 0.1)"
    assert train.comparison_table([]).empty


def test_live_figures_from_a_run_folder(tmp_path: Path) -> None:
    from diffmix.runs import RunDir

    run = RunDir(tmp_path / "r")
    names = [f"c{i}" for i in range(3)]
    run.write_config({"dataset": "demo"})
    curves, per_class, conf = train.live_figures(run.path)
    assert len(curves.data[0].x) == 0 and not conf.data
    run.event(
        "epoch", epoch=1, train_loss=2.0, test_accuracy=0.3, per_class_accuracy=[0.1, 0.2, 0.6]
    )
    run.event(
        "epoch", epoch=2, train_loss=1.5, test_accuracy=0.4, per_class_accuracy=[0.2, 0.4, 0.6]
    )
    (run.path / "confusion.json").write_text(json.dumps({"class_names": names,
                                                         "matrix": [[1, 0, 0], [0, 2, 1], [0, 0, 3]]}))  # fmt: skip
    curves, per_class, conf = train.live_figures(run.path)
    assert list(curves.data[0].y) == [2.0, 1.5] and list(curves.data[1].y) == [30.0, 40.0]
    assert list(per_class.data[0].x) == names and list(per_class.data[0].y) == [20.0, 40.0, 60.0]
    assert "epoch 2" in per_class.layout.title.text
    assert conf.data[0].type == "heatmap" and list(conf.data[0].z[1]) == [0, 2, 1]
    # a test split without images of a class: its accuracy is None (was a TypeError on every
    # poll of train_status)
    run.event("epoch", epoch=3, train_loss=1.0, test_accuracy=0.5,
              per_class_accuracy=[0.5, None, 1.0])  # fmt: skip
    _, per_class, _ = train.live_figures(run.path)
    assert list(per_class.data[0].y) == [50.0, None, 100.0]


# --------------------------------------------------------------------------- inspect


def test_inspect_filters_pairs_and_exports(
    fewshot: dict, private: Settings, public: Settings
) -> None:
    owner = "i" * 24
    src = _fake_synthetic(_name("insp"), fewshot["class_names"], owner=owner)
    rows = inspect.read_rows(src)
    assert len(rows) == 6
    assert len(inspect.filter_rows(rows, strength=(0.5, 1.0))) == 4
    assert len(inspect.filter_rows(rows, faithfulness=(0.4, 1.0))) == 3
    assert len(inspect.filter_rows(rows, kept="dropped")) == 1
    first_src = rows[1]["source_class"]
    assert [r["source_class"] for r in inspect.filter_rows(rows, source_classes=[first_src])] == [
        first_src
    ]
    assert inspect.filter_rows(rows, target_classes=["nobody"]) == []
    with pytest.raises(ValueError, match="kept must be one of"):
        inspect.filter_rows(rows, kept="maybe")
    table = inspect.rows_table(rows)
    assert list(table.columns) == inspect.TABLE_COLUMNS and list(table["kept"])[:2] == ["no", "yes"]
    # each result beside its source, found through the dataset spec and source_index / id
    ds = inspect.source_dataset(inspect.read_record(src), private)
    assert (
        inspect.source_image(ds, rows[2]).tobytes() == ds.image(rows[2]["source_index"]).tobytes()
    )
    moved = {**rows[2], "source_index": 0}  # a stale index: found again by its id
    assert inspect.source_image(ds, moved).tobytes() == ds.image(rows[2]["source_index"]).tobytes()
    items = inspect.pairs(src, rows, ds, page=1, per_page=4)
    assert len(items) == 4 and items[0][0].size == (2 * 128 + 6, 128) and "dropped" in items[0][1]
    assert len(inspect.pairs(src, rows, ds, page=2, per_page=4)) == 2
    # export the strong, kept images as a new synthetic dataset in the same format
    strong = inspect.filter_rows(rows, strength=(0.5, 1.0), kept="kept")
    dest = inspect.export_rows(src, strong, _name("strong"), owner=owner, filters={"kept": "kept"})
    assert [r["task"] for r in inspect.read_rows(dest)] == [r["task"] for r in strong]
    record = inspect.read_record(dest)
    assert record["exported_from"] == src.name and record["class_names"] == fewshot["class_names"]
    from diffmix.classify import read_synthetic

    syn = read_synthetic([dest], fewshot["class_names"], 0.5)
    assert len(syn.paths) == len(strong)
    assert dest.name in inspect.synthetic_names(owner=owner, settings=public)
    assert dest.name not in inspect.synthetic_names(owner="q" * 24, settings=public)
    with pytest.raises(ValueError, match="already exists"):
        inspect.export_rows(src, strong, dest.name, owner=owner)
    with pytest.raises(ValueError, match="nothing to export"):
        inspect.export_rows(src, [], _name("empty"), owner=owner)
    # the listener: a summary line, a table and the pairs
    out = inspect._filter_action(public)(src.name, owner, [], [], 0.5, 1.0, 0.0, 1.0, "all", 1)
    assert len(out[0]) == 4 and len(out[1]) == 4 and "4 of 6 images" in out[2]
    refused = inspect._filter_action(public)(src.name, "q" * 24, [], [], 0, 1, 0, 1, "all", 1)
    assert "another session" in refused[2]


# --------------------------------------------------------------------------- app


def test_app_has_every_page_and_its_api(private: Settings) -> None:
    demo = app.create_app(private)
    assert [p[0] for p in demo.pages] == [
        "",
        "personalize",
        "translate",
        "generate",
        "train",
        "inspect",
    ]
    public_api = {
        d.api_name for d in demo.fns.values() if getattr(d, "api_visibility", "public") == "public"
    }
    for stage in ("personalize", "generate", "train"):
        assert {
            f"{stage}_{a}" for a in ("open", "start", "cancel", "resume", "status", "runs")
        } <= public_api
    assert {"use_adapter", "clear_adapter", "list_adapters", "translate", "translate_sweep",
            "translate_open", "generate_estimate", "generate_probe", "train_compare",
            "inspect_list", "inspect_open", "inspect_filter", "inspect_export"} <= public_api  # fmt: skip
    # no gr.State anywhere: it would make Gradio hold a heartbeat connection on every page
    assert not [b for b in demo.blocks.values() if type(b) is gr.State]
    for page in (personalize, translate, generate, train, inspect):
        assert isinstance(page.build(private), gr.Blocks)


def test_personalize_page_class_balanced_menu(private: Settings) -> None:
    lt = dataset.load_selection("demo", subset="long-tail", imbalance=0.1, seed=0).selection
    kw = dict(model=None, steps=2, rank=4, lr=None, seed=0, sample_every=0, settings=private)
    assert "--no-class-balanced" in personalize.personalize_args(lt, class_balanced="off", **kw)
    assert "--class-balanced" in personalize.personalize_args(lt, class_balanced="on", **kw)
    auto = personalize.personalize_args(lt, class_balanced="auto (on for long-tail)", **kw)
    assert not any("class-balanced" in a for a in auto)  # the config's default: on for long-tail
    from diffmix import cli
    from diffmix.personalize import PersonalizeConfig

    ns = cli.build_parser().parse_args(["personalize", "--out", "x", *auto])  # spec after "--"
    cfg = PersonalizeConfig(**cli._stage_fields(ns, PersonalizeConfig, "personalize"))
    assert cfg.resolved().class_balanced is True
    with pytest.raises(ValueError, match="class-balanced sampling 'sometimes'"):
        personalize.personalize_args(lt, class_balanced="sometimes", **kw)
