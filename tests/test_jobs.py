"""Background jobs: start, watch, cancel, crash detection, ownership."""

from __future__ import annotations

import os
import signal
import threading

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


# --------------------------------------------------------------------------- the launcher's checks


class _FakeProc:
    """Stands for a started job process that stays alive (nothing is spawned)."""

    def __init__(self, argv, **_kw):
        self.argv, self.pid = argv, 4_000_000 + len(_FakeProc.started)
        _FakeProc.started.append(argv)

    def poll(self):
        return None

    def wait(self, timeout=None):  # the launcher's reaper thread: a live job never ends here
        threading.Event().wait(timeout)

    started: list = []


@pytest.fixture
def fake_popen(monkeypatch):
    from diffmix.cli.flags import STAGE_CONFIGS, config_class

    for stage in STAGE_CONFIGS:  # the launcher types flags by the configs: import them (and
        config_class(stage)  # torch, which runs ldconfig) before Popen is faked
    _FakeProc.started = []
    monkeypatch.setattr(jobs.subprocess, "Popen", _FakeProc)
    yield _FakeProc
    for pid in list(jobs._CHILDREN):
        if pid >= 4_000_000:
            jobs._CHILDREN.pop(pid)


def _public(home, **env):
    from diffmix.settings import Settings

    return Settings.from_env({"DIFFMIX_PUBLIC": "1", "DIFFMIX_HOME": str(home), **env})


@pytest.mark.parametrize(
    ("stage", "args", "needle"),
    [
        ("personalize", ["/etc", "--steps", "2"], "server paths are not allowed"),
        ("personalize", ["--steps", "2", "--", "/etc"], "server paths are not allowed"),
        # the spec as the first argument used to become an option of the stage
        ("personalize", ["--config=/etc/x.yaml", "--steps", "2"], "--config is not accepted"),
        ("train", ["--pretrained=/etc/w.pt", "--epochs", "1"], "pretrained weights '/etc/w.pt'"),
        ("train", ["--epochs", "1", "--", "--pretrained=/etc/w.pt"], "cannot start with '-'"),
        ("train", ["--epochs", "1", "demo"], "positional values go first or after '--'"),
        ("personalize", ["demo", "--steps", "1000000000"], "steps = 1000000000 is over"),
        ("personalize", ["demo", "--rank", "100000"], "rank = 100000 is over"),
        ("personalize", ["demo", "--batch-size", "1000000"], "batch_size = 1000000 is over"),
        ("train", ["demo", "--epochs", "1000000000"], "epochs = 1000000000 is over"),
        ("train", ["demo", "--threads", "1000000"], "num_threads = 1000000 is over"),
        ("generate", ["demo", "--steps", "4000"], "num_inference_steps = 4000 is over"),
        ("generate", ["demo", "--adapter", "/tmp"], "adapter '/tmp' refused"),
        ("generate", ["demo", "--bogus"], "unrecognized arguments: --bogus"),
        ("train", ["demo", "--out", "/tmp/x"], "run_dir, not as --out"),
        ("train", ["demo:99"], "demo seeds 0 to 7"),
    ],
)
def test_public_launcher_refuses_before_spawning(tmp_path, fake_popen, stage, args, needle) -> None:
    home = tmp_path / "home"
    run = home / "runs" / "r"
    with pytest.raises(ValueError, match=needle):
        jobs.start_job(stage, args, run, owner="o" * 20, settings=_public(home))
    assert fake_popen.started == [] and not run.exists()


def test_spec_goes_into_the_request_file_and_the_cli_reads_it_as_the_dataset(tmp_path, fake_popen):
    """No user string reaches the job's command line: the settings travel in request.yaml."""
    from diffmix.classify import TrainConfig
    from diffmix.cli import build_parser, stage_fields

    home = tmp_path / "home"
    run = home / "runs" / "a"
    job = jobs.start_job("train", ["demo", "--epochs", "2"], run, settings=_public(home))
    request = run / jobs.REQUEST_FILE
    assert job.argv[3:] == ["train", "--config", str(request), "--out", str(run)]
    ns = build_parser().parse_args(job.argv[3:])
    assert (ns.spec, ns.epochs, ns.config) == (None, None, str(request))
    fields = stage_fields(ns, TrainConfig, "train")
    assert (fields["dataset"], fields["epochs"]) == ("demo", 2)


def test_live_jobs_are_capped_per_visitor_and_in_total(tmp_path, fake_popen) -> None:
    home = tmp_path / "home"
    s = _public(home, DIFFMIX_MAX_JOBS="3")
    for k in range(2):
        jobs.start_job("train", ["demo"], home / "runs" / f"a{k}", owner="A" * 20, settings=s)
    with pytest.raises(ValueError, match="you have 2 jobs running, the limit per visitor is 2"):
        jobs.start_job("train", ["demo"], home / "runs" / "a2", owner="A" * 20, settings=s)
    jobs.start_job("train", ["demo"], home / "runs" / "b0", owner="B" * 20, settings=s)
    with pytest.raises(ValueError, match="3 jobs are running on this deployment, its limit is 3"):
        jobs.start_job("train", ["demo"], home / "runs" / "c0", owner="C" * 20, settings=s)
    assert len(fake_popen.started) == 3
    # a finished job frees its place
    RunDir(home / "runs" / "a0").set_status("done")
    jobs.start_job("train", ["demo"], home / "runs" / "c0", owner="C" * 20, settings=s)


def _proc_state(pid: int) -> str | None:
    """The kernel's state letter of ``pid`` (``Z`` = zombie), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_finished_jobs_leave_no_zombie(tmp_path, workspace_home):
    """A job nobody watches is reaped when it ends (it stayed a zombie of the app before)."""
    import time

    job = jobs.start_job("personalize", ["demo", "--rank", "0"], tmp_path / "z")  # fails fast
    deadline, zombie_since = time.time() + 120, None
    while time.time() < deadline:
        state = _proc_state(job.pid)
        if state is None:
            break  # ended and reaped
        if state == "Z":
            zombie_since = zombie_since or time.time()
            assert time.time() - zombie_since < 5, f"job {job.pid} is a zombie"
        time.sleep(0.1)
    assert _proc_state(job.pid) is None, _proc_state(job.pid)
    assert job.pid not in jobs._CHILDREN
    assert jobs.job_state(tmp_path / "z")["state"] == "failed"  # still reported from the folder


def test_prune_checkpoints_keeps_the_newest(tmp_path):
    from diffmix.runs import prune_checkpoints

    paths = [tmp_path / f"step-{k:06d}.pt" for k in (2, 4, 6)]
    for p in paths:
        p.write_bytes(b"x")
    assert prune_checkpoints(paths, keep=1) == paths[:2]
    assert sorted(tmp_path.iterdir()) == [paths[2]]
    assert prune_checkpoints([paths[2]], keep=1) == []
    with pytest.raises(ValueError, match="keep must be >= 1"):
        prune_checkpoints(paths, keep=0)
