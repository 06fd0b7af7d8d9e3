"""The job panel of the Personalize, Generate and Train pages: names, owners, cancel, resume.

Moved unchanged from tests/test_app_pages.py (split per page). Jobs are not run here (the browser
tests run them end to end); a job's run directory is written by hand where a test needs one.
The fixtures ``private``, ``public``, ``fewshot`` and ``untrained_judge`` are in pageutil.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from pageutil import _fake_run, _name  # tests/ is on sys.path under pytest

from diffmix.settings import Settings
from pages import jobs_ui


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
