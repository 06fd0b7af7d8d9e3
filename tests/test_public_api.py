"""A public deployment attacked through its API, as any visitor can (issue 17).

The app runs as a server in public mode (``DIFFMIX_PUBLIC=1``); two visitors call its
endpoints with ``gradio_client``, skipping the pages' widgets: job starts with a server folder,
an option smuggled in as the dataset spec, unbounded numbers, a demo seed per request, a zip
bomb under the per-member threshold, more jobs than allowed, a finished run the status poll
used to crash on. Every attack must be refused with a readable message, nothing outside the
workspace may be read or written, and the server must stay up.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import signal
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_util import AppServer, start_app  # tests/ is on sys.path under pytest
from datautil import write_color_folder

from diffmix import jobs


def _listing(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its size (to see that nothing was read into or written)."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _run_folders(home: Path) -> set[str]:
    return {
        f"{d.name}/{r.name}"
        for d in (home / "adapters", home / "synthetic", home / "runs")
        if d.is_dir()
        for r in d.iterdir()
    }


@pytest.fixture(scope="module")
def public_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("public-home")


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A server folder outside the workspace: a dataset, a YAML and weights a visitor wants."""
    root = tmp_path_factory.mktemp("outside")
    write_color_folder(root / "secret", per_class=3)
    (root / "evil.yaml").write_text(f"dataset: {root / 'secret'}\nsteps: 1000000000\n")
    (root / "weights.pt").write_bytes(b"not weights")
    return root


@pytest.fixture(scope="module")
def server(public_home: Path, tiny_sd_dir: Path) -> Iterator[AppServer]:
    env = {
        "DIFFMIX_PUBLIC": "1",
        "DIFFMIX_MODEL": str(tiny_sd_dir),
        "DIFFMIX_MAX_JOBS_PER_VISITOR": "1",
        "OMP_NUM_THREADS": "1",
    }
    srv = start_app(public_home, env=env, name="public-api")
    yield srv
    srv.stop()
    # jobs run in their own sessions: stop the ones the tests started
    for job_file in public_home.glob(f"*/*/{jobs.JOB_FILE}"):
        job = jobs.read_job(job_file.parent)
        if job is not None and jobs.is_alive(job):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(job.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def visitors(server: AppServer) -> tuple[Any, Any]:
    from gradio_client import Client

    return Client(server.url, verbose=False), Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def selection(visitors: tuple[Any, Any]) -> dict[str, Any]:
    """A legitimate Dataset-page selection (demo, 2-shot), the base of the forged ones."""
    out = visitors[0].predict(
        source="Demo", folder="", upload=None, hub="", split="train", subset="few-shot",
        shots=2, imbalance=0.1, seed=0, api_name="/load_dataset",
    )  # fmt: skip
    return out[0]


def _owner(k: int) -> str:
    return ("visitorA" if k == 0 else "visitorB") + "x" * 16


def _start(client: Any, stage: str, selection: dict, owner: str, name: str, **kw: Any) -> str:
    """Call ``/<stage>_start``; the message it shows (4th output)."""
    base: dict[str, dict[str, Any]] = {
        "personalize": dict(model=None, steps=2, rank=4, lr=None, seed=0, sample_every=0,
                            batch_size=2, ti_only=False),
        "generate": dict(adapter=None, strategy="real-mix", multiplier=1, strengths="0.5",
                         targets="uniform", confusion_run=None, filter_bottom=0, limit=2,
                         steps=2, seed=0, score=False),
        "train": dict(synthetic=[], p=0.1, gamma=0.5, arch="smallcnn", epochs=1,
                      resolution=16, batch_size=8, lr=0.05, seed=0, threads=1, mix="none",
                      balanced=False, loss="ce"),
    }  # fmt: skip
    out = client.predict(owner=owner, name=name, selection=selection,
                         **{**base[stage], **kw}, api_name=f"/{stage}_start")  # fmt: skip
    return html.unescape(str(out[3]))


STAGES = ("personalize", "generate", "train")


@pytest.mark.parametrize("stage", STAGES)
def test_job_starts_refuse_forged_selections_and_unbounded_work(
    stage: str, visitors: tuple[Any, Any], selection: dict, public_home: Path, outside: Path
) -> None:
    client = visitors[0]
    before_out, before_runs = _listing(outside), _run_folders(public_home)
    datasets_before = set(os.listdir(public_home / "datasets"))
    attacks: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        # 1. a server folder outside the workspace as the dataset
        ({"spec": str(outside / "secret")}, {}, "server paths are not allowed"),
        # 2. an option smuggled in as the spec (it used to become `--config=...` of the stage)
        ({"spec": f"--config={outside / 'evil.yaml'}"}, {}, "cannot start with '-'"),
        ({"spec": f"--pretrained={outside / 'weights.pt'}"}, {}, "cannot start with '-'"),
        # 3. a new demo dataset rendered per seed
        ({"spec": "demo:12345"}, {}, "demo seeds 0 to 7"),
    ]
    big = {
        "personalize": [({"steps": 1e9}, "steps"), ({"rank": 1e5}, "rank"),
                        ({"batch_size": 1e6}, "batch_size")],
        "generate": [({"steps": 500}, "num_inference_steps"), ({"multiplier": 1e5}, "multiplier")],
        "train": [({"epochs": 1e9}, "epochs"), ({"threads": 1e6}, "num_threads"),
                  ({"batch_size": 1e6}, "batch_size")],
    }[stage]  # fmt: skip
    attacks += [({}, kw, f"{key} = .* is over this deployment's limit") for kw, key in big]
    import re

    for k, (forged, kw, needle) in enumerate(attacks):
        msg = _start(client, stage, {**selection, **forged}, _owner(0), f"atk-{stage}-{k}", **kw)
        assert "dm-error" in msg and re.search(needle, msg), (forged, kw, msg)
    assert _listing(outside) == before_out  # nothing written there
    assert _run_folders(public_home) == before_runs  # no job was started
    assert set(os.listdir(public_home / "datasets")) == datasets_before  # no demo rendered


