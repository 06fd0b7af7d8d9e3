"""Background jobs: start, watch, cancel, crash detection, ownership."""

from __future__ import annotations

import os
import signal

import pytest

from diffmix import jobs
from diffmix.runs import RunDir


def _args(tiny_sd_dir, steps: int) -> list[str]:
    return ["demo", "--model", str(tiny_sd_dir), "--steps", str(steps), "--shots", "1",
            "--batch-size", "2", "--checkpoint-every", "2"]  # fmt: skip


def test_job_runs_to_done_and_is_listed_for_its_owner_only(tiny_sd_dir, tmp_path, workspace_home):
    run = tmp_path / "runs" / "p1"
    job = jobs.start_job("personalize", _args(tiny_sd_dir, 2), run, owner="alice")
    st = jobs.wait(run, timeout_s=300)
    assert st["state"] == "done", (st, (run / "stdout.log").read_text()[-2000:])
    assert (run / "adapter.json").is_file()
    assert [j["run_dir"] for j in jobs.list_jobs(tmp_path / "runs", owner="alice")] == [job.run_dir]
    assert jobs.list_jobs(tmp_path / "runs", owner="bob") == []
    with pytest.raises(PermissionError):
        jobs.cancel_job(run, owner="bob")


def test_cancel_stops_at_a_checkpoint_and_bad_args_show_as_failed(
    tiny_sd_dir, tmp_path, workspace_home
):
    run = tmp_path / "p2"
    RunDir(run).request_cancel()  # a stale cancel from an earlier run is dropped at start
    jobs.start_job("personalize", _args(tiny_sd_dir, 5000), run, owner=None)
    RunDir(run).request_cancel()  # asked right after start, even before the job runs: honoured
    st = jobs.wait(run, timeout_s=300)
    assert st["state"] == "cancelled", st
    bad = tmp_path / "bad"
    jobs.start_job("personalize", ["demo", "--rank", "0"], bad)
    st = jobs.wait(bad, timeout_s=120)
    assert st["state"] == "failed" and st["crashed"] and "rank" in st["message"]
    assert st["message"].startswith(f"process {st['pid']} ended without a final status")
    with pytest.raises(ValueError, match="unknown stage"):
        jobs.start_job("nope", [], tmp_path / "x")


def test_killed_job_is_reported_failed(tiny_sd_dir, tmp_path, workspace_home):
    run = tmp_path / "p3"
    job = jobs.start_job("personalize", _args(tiny_sd_dir, 100000), run)
    import time

    deadline = time.time() + 120
    while RunDir(run).status().get("state") != "running" and time.time() < deadline:
        time.sleep(0.2)
    with pytest.raises(ValueError, match="still running"):
        jobs.start_job("personalize", _args(tiny_sd_dir, 2), run)
    os.killpg(job.pid, signal.SIGKILL)
    st = jobs.wait(run, timeout_s=30)
    assert st["state"] == "failed" and st["crashed"]
    assert st["message"].startswith(f"process {job.pid} ended without a final status")


def test_generate_runs_as_a_job_in_a_fresh_folder(tiny_sd_dir, tmp_path, workspace_home):
    run = tmp_path / "g"
    args = ["demo", "--model", str(tiny_sd_dir), "--strategy", "real-mix", "--multiplier", "1",
            "--shots", "1", "--strength", "0.5", "--steps", "2", "--limit", "2", "--no-score"]  # fmt: skip
    jobs.start_job("generate", args, run)
    st = jobs.wait(run, timeout_s=300)
    assert st["state"] == "done", (st, (run / "stdout.log").read_text()[-2000:])
    assert len((run / "metadata.jsonl").read_text().splitlines()) == 2
