"""benchmarks/scale.py: ``--quick`` runs every stage at the smallest size and ends with the
JSON line the issue specifies (timings belong to the script, not to this test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import scale  # noqa: E402


def test_growth_exponent_is_the_log_log_slope_of_the_two_largest_sizes():
    assert scale.exponent([1000, 10000, 60000], [5.0, 1.0, 6.0]) == 1.0
    assert scale.exponent([1000, 10000], [2.0, 2.0]) == 0.0
    assert scale.exponent([1000], [2.0]) is None
    assert scale.exponent([1000, 10000], [2.0, None]) is None


@pytest.mark.slow
def test_quick_run_measures_every_stage(tmp_path):
    env = {**os.environ, "DIFFMIX_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "TMPDIR": str(tmp_path)}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--quick"],
        env=env, capture_output=True, text=True, timeout=1500, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["sizes"] == [1000] and summary["real_train_images"] == [200]
    stages = summary["stages"]
    assert set(stages) == set(scale.STAGES)
    assert {"resume_scan", "inspect_filter"} <= set(stages)
    for name, s in stages.items():
        assert len(s["seconds"]) == 1 and s["seconds"][0] is not None, (name, proc.stderr[-2000:])
        assert s["seconds"][0] > 0 and s["peak_mb"][0] >= 0 and s["exponent"] is None, name
    assert lines[0].split()[:2] == ["stage", "1000"]  # the table comes first
    assert not list(tmp_path.glob("diffmix-scale-*"))  # the fabricated data is removed
