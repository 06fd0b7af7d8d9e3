"""Each step's result is carried to the next page (issue 16, item 2).

A finished adapter trained on the selected dataset is used by Translate and Generate unless
one was chosen (or "none"); Train starts with the newest synthetic set made from the selected
dataset; every page ends with a "next step" link.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import pytest

from diffmix import jobs
from diffmix.settings import Settings
from pages import dataset, generate, jobs_ui, personalize, train, translate

OWNER = "c" * 24


# The fixtures private and fewshot are tests/pageutil.py's (registered by conftest.py).


def _run(stage: str, name: str, created: float, state: str = "done") -> Path:
    path = jobs_ui.stage_root(stage) / name
    path.mkdir(parents=True)
    argv = [sys.executable, "-m", "diffmix", stage, "demo", "--out", str(path)]
    job = {"stage": stage, "run_dir": str(path), "pid": 999_999, "owner": OWNER, "argv": argv,
           "created": created}  # fmt: skip
    (path / jobs.JOB_FILE).write_text(json.dumps(job))
    (path / "status.json").write_text(json.dumps({"state": state}))
    return path


def _adapter(fingerprint: str, created: float, state: str = "done") -> str:
    name = f"ad-{uuid.uuid4().hex[:8]}"
    path = _run("personalize", name, created, state)
    if state == "done":
        meta = {"base_model": "nano", "class_tokens": {"a": "<a>"}, "ti_only": False,
                "dataset": {"spec": "demo", "fingerprint": fingerprint}}  # fmt: skip
        (path / "adapter.json").write_text(json.dumps(meta))
    return name


def test_newest_finished_adapter_of_the_dataset_is_carried(
    fewshot: dict, private: Settings
) -> None:
    fp, now = fewshot["fingerprint"], time.time() + 1000  # newer than other tests' runs
    older = _adapter(fp, now)
    newer = _adapter(fp, now + 1)
    _adapter("another-dataset", now + 2)  # newest, but trained on another dataset
    _adapter(fp, now + 3, state="running")  # newest of this dataset, but not finished
    kw = {"owner": OWNER, "settings": private}
    carried = personalize.carry_adapter(None, fewshot, **kw)
    assert carried["name"] == newer and carried["carried"]
    assert newer in personalize.adapter_line(carried)
    assert translate.default_strategy(carried) == "diff-mix"  # not the base model's real-mix
    # an adapter chosen with "Use for later pages" stays
    chosen = personalize.choose_adapter(older, **kw)
    assert personalize.carry_adapter(chosen, fewshot, **kw) == chosen
    # "Use none" stays none: the base model
    none = personalize._use_action(private)[1]()[0]
    assert personalize.carry_adapter(none, fewshot, **kw) == none
    assert translate.default_strategy(none) == "real-mix"
    assert personalize.resolve_adapter(none, **kw) is None
    assert "you chose the base model" in personalize.adapter_line(none)
    # a carried adapter gives way to a newer finished one
    newest = _adapter(fp, now + 4)
    assert personalize.carry_adapter(carried, fewshot, **kw)["name"] == newest
    # no dataset selected: nothing to match
    assert personalize.carry_adapter(None, None, **kw) is None


def test_translate_and_generate_open_with_the_carried_adapter(
    fewshot: dict, private: Settings
) -> None:
    name = _adapter(fewshot["fingerprint"], time.time() + 2000)
    out = translate._open_action(private)(fewshot, None, OWNER)
    assert out[-1]["name"] == name  # written back to the browser's adapter state
    assert name in out[0] and out[7]["value"] == "diff-mix"
    gen = generate._on_open(private)(OWNER, fewshot, None)
    assert gen[-1]["name"] == name and name in gen[0] and gen[1]["value"] == "diff-mix"


def _synthetic(selection: dict, created: float, *, fingerprint: str | None = None) -> str:
    name = f"syn-{uuid.uuid4().hex[:8]}"
    path = _run("generate", name, created)
    (path / "metadata.jsonl").write_text("{}\n")
    record = {"class_names": selection["class_names"],
              "dataset_fingerprint": fingerprint or selection["fingerprint"]}  # fmt: skip
    (path / "config.json").write_text(json.dumps(record))
    return name


def test_train_opens_with_the_newest_synthetic_set_of_the_dataset(
    fewshot: dict, private: Settings
) -> None:
    now = time.time() + 3000
    _synthetic(fewshot, now)
    newer = _synthetic(fewshot, now + 1)
    _synthetic(fewshot, now + 2, fingerprint="another-dataset")
    assert train.newest_synthetic(fewshot, owner=OWNER, settings=private) == newer
    line, update = train._on_open(private)(OWNER, fewshot)
    assert update["value"] == [newer] and newer in update["choices"]
    assert newer in line and "real-data baseline" in line
    assert train.newest_synthetic(None, owner=OWNER, settings=private) is None


def test_every_page_offers_the_next_step(private: Settings) -> None:
    """Each page ends with a link to the next one (Inspect: back to Train)."""
    import gradio as gr

    from pages import inspect

    expected = {dataset: "personalize", personalize: "translate", translate: "generate",
                generate: "train", train: "inspect", inspect: "train"}  # fmt: skip
    for module, target in expected.items():
        blocks = module.build(private)
        links = [b for b in blocks.blocks.values()
                 if isinstance(b, gr.Button) and b.elem_id == "next-step"]  # fmt: skip
        assert len(links) == 1, module.__name__
        assert links[0].link == target, (module.__name__, links[0].link)


def test_resume_waits_for_a_cancelled_process_to_exit(
    private: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled job writes "cancelled", then takes seconds to exit: Resume pressed in that
    window was refused with "still running" and left the run marked queued (then "ended
    without a final status")."""
    path = _run("train", f"cx-{uuid.uuid4().hex[:8]}", time.time(), state="cancelled")
    alive = iter([True, True, True])
    monkeypatch.setattr(jobs_ui.jobs, "is_alive", lambda _job: next(alive, False))
    started: list[tuple] = []
    monkeypatch.setattr(jobs_ui.jobs, "start_job", lambda *a, **k: started.append(a))
    jobs_ui.resume_run("train", path.name, owner=OWNER, settings=private)
    assert len(started) == 1 and next(alive, "drained") == "drained"  # waited, then started
    assert json.loads((path / "status.json").read_text())["state"] == "queued"
    # a start that is refused leaves the run as it was, not "queued" forever
    (path / "status.json").write_text(json.dumps({"state": "cancelled", "message": "x"}))

    def refuse(*_a, **_k):
        raise ValueError("a train job is still running")

    monkeypatch.setattr(jobs_ui.jobs, "start_job", refuse)
    with pytest.raises(ValueError, match="still running"):
        jobs_ui.resume_run("train", path.name, owner=OWNER, settings=private)
    assert json.loads((path / "status.json").read_text())["state"] == "cancelled"
