"""One config -> command-line path (issue 14): each stage's flags come from its config.

Every config field a stage exposes has a flag whose default is the field's (the flag leaves
it unset, --help shows it), a command line round-trips to the same config through the
parser and its inverse (:func:`diffmix.cli.flags.to_argv`), and a job's request.yaml reloads
to the config its arguments gave.
"""

from __future__ import annotations

import argparse
import threading

import pytest

from diffmix import cli, jobs
from diffmix.cli import flags

STAGES = ("personalize", "train", "generate", "experiment", "translate")

#: A non-default value for many fields of each stage: aliases (--steps, --threads), switches
#: on and off, list flags, choices.
SAMPLES = {
    "personalize": {"dataset": "demo:1", "steps": 7, "rank": 4, "lr": 0.01, "ti_only": True,
                    "class_balanced": False, "mixed_precision": "no", "superclass": "bird",
                    "shots": 2, "seed": 3},
    "train": {"dataset": "demo:2", "synthetic": ["syn-a", "syn-b"], "p": 0.3, "mix": "cutmix",
              "num_threads": 2, "balanced_sampling": True, "synthetic_label_smoothing": True,
              "epochs": 3, "tune": "head", "imbalance": 0.5},
    "generate": {"strengths": [0.5, 0.9], "score": False, "num_inference_steps": 5,
                 "strategy": "real-mix", "grouping": "order", "multiplier": 2, "limit": 4},
    "experiment": {"kind": "fewshot", "seeds": [0, 4], "arms": ["baseline", "mixup"],
                   "num_inference_steps": 4, "shots": 3, "dataset": "demo:2", "num_threads": 1,
                   "p": 0.2},
    "translate": {"strategy": "real-mix", "num_inference_steps": 3, "gamma": 0.8,
                  "device": "cpu"},
}  # fmt: skip


def _stage(stage: str) -> argparse.ArgumentParser:
    return cli.stage_parser(cli.build_parser(), stage)


def _head(stage: str) -> list[str]:
    return [stage, "fewshot"] if stage == "experiment" else [stage]


def _fields(stage: str, argv: list[str]) -> dict:
    """The config fields a command line sets (flags, --config YAML, recipe), as the CLI does."""
    ns = cli.build_parser().parse_args([*_head(stage), "--out", "x", *argv])
    cls = flags.config_class(stage)
    if stage == "translate":
        fields = cli.translate.request_fields(ns)
        return {k: v for k, v in fields.items() if k in cls.model_fields}
    extra = {"kind": ns.kind} if stage == "experiment" else cli.generate.extra_fields(ns)
    return cli.stage_fields(ns, cls, stage, extra)


def _config(stage: str, argv: list[str]):
    """The config a command line runs with."""
    return flags.config_class(stage)(**_fields(stage, argv))


@pytest.mark.parametrize("stage", STAGES)
def test_every_exposed_field_has_a_flag_with_the_field_default(stage: str) -> None:
    sp = _stage(stage)
    cls = flags.config_class(stage)
    sp.format_help()  # adds the stage's flags
    for name in flags.exposed_fields(stage):
        field = cls.model_fields[name]
        actions = [
            a for a in sp._actions if getattr(a, "config_key", a.dest) == name and a.option_strings
        ]
        assert actions, f"{stage}: no flag for config field {name}"
        for a in actions:
            # unset, the flag leaves the field to the config: its default is the field's
            assert a.default is None, (stage, name, a.default)
        default = field.get_default(call_default_factory=True)
        if default in (None, False, True, []) or isinstance(default, bool):
            continue  # unset means none / off: the help says what the flag adds
        shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
        flag = actions[0].option_strings[-1]
        formatter = sp._get_formatter()
        formatter.add_argument(actions[0])
        own = "".join(formatter.format_help().split())  # argparse wraps at any hyphen
        assert "default:" + "".join(shown.split()) in own, (stage, flag, shown, own)
    # no flag given: no field set, every field takes the config's default
    assert _fields(stage, []) == ({"kind": "fewshot"} if stage == "experiment" else {})


def test_flags_are_added_lazily_so_light_commands_import_no_config() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert not any(a.dest == "epochs" for a in sub.choices["train"]._actions)
    assert parser.parse_args(["train", "--out", "x", "--epochs", "4"]).epochs == 4


@pytest.mark.parametrize("stage", STAGES)
def test_a_command_line_round_trips_to_the_same_config(stage: str, workspace_home) -> None:
    _stage(stage)  # registers the stage's table
    sample = SAMPLES[stage]
    cfg = flags.config_class(stage)(**sample)
    argv = flags.to_argv(stage, cfg.model_dump())
    assert "--out" not in argv and "--config" not in argv
    if stage != "experiment":  # kind: a positional, given by _head
        assert _config(stage, argv) == cfg, argv
    else:
        assert _config(stage, [a for a in argv if a != "fewshot"]) == cfg, argv
    assert len(argv) <= 2 * len(sample) + 1  # defaults are left out


