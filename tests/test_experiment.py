"""Experiments end to end on a tiny SD: table schema, one subset per seed, resume, cancel, CLI."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from datautil import write_color_folder  # tests/ is on sys.path under pytest

from diffmix import experiment as ex
from diffmix.cli import main
from diffmix.runs import Cancelled, RunDir

ARMS = ["baseline", "mixup", "real-mix", "diff-mix"]
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def colors(tmp_path_factory) -> Path:
    """Three colour classes x 6 images of 24 px (a train/test split is held out per class)."""
    root = tmp_path_factory.mktemp("exp-colors") / "colors"
    return write_color_folder(root, per_class=6)


def _fields(colors: Path, tiny_sd_dir: Path, **kw) -> dict:
    base = dict(
        dataset=str(colors), shots=2, seeds=SEEDS, arms=ARMS, model=str(tiny_sd_dir),
        personalize_steps=2, personalize_batch_size=2, rank=4, multiplier=1,
        num_inference_steps=2, generate_batch_size=8, strength=0.9, p=0.5, epochs=1,
        batch_size=4, arch="smallcnn", resolution=32, num_threads=1, train_repeats=1,
        generate_overrides={"score": False}, train_overrides={"tensorboard": False},
    )  # fmt: skip
    return {**base, **kw}


@pytest.fixture(scope="module")
def finished(colors, tiny_sd_dir, tmp_path_factory):
    """One whole experiment (2 seeds x 4 arms) and what it returned."""
    out = tmp_path_factory.mktemp("exp") / "exp"
    cfg = ex.make_config(**_fields(colors, tiny_sd_dir))
    results = ex.run_experiment(cfg, out)
    return out, cfg, results


def _stage_files(out: Path) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file the stages wrote."""
    return {
        str(p.relative_to(out)): (p.stat().st_mtime_ns, p.stat().st_size)
        for sub in ("adapters", "synthetic", "runs")
        for p in (out / sub).rglob("*")
        if p.is_file()
    }


# --------------------------------------------------------------------------- pure parts


def test_mean_std_and_table():
    assert ex.mean_std([0.5]) == (0.5, 0.0)
    mean, std = ex.mean_std([0.2, 0.4])
    assert mean == pytest.approx(0.3) and std == pytest.approx(0.1414213562)  # ddof = 1
    with pytest.raises(ValueError):
        ex.mean_std([])
    runs = {"baseline": [{"seed": 0, "test_accuracy": 0.5}, {"seed": 1, "test_accuracy": 0.7}],
            "diff-mix": [{"seed": 0, "test_accuracy": 0.8}], "mixup": []}  # fmt: skip
    arms = ex.summarize_arms(runs)
    assert list(arms) == ["baseline", "diff-mix"]  # no finished run: left out
    text = ex.format_table({"arms": arms, "shots": 5, "dataset": "demo", "seeds": [0, 1]})
    assert "| baseline | 60.00 ± 14.14 | - |" in text
    assert "| diff-mix | 80.00 ± 0.00 | +20.00 | +30.00 (1/1) |" in text  # paired on seed 0
    assert "| baseline | 60.00 ± 14.14 | - | - |" in text


def test_per_seed_averages_the_training_repeats():
    records = [{"seed": 0, "test_accuracy": 0.5, "mean_class_accuracy": 0.4, "run": "a"},
               {"seed": 1, "test_accuracy": 0.9, "mean_class_accuracy": None, "run": "c"},
               {"seed": 0, "test_accuracy": 0.7, "mean_class_accuracy": 0.6, "run": "b"}]  # fmt: skip
    rs = ex.per_seed(records)
    assert [r["seed"] for r in rs] == [0, 1]
    assert rs[0]["test_accuracy"] == pytest.approx(0.6) and rs[0]["repeats"] == [0.5, 0.7]
    assert rs[0]["mean_class_accuracy"] == pytest.approx(0.5) and rs[0]["runs_dirs"] == ["a", "b"]
    assert rs[1]["mean_class_accuracy"] is None and rs[1]["run"] == "c"
    arms = ex.summarize_arms({"baseline": records})
    assert arms["baseline"]["n"] == 2  # seeds, not runs
    assert arms["baseline"]["mean"] == pytest.approx(0.75)


