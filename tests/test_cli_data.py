"""``diffmix data``: run as ``python -m diffmix`` in a subprocess, like a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffmix.cli import main
from diffmix.data import load_dataset
from diffmix.data.subset import long_tail_counts

REPO = Path(__file__).resolve().parents[1]


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DIFFMIX_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "diffmix", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_demo_json(workspace_home: Path) -> None:
    proc = run_cli(workspace_home, "data", "demo", "--json")
    out = last_json(proc)
    assert out["num_classes"] == 12 and out["num_images"] == 720
    assert set(out["counts"].values()) == {60}
    assert out["indices"] == list(range(720))
    assert out["split"] == "train" and out["shots"] is None and out["skipped"] == []
    assert out["image_sizes"] == {
        "min_width": 64,
        "max_width": 64,
        "min_height": 64,
        "max_height": 64,
    }
    assert out["fingerprint"] == load_dataset("demo").fingerprint
    assert "per class:" in proc.stdout and "quellan" in proc.stdout  # human summary first


def test_flowers_few_shot_is_deterministic_per_seed(workspace_home: Path, flowers17: Path) -> None:
    first = last_json(run_cli(workspace_home, "data", str(flowers17), "--shots", "5", "--json"))
    again = last_json(run_cli(workspace_home, "data", str(flowers17), "--shots", "5", "--json"))
    other = last_json(
        run_cli(workspace_home, "data", str(flowers17), "--shots", "5", "--seed", "1", "--json")
    )
    assert set(first["counts"].values()) == {5} and first["num_images"] == 60
    assert len(first["indices"]) == 60 and first["indices"] == sorted(first["indices"])
    assert first["indices"] == again["indices"]
    assert other["indices"] != first["indices"] and other["seed"] == 1
    assert first["image_sizes"]["max_width"] == 224


def test_flowers_long_tail_and_export(
    workspace_home: Path, flowers17: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "lt"
    out = last_json(
        run_cli(workspace_home, "data", str(flowers17), "--imbalance", "0.1", "--export",
                str(out_dir), "--json")
    )  # fmt: skip
    expected = long_tail_counts([24] * 12, 0.1)
    assert list(out["counts"].values()) == expected and expected[0] == 24 and expected[-1] == 2
    assert out["imbalance"] == 0.1 and out["num_images"] == sum(expected)
    assert load_dataset(str(out_dir)).counts == out["counts"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["data", "no/such/dataset"], "no dataset named 'no/such/dataset'"),
        (["data", "demo", "--split", "test", "--shots", "5"], "cannot be used with --split test"),
        (["data", "demo", "--shots", "0"], "shots must be an integer >= 1, got 0"),
    ],
)
def test_errors_exit_2_with_one_line(workspace_home: Path, args: list[str], needle: str) -> None:
    proc = run_cli(workspace_home, *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_main_in_process_test_split(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "demo", "--split", "test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["split"] == "test" and set(out["counts"].values()) == {30}
    assert main(["data"]) == 2  # missing SPEC: argparse usage error