def test_to_argv_uses_the_cli_words() -> None:
    _stage("generate")
    _stage("train")
    assert flags.to_argv("generate", {"num_inference_steps": 5, "score": False,
                                      "strengths": [0.5, 0.9], "dataset": "demo:1"}) == [
        "--steps", "5", "--no-score", "--strengths", "0.5,0.9", "--", "demo:1"]  # fmt: skip
    assert flags.to_argv("train", {"num_threads": 2, "epochs": 30}) == ["--threads", "2"]
    with pytest.raises(ValueError, match="no flag for momentum"):
        flags.to_argv("train", {"momentum": 0.5})


class _FakeProc:
    def __init__(self, argv, **_kw):
        self.argv, self.pid = argv, 4_100_000 + len(_FakeProc.started)
        _FakeProc.started.append(argv)

    def poll(self):
        return None

    def wait(self, timeout=None):
        threading.Event().wait(timeout)

    started: list = []


@pytest.fixture
def fake_popen(monkeypatch):
    for stage in flags.STAGE_CONFIGS:  # torch's import runs ldconfig: before Popen is faked
        flags.config_class(stage)
    _FakeProc.started = []
    monkeypatch.setattr(jobs.subprocess, "Popen", _FakeProc)
    yield _FakeProc
    for pid in list(jobs._CHILDREN):
        if pid >= 4_100_000:
            jobs._CHILDREN.pop(pid)


@pytest.mark.parametrize("stage", ["personalize", "train", "generate", "experiment"])
def test_a_jobs_request_file_reloads_to_the_same_config(
    stage: str, tmp_path, fake_popen, workspace_home
) -> None:
    _stage(stage)
    sample = SAMPLES[stage]
    argv = flags.to_argv(stage, flags.config_class(stage)(**sample).model_dump())
    want = _config(stage, [a for a in argv if a != "fewshot"])
    run = tmp_path / "runs" / stage
    job = jobs.start_job(stage, argv + (["--", "fewshot"] if stage == "experiment" else []), run)
    request = run / jobs.REQUEST_FILE
    assert "--config" in job.argv and str(request) in job.argv
    # the job's own command line, with its request file, runs the same config
    assert _config(stage, job.argv[job.argv.index("--config") : job.argv.index("--out")]) == want
    # a resume (once the job has ended) reads the same file back and adds --resume only
    jobs._CHILDREN.pop(job.pid)
    again = jobs.start_job(stage, ["--resume"], run)
    assert again.argv == [*job.argv[: job.argv.index(str(run)) + 1], "--resume",
                          *job.argv[job.argv.index(str(run)) + 1 :]]  # fmt: skip
    assert flags.config_class(stage)(**jobs.read_request(stage, request)) == want


def test_a_tampered_request_file_is_refused_on_resume(tmp_path, fake_popen, workspace_home):
    run = tmp_path / "runs" / "t"
    job = jobs.start_job("train", ["demo", "--epochs", "2"], run)
    jobs._CHILDREN.pop(job.pid)  # it has ended
    request = run / jobs.REQUEST_FILE
    request.write_text(request.read_text() + "momentum: 0.5\n")  # no flag sets it
    with pytest.raises(ValueError, match="unknown train setting"):
        jobs.start_job("train", ["--resume"], run)
    request.write_text("dataset: demo\nconfig: /etc/passwd\n")
    with pytest.raises(ValueError, match="unknown train setting.*config"):
        jobs.start_job("train", ["--resume"], run)
    request.write_text("dataset: {a: 1}\n")
    with pytest.raises(ValueError, match="plain value"):
        jobs.start_job("train", ["--resume"], run)
    assert len(fake_popen.started) == 1


def test_the_request_is_checked_against_the_deployment_on_resume(tmp_path, fake_popen):
    from diffmix.settings import Settings

    home = tmp_path / "home"
    public = Settings.from_env({"DIFFMIX_PUBLIC": "1", "DIFFMIX_HOME": str(home)})
    run = home / "runs" / "r"
    job = jobs.start_job("train", ["demo", "--epochs", "2"], run, settings=public)
    jobs._CHILDREN.pop(job.pid)  # it has ended
    (run / jobs.REQUEST_FILE).write_text("dataset: /etc\n")
    with pytest.raises(ValueError, match="server paths are not allowed"):
        jobs.start_job("train", ["--resume"], run, settings=public)
    assert len(fake_popen.started) == 1
