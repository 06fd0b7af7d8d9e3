"""Helpers and fixtures of the page tests (tests/test_page_*.py).

The fixtures (``private``, ``public``, ``fewshot``, ``untrained_judge``) are registered for every
test module by conftest.py (``pytest_plugins``); the helpers write run folders as a job leaves
them.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from diffmix import jobs
from diffmix.settings import Settings
from pages import jobs_ui

#: Classes of the demo dataset.
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
    from pages import dataset

    return dataset.load_selection("demo", subset="few-shot", shots=5, seed=0).selection


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


# --------------------------------------------------------------------------- run folders


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


def _fake_adapter(name: str, owner: str | None, *, ti_only: bool = False) -> Path:
    path = _fake_run("personalize", name, owner=owner, step=20, total=20)
    meta = {"base_model": "nano", "class_tokens": {f"c{i}": f"<class_{i}>" for i in range(3)},
            "ti_only": ti_only, "final_loss": 0.125, "dataset": {"spec": "demo", "fingerprint": "f"},
            "config": {"dataset": "demo", "shots": 5, "steps": 20, "model": "nano"}}  # fmt: skip
    (path / "adapter.json").write_text(json.dumps(meta))
    return path


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
