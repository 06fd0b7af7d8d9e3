"""The benchmark scripts run end to end (tiny model, a few images) and end with their JSON line.

They measure nothing here (timings belong to the scripts, not to tests); these tests keep the
scripts working as the code under them changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datautil import RGB, write_color_folder  # tests/ is on sys.path under pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench") / "shapes"
    return write_color_folder(
        root, per_class=4, size=32, colors={k: RGB[k] for k in ("red", "blue")}
    )


def _run(script: str, *args: str, home: Path) -> dict:
    env = {**os.environ, "DIFFMIX_HOME": str(home), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}  # fmt: skip
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], env=env,
                          capture_output=True, text=True, timeout=600, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_generate_benchmark_runs_every_side(tiny_sd_dir, shapes, workspace_home):
    res = _run("generate.py", "--model", str(tiny_sd_dir), "--dataset", str(shapes), "--n", "3",
               "--steps", "2", "--batch-size", "2", "--dtype", "bf16", home=workspace_home)  # fmt: skip
    assert res["generate_dtype"] == "bf16" and res["baseline_dtype"] == "fp32"
    assert set(res["peak_rss_mib"]) == {"baseline", "generate", "generate-order", "baseline-same"}
    for key in ("speedup", "speedup_same_dtype", "baseline_images_per_s", "gflop_per_image"):
        assert res[key] > 0


def test_translate_benchmark_runs(tiny_sd_dir, shapes, workspace_home):
    res = _run("translate.py", "--model", str(tiny_sd_dir), "--dataset", str(shapes), "--steps",
               "2", "--repeats", "1", home=workspace_home)  # fmt: skip
    assert res["ratio"] > 0


def test_preview_benchmark_times_the_app_and_plain_diffusers(tiny_sd_dir, workspace_home):
    from diffmix.score import reference_classifier

    reference_classifier("demo")  # shipped in assets/refclf: loaded, not fitted
    res = _run("preview.py", "--model", str(tiny_sd_dir), "--steps", "2", "--repeats", "1",
               "--log", str(workspace_home / "preview-app.log"), home=workspace_home)  # fmt: skip
    assert res["strategy"] == "real-mix" and res["steps"] == 2
    assert res["app_scored_s"] >= res["app_image_s"] > 0 and res["plain_diffusers_s"] > 0
    assert res["ratio"] == pytest.approx(res["app_image_s"] / res["plain_diffusers_s"], rel=1e-2)
    # the cold start on a fresh workspace: first image, then the next call's image
    assert res["cold_first_image_s"] > 0 and res["cold_second_image_s"] > 0


def test_preview_memory_benchmark_reports_growth(tiny_sd_dir, workspace_home):
    from diffmix.score import reference_classifier

    reference_classifier("demo")  # fitted once per test session (shared with the test above)
    res = _run("preview_memory.py", "--model", str(tiny_sd_dir), "--steps", "2", "--calls", "4",
               "--every", "2", "--sweep-every", "2",
               "--log", str(workspace_home / "preview-memory-app.log"), home=workspace_home)  # fmt: skip
    assert res["calls"] == 4 and set(res["rss_mib"]) == {"0", "2", "4"}
    assert res["rss_end_mib"] > 0 and isinstance(res["growth_last_half_pct"], float)


def test_sd_throughput_benchmark_runs_at_the_reduced_size(workspace_home):
    """benchmarks/sd_throughput.py: SD-1.5-shaped, random weights; reduced on a CPU."""
    res = _run("sd_throughput.py", "--steps", "3", "--n", "2", "--batch-sizes", "1,2",
               "--dtypes", "fp32", home=workspace_home)  # fmt: skip
    assert res["size"] == "reduced" and res["side_px"] == 64 and res["dtype"] == "float32"
    for key in ("speedup", "images_per_s", "peak_mb", "fraction_of_peak", "unet_gflop_per_image"):
        assert res[key] > 0
    assert res["gflop_per_image"] > res["unet_gflop_per_image"]  # + VAE and text encoder
    assert {(r["method"], r["batch"]) for r in res["rows"]} == {
        ("reference", 1), ("generator", 1), ("generator", 2)}  # fmt: skip


def test_sd_throughput_full_size_configs_are_sd15():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import sd_throughput
    finally:
        sys.path.pop(0)
    unet, vae, text, side = sd_throughput.sd15_configs("full")
    assert side == 512 and unet["sample_size"] * 8 == side
    assert (
        unet["block_out_channels"] == (320, 640, 1280, 1280) and unet["cross_attention_dim"] == 768
    )
    assert vae["block_out_channels"] == (128, 256, 512, 512)
    assert text["num_hidden_layers"] == 12 and text["hidden_size"] == 768