def test_paired_delta_uses_only_shared_seeds():
    base = [{"seed": 0, "test_accuracy": 0.5}, {"seed": 1, "test_accuracy": 0.7},
            {"seed": 2, "test_accuracy": 0.6}]  # fmt: skip
    arm = [{"seed": 0, "test_accuracy": 0.6}, {"seed": 1, "test_accuracy": 0.6},
           {"seed": 3, "test_accuracy": 0.9}]  # fmt: skip
    mean, std, wins, n = ex.paired_delta(base, arm)
    assert (wins, n) == (1, 2)  # seed 3 has no baseline run
    assert mean == pytest.approx(0.0) and std == pytest.approx(0.1414213562)
    assert ex.paired_delta(base, [{"seed": 9, "test_accuracy": 1.0}]) is None
    assert ex.paired_delta(base, arm[:1])[1] is None  # one seed: no spread


def test_default_plan_shares_the_subset_and_fits_the_budget(tmp_path, monkeypatch):
    # an empty calibration store: the plan's estimate uses the cost model's stated rough rates,
    # not a measurement some earlier test made on a machine that may be busy
    from diffmix import costs

    monkeypatch.setattr(costs, "_store_path", lambda: tmp_path / "costs" / "calibration.json")
    cfg = ex.make_config()
    # the authors' 5-shot recipe (run.sh): s = 0.7, γ = 0.5, p = 0.3, 5 shots, multiplier 5
    assert (cfg.strength, cfg.gamma, cfg.p, cfg.shots, cfg.seeds) == (0.7, 0.5, 0.3, 5, [0, 1, 2])
    assert cfg.multiplier == 5
    assert cfg.train_repeats == 3
    stages = ex.plan_stages(cfg, tmp_path)
    # per seed: one adapter, a synthetic set per generative arm, three runs per arm
    assert len(stages) == 3 * (1 + 3 + 6 * 3)
    train = [s for s in stages if s.kind == "train"]
    assert {(s.seed, s.arm, s.repeat, s.config.seed) for s in train} == {
        (seed, arm, k, seed + 1000 * k) for seed in cfg.seeds for arm in ex.ARMS for k in range(3)
    }
    assert len({s.out for s in train}) == len(train)  # one folder per run
    assert [s.out.name for s in train[:3]] == ["baseline-seed0", "baseline-seed0-run2",
                                               "baseline-seed0-run3"]  # fmt: skip
    for seed in cfg.seeds:
        mine = [s for s in stages if s.seed == seed]
        subset_seeds = {s.config.seed for s in mine if s.kind == "personalize"}
        subset_seeds |= {s.config.subset_seed for s in mine if s.kind in ("generate", "train")}
        assert subset_seeds == {seed}
        assert {s.config.shots for s in mine} == {5}
        adapter = [s.out for s in mine if s.kind == "personalize"]
        assert adapter == [tmp_path.resolve() / "adapters" / f"seed{seed}"]
        for s in mine:
            if s.kind == "generate":
                assert s.config.strategy == s.arm and s.config.strengths == [0.7]
                assert s.config.adapter == (str(adapter[0]) if s.arm != "real-mix" else None)
            if s.kind == "train":
                syn = s.arm in ex.GENERATIVE_ARMS
                assert s.config.synthetic == ([str(tmp_path.resolve() / "synthetic" /
                                                  f"{s.arm}-seed{seed}")] if syn else [])  # fmt: skip
                assert s.config.p == (0.3 if syn else 0.0)
                assert s.config.mix == {"mixup": "mixup", "cutmix": "cutmix"}.get(s.arm, "none")
                assert s.config.mix_prob == 0.5  # the authors' --mixup_probability
    total_min = sum(s.estimate_s for s in stages) / 60
    assert 5 < total_min <= 45, total_min


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"arms": ["baseline", "diff-mixx"]}, "diff-mixx"),
        ({"arms": []}, "arms is empty"),
        ({"seeds": []}, "seeds is empty"),
        ({"seeds": [0, 0]}, "distinct"),
        ({"strength": 1.5}, "strength"),
        ({"train_overrides": {"p": 0.9}}, "train_overrides may not set ['p']"),
        ({"train_overrides": {"no_such_key": 1}}, "no_such_key"),
        ({"arch": "no-such-net"}, "no-such-net"),
    ],
)
def test_bad_config_is_one_clear_error(fields, needle):
    with pytest.raises(ValueError) as e:
        ex.make_config(**fields)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--arms", "baseline,foo"], "foo"),
        (["--seeds", ""], "seeds is empty"),
        (["--seeds", "0,x"], "--seeds takes comma-separated integers"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, needle):
    code = main(["experiment", "fewshot", "--out", str(tmp_path / "e"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and needle in err[-1]
    assert not (tmp_path / "e").exists()


def test_refuses_a_folder_holding_other_things(colors, tiny_sd_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    cfg = ex.make_config(**_fields(colors, tiny_sd_dir, arms=["baseline"], seeds=[0]))
    with pytest.raises(ValueError, match="holds no experiment"):
        ex.run_experiment(cfg, tmp_path)


# --------------------------------------------------------------------------- end to end


def test_results_schema_and_files(finished):
    out, cfg, results = finished
    assert list(results["arms"]) == ARMS
    for arm, a in results["arms"].items():
        assert set(a) == {"mean", "std", "n", "runs"} and a["n"] == len(SEEDS)
        assert [r["seed"] for r in a["runs"]] == SEEDS
        accs = [r["test_accuracy"] for r in a["runs"]]
        assert all(0.0 <= x <= 1.0 for x in accs)
        assert a["mean"] == pytest.approx(float(np.mean(accs)))
        assert a["std"] == pytest.approx(float(np.std(accs, ddof=1)))
        for r in a["runs"]:
            metrics = json.loads((Path(r["run"]) / "metrics.json").read_text())
            assert metrics["test_accuracy"] == r["test_accuracy"]  # final epoch, as train says
            assert r["synthetic_images"] == (6 if arm in ex.GENERATIVE_ARMS else 0)  # 3 x 2 x 1
    assert results["complete"] is True
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    table = (out / "results.md").read_text()
    assert all(f"| {arm} |" in table for arm in ARMS)
    record = json.loads((out / "experiment.json").read_text())
    assert record["config"] == json.loads(cfg.model_dump_json())
    assert len(record["stages"]) == len(SEEDS) * (1 + 2 + 4)
    # layout
    for seed in SEEDS:
        assert (out / "adapters" / f"seed{seed}" / "adapter.json").is_file()
        for arm in ARMS:
            assert (out / "runs" / f"{arm}-seed{seed}" / "metrics.json").is_file()
            assert (out / "synthetic" / f"{arm}-seed{seed}").is_dir() == (arm in ex.GENERATIVE_ARMS)
    # the run directory: done, every stage started and finished once, in order
    run = RunDir(out)
    assert run.status()["state"] == "done" and run.status()["progress"] == 1.0
    started = [e["stage"] for e in run.events("stage_start")]
    assert started == [s["name"] for s in record["stages"]]
    assert [e["stage"] for e in run.events("stage_done")] == started
    assert started[:2] == ["train baseline seed 0", "train mixup seed 0"]
    assert started[2:5] == ["generate real-mix seed 0", "train real-mix seed 0",
                            "personalize seed 0"]  # fmt: skip
    assert (out / "log.txt").read_text().count("[1/14] train baseline seed 0") >= 1


def test_every_arm_of_a_seed_used_the_same_real_subset(finished):
    out, _, results = finished
    by_seed = {}
    for seed in SEEDS:
        adapter = json.loads((out / "adapters" / f"seed{seed}" / "adapter.json").read_text())
        recorded = [adapter["subset"]["indices"]]
        for arm in ("real-mix", "diff-mix"):
            conf = json.loads((out / "synthetic" / f"{arm}-seed{seed}" / "config.json").read_text())
            recorded.append(conf["subset"]["indices"])
            # every synthetic image was translated from one of the subset's real images
            rows = [json.loads(line) for line in
                    (out / "synthetic" / f"{arm}-seed{seed}" / "metadata.jsonl").read_text().splitlines()]  # fmt: skip
            assert {r["source_index"] for r in rows} == set(conf["subset"]["indices"])
        for arm in ARMS:
            sub = json.loads((out / "runs" / f"{arm}-seed{seed}" / "subset.json").read_text())
            recorded.append(sub["indices"])
        assert all(r == recorded[0] for r in recorded), recorded
        assert len(recorded[0]) == 3 * 2
        assert results["subsets"][str(seed)]["indices"] == recorded[0]
        assert len(results["subsets"][str(seed)]["checked"]) == 1 + 2 + 4
        by_seed[seed] = recorded[0]
    assert by_seed[0] != by_seed[1]  # the seeds draw different subsets


def test_rerun_skips_finished_work(finished, caplog):
    out, cfg, results = finished
    before = _stage_files(out)
    n_events = len(RunDir(out).events())
    again = ex.run_experiment(cfg, out, resume=True)
    assert _stage_files(out) == before  # no stage file rewritten
    new = RunDir(out).events()[n_events:]
    kinds = [e["kind"] for e in new]
    assert "stage_start" not in kinds and kinds.count("stage_skip") == len(SEEDS) * 7
    assert {a: r["mean"] for a, r in again["arms"].items()} == {
        a: r["mean"] for a, r in results["arms"].items()
    }


def test_rerun_with_other_settings_is_refused(finished, colors, tiny_sd_dir):
    out, _, _ = finished
    cfg = ex.make_config(**_fields(colors, tiny_sd_dir, epochs=2))
    with pytest.raises(ValueError, match="epochs: 1 -> 2"):
        ex.run_experiment(cfg, out)


def test_cli_json_on_a_finished_experiment(finished, colors, tiny_sd_dir, capsys):
    out, _, results = finished
    f = _fields(colors, tiny_sd_dir)
    argv = ["experiment", "fewshot", "--out", str(out), "--dataset", f["dataset"],
            "--model", f["model"], "--shots", "2", "--seeds", "0,1", "--arms", ",".join(ARMS),
            "--personalize-steps", "2", "--steps", "2", "--multiplier", "1", "--strength", "0.9",
            "--p", "0.5", "--epochs", "1", "--batch-size", "4", "--arch", "smallcnn",
            "--resolution", "32", "--threads", "1", "--train-repeats", "1", "--json"]  # fmt: skip
    cfg_file = out.parent / "exp.yaml"
    cfg_file.write_text(
        "personalize_batch_size: 2\nrank: 4\ngenerate_batch_size: 8\n"
        "generate_overrides: {score: false}\ntrain_overrides: {tensorboard: false}\n"
    )
    assert main([*argv, "--config", str(cfg_file)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("estimated time: ~0 min for 0 stage(s); 14 already finished")
    last = json.loads(lines[-1])
    assert list(last["arms"]) == ARMS
    for arm, a in last["arms"].items():
        assert a["mean"] == pytest.approx(results["arms"][arm]["mean"])
        assert {"mean", "std", "runs"} <= set(a)
    assert any(line.startswith("| diff-mix |") for line in lines)
    # --dry-run lists the stages and runs nothing
    assert main([*argv, "--config", str(cfg_file), "--dry-run", "--seeds", "0,1,2"]) == 0
    dry = capsys.readouterr().out
    assert "personalize seed 2" in dry and "14 already finished" in dry
    assert not (out / "adapters" / "seed2").exists()


def test_adding_an_arm_runs_only_that_arm(finished, colors, tiny_sd_dir):
    out, _, _ = finished
    n_events = len(RunDir(out).events())
    cfg = ex.make_config(**_fields(colors, tiny_sd_dir, arms=[*ARMS, "cutmix"]))
    results = ex.run_experiment(cfg, out)
    started = [e["stage"] for e in RunDir(out).events("stage_start")[0:]]
    new = [e["stage"] for e in RunDir(out).events()[n_events:] if e["kind"] == "stage_start"]
    assert new == ["train cutmix seed 0", "train cutmix seed 1"]
    assert "cutmix" in results["arms"] and len(started) == 16
    sub = json.loads((out / "runs" / "cutmix-seed1" / "subset.json").read_text())
    assert sub["indices"] == results["subsets"]["1"]["indices"]


def test_training_repeats_are_averaged_and_added_on_a_rerun(colors, tiny_sd_dir, tmp_path):
    out = tmp_path / "exp"
    one = ex.run_experiment(ex.make_config(**_fields(colors, tiny_sd_dir, arms=["baseline"],
                                                     seeds=[0], epochs=2)), out)  # fmt: skip
    cfg = ex.make_config(**_fields(colors, tiny_sd_dir, arms=["baseline"], seeds=[0], epochs=2,
                                   train_repeats=2))  # fmt: skip
    two = ex.run_experiment(cfg, out)  # the first run is reused, the second one added
    started = [e["stage"] for e in RunDir(out).events("stage_start")]
    assert started == ["train baseline seed 0", "train baseline seed 0 run 2"]
    first = json.loads((out / "runs" / "baseline-seed0" / "metrics.json").read_text())
    second = json.loads((out / "runs" / "baseline-seed0-run2" / "metrics.json").read_text())
    assert json.loads((out / "runs" / "baseline-seed0-run2" / "config.json").read_text())[
        "seed"] == 1000  # fmt: skip
    run = two["arms"]["baseline"]["runs"][0]
    assert run["repeats"] == [first["test_accuracy"], second["test_accuracy"]]
    assert run["test_accuracy"] == pytest.approx(
        (first["test_accuracy"] + second["test_accuracy"]) / 2
    )
    assert one["arms"]["baseline"]["runs"][0]["test_accuracy"] == first["test_accuracy"]
    assert two["train_repeats"] == 2 and "mean of 2 classifier runs" in ex.format_table(two)


def test_cancel_is_forwarded_to_the_running_stage_then_resumed(
    colors, tiny_sd_dir, tmp_path, monkeypatch
):
    from diffmix.experiment import run as ex_run  # where the watcher reads its interval

    monkeypatch.setattr(ex_run, "_WATCH_INTERVAL_S", 0.02)
    out = tmp_path / "exp"
    cfg = ex.make_config(**_fields(colors, tiny_sd_dir, arms=["baseline"], seeds=[0], epochs=40))
    stage_dir = out / "runs" / "baseline-seed0"

    def stage_status() -> dict:  # read without creating the folder (RunDir would)
        try:
            return json.loads((stage_dir / "status.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def cancel_once_training(stage, what):
        if what == "start":  # the stage starts right after: cancel while it is running

            def later():
                for _ in range(500):
                    if (stage_status().get("step") or 0) > 0:
                        break
                    threading.Event().wait(0.01)
                RunDir(out).request_cancel()

            threading.Thread(target=later, daemon=True).start()

    with pytest.raises(Cancelled):
        ex.run_experiment(cfg, out, callback=cancel_once_training)
    assert RunDir(out).status()["state"] == "cancelled"
    assert stage_status()["state"] == "cancelled"  # the stage itself stopped, not the loop
    assert not (out / "runs" / "baseline-seed0" / "metrics.json").exists()
    results = ex.run_experiment(cfg, out)  # a rerun clears the cancel and resumes the stage
    assert results["arms"]["baseline"]["n"] == 1
    assert RunDir(stage_dir).events("resume")  # continued from its checkpoint, not restarted
    assert RunDir(out).status()["state"] == "done"