def test_translate_steps_are_bounded(visitors: tuple[Any, Any], selection: dict) -> None:
    """4000 denoising steps took 17 min and held the only preview slot; now refused at once
    (by the widget's bound, and again by the page function for anything that passes it)."""
    from gradio_client.exceptions import AppError

    names = selection["class_names"]
    call = dict(
        selection=selection, adapter=None, owner=_owner(1), source_mode="Dataset image",
        source_index=selection["indices"][0], upload=None, source_class=None, target=names[5],
        strategy="real-mix", seed=0, strength=0.5, api_name="/translate",
    )  # fmt: skip
    with pytest.raises(AppError, match="greater than maximum value 100"):
        visitors[1].predict(**call, steps=4000)


def test_translate_page_checks_the_step_limit_itself(selection: dict, tmp_path: Path) -> None:
    from diffmix.settings import Settings
    from pages import translate

    public = Settings.from_env({"DIFFMIX_PUBLIC": "1", "DIFFMIX_HOME": str(tmp_path)})
    with pytest.raises(ValueError, match="steps = 4000 is over this deployment's limit of 100"):
        translate.build_request(
            selection, None, source_mode="Dataset image", source_index=selection["indices"][0],
            upload=None, source_class=None, target_class=selection["class_names"][5],
            strengths=[0.5], strategy="real-mix", seed=0, steps=4000, settings=public,
        )  # fmt: skip


def test_flat_zip_bomb_upload_is_refused_and_nothing_kept(
    visitors: tuple[Any, Any], public_home: Path, tmp_path: Path
) -> None:
    from gradio_client import handle_file

    path = tmp_path / "flat-bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for i in range(30):
            zf.writestr(f"a/{i}.png" if i % 2 else f"b/{i}.png", bytes(10 * 1024**2))
    datasets = public_home / "datasets"
    before = set(os.listdir(datasets)) if datasets.is_dir() else set()
    out = visitors[1].predict(
        source="Upload zip", folder="", upload=handle_file(str(path)), hub="", split="train",
        subset="full", shots=5, imbalance=0.1, seed=0, api_name="/load_dataset",
    )  # fmt: skip
    text = json.dumps(out, default=str)
    assert "expands to more than" in text and "spec" not in text, text[:2000]
    after = set(os.listdir(datasets)) if datasets.is_dir() else set()
    assert after == before  # no extraction folder kept
    used = sum(p.stat().st_size for p in public_home.rglob("*") if p.is_file())
    assert used < 200 * 1024**2  # the 300 MiB were never written


def test_jobs_are_capped_per_visitor_and_owned(
    visitors: tuple[Any, Any], selection: dict, public_home: Path
) -> None:
    a, b = visitors
    long = {"epochs": 200, "resolution": 16, "batch_size": 4}
    msg = _start(a, "train", selection, _owner(0), "cap-a1", **long)
    assert "Started train run cap-a1" in msg, msg
    msg = _start(a, "train", selection, _owner(0), "cap-a2", **long)
    assert "limit per visitor is 1" in msg and not (public_home / "runs" / "cap-a2").exists(), msg
    msg = _start(b, "train", selection, _owner(1), "cap-b1", **long)
    assert "Started train run cap-b1" in msg, msg
    # visitor B can neither watch nor cancel A's run
    out = b.predict(name="cap-a1", owner=_owner(1), api_name="/train_cancel")
    assert "belongs to another session" in html.unescape(str(out[0])), out[0]
    for client, k, name in ((a, 0, "cap-a1"), (b, 1, "cap-b1")):
        out = client.predict(name=name, owner=_owner(k), api_name="/train_cancel")
        assert "Cancel requested" in str(out[0]), out[0]


def test_status_of_a_finished_run_without_a_class_in_its_test_split(
    visitors: tuple[Any, Any], public_home: Path, server: AppServer
) -> None:
    """per_class holds None for a class absent from the test split: the poll used to raise."""
    run = public_home / "runs" / "holey"
    run.mkdir(parents=True)
    job = {"stage": "train", "run_dir": str(run), "pid": 999_999, "owner": _owner(0),
           "argv": ["python", "-m", "diffmix", "train", "--out", str(run), "--", "demo"],
           "created": 1.0}  # fmt: skip
    (run / jobs.JOB_FILE).write_text(json.dumps(job))
    (run / "status.json").write_text(json.dumps({"state": "done", "progress": 1.0}))
    (run / "events.jsonl").write_text(
        json.dumps(
            {
                "kind": "epoch",
                "epoch": 1,
                "train_loss": 1.0,
                "test_accuracy": 0.5,
                "per_class_accuracy": [0.5, None],
            }
        )
        + "\n"  # fmt: skip
    )
    out = visitors[0].predict(name="holey", owner=_owner(0), api_name="/train_status")
    assert 'data-state="done"' in str(out[0])
    assert "TypeError" not in server.log_tail(20000)


def test_server_is_still_up_and_serves(server: AppServer, visitors: tuple[Any, Any]) -> None:
    assert server.proc.poll() is None
    out = visitors[1].predict(
        source="Demo", folder="", upload=None, hub="", split="train", subset="full",
        shots=5, imbalance=0.1, seed=0, api_name="/load_dataset",
    )  # fmt: skip
    assert out[0]["spec"] == "demo"
