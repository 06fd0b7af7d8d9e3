"""Generation runs on a tiny SD: the folder contract, exactness, resume, cancel, ranks, CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from datautil import write_color_folder  # tests/ is on sys.path under pytest
from PIL import Image

from diffmix.generate import (
    ROW_FIELDS,
    GenerateConfig,
    _Dist,
    generate,
    make_plan,
    read_plan,
    read_rows,
    regenerate,
)
from diffmix.runs import Cancelled, RunDir

STEPS = 2


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    """Three colour classes x 5 images of 24 px (12 train images after the test hold-out)."""
    root = tmp_path_factory.mktemp("colors") / "colors"
    return write_color_folder(root)


def _cfg(colors, tiny_sd_dir, **kw) -> GenerateConfig:
    base = dict(dataset=str(colors), model=str(tiny_sd_dir), strategy="real-mix", multiplier=2,
                strengths=[0.5, 1.0], num_inference_steps=STEPS, batch_size=4)  # fmt: skip
    return GenerateConfig(**{**base, **kw})


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _images(out) -> dict[int, np.ndarray]:
    return {r["task"]: _pixels(out / r["file_name"]) for r in read_rows(out / "metadata.jsonl")}


@pytest.fixture(scope="module")
def full_run(colors, tiny_sd_dir, tmp_path_factory):
    """One uninterrupted run: 12 sources x 2, strengths {0.5, 1}, bottom 25% filtered."""
    out = tmp_path_factory.mktemp("gen") / "full"
    cfg = _cfg(colors, tiny_sd_dir, filter_bottom=0.25)
    summary = generate(cfg, out)
    return cfg, out, summary


# --------------------------------------------------------------------------- the folder


def test_folder_contract(full_run, colors):
    cfg, out, summary = full_run
    rows = read_rows(out / "metadata.jsonl")
    assert summary["planned"] == summary["images"] == len(rows) == 24
    assert summary["kept"] == 24 - round(0.25 * 24) == 18
    assert [r["task"] for r in rows] == list(range(24))
    config = json.loads((out / "config.json").read_text())
    assert config["class_names"] == ["blue", "green", "red"]
    assert config["dataset"] == str(colors) and config["subset"]["indices"]
    for r in rows:
        assert tuple(r) == ROW_FIELDS
        assert r["file_name"] == f"{r['target_class']}/{r['task']:07d}.png"
        assert r["target_class"] != r["source_class"] and r["strength"] in (0.5, 1.0)
        assert sum(r["soft_label"].values()) == pytest.approx(1.0)
        assert r["soft_label"][r["target_class"]] == pytest.approx(r["strength"] ** 0.5)
        assert 0 <= r["faithfulness"] <= 1 and 0 <= r["diversity"] <= 1
        assert r["prompt"] == f"a photo of a {r['target_class']}"
        assert r["model_fingerprint"] and r["adapter_fingerprint"] is None
        assert (r["num_inference_steps"], r["guidance_scale"]) == (STEPS, 7.5)
        assert _pixels(out / r["file_name"]).shape == (24, 24, 3)  # source size
    # the filter marks exactly the least faithful quarter
    dropped = [r["faithfulness"] for r in rows if not r["kept"]]
    kept = [r["faithfulness"] for r in rows if r["kept"]]
    assert len(dropped) == 6 and max(dropped) <= min(kept)
    # plan saved before the images, equal to the pure plan of the config
    from diffmix.data import load_dataset, make_subset

    ds = load_dataset(str(colors), split="train")
    assert read_plan(out) == make_plan(cfg, ds, make_subset(ds))
    # dataset card, grid, run-directory status
    card = (out / "README.md").read_text()
    assert "diffmix generate" in card and "| blue |" in card and "| 0.5 | 12 |" in card
    assert Image.open(out / "grid.png").size[0] > 0
    st = RunDir(out).status()
    assert st["state"] == "done" and st["progress"] == 1.0
    assert RunDir(out).events("done") and not list(out.rglob("*.tmp"))


def test_imagefolder_loads_it(full_run):
    import datasets

    _, out, _ = full_run
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(ds) == 24
    assert set(ds.column_names) == {"image"} | set(ROW_FIELDS) - {"file_name"}
    row = ds[0]
    assert row["image"].size == (24, 24)
    assert sum(v for v in row["soft_label"].values() if v is not None) == pytest.approx(1.0)
    assert sum(ds["kept"]) == 18


def test_regenerate_is_bit_exact(full_run):
    _, out, _ = full_run
    rows = read_rows(out / "metadata.jsonl")
    for r in (rows[0], rows[-1]):  # batches of both strengths
        again = regenerate(out, r)
        assert np.array_equal(np.asarray(again), _pixels(out / r["file_name"]))


def test_rerun_skips_everything_and_refilters(full_run, colors, tiny_sd_dir):
    cfg, out, _ = full_run
    before = (out / "metadata.jsonl").read_text()
    again = generate(cfg, out, resume=True)
    assert again["generated"] == 0 and (out / "metadata.jsonl").read_text() == before
    plain = generate(cfg.model_copy(update={"filter_bottom": 0.5}), out)  # a plain rerun
    assert plain["generated"] == 0 and plain["kept"] == 12
    generate(cfg, out)  # back to 25 %
    assert (out / "metadata.jsonl").read_text() == before
    with pytest.raises(ValueError, match="other settings.*seed"):
        generate(cfg.model_copy(update={"seed": 1}), out)


# --------------------------------------------------------------------------- interruptions


def test_cancel_then_resume_equals_uninterrupted(full_run, colors, tiny_sd_dir, tmp_path):
    cfg, ref_out, _ = full_run
    out = tmp_path / "cancelled"
    run = RunDir(out)
    with pytest.raises(Cancelled):
        generate(cfg, out, progress=lambda done, total: run.request_cancel())
    assert len(read_rows(out / "metadata.jsonl")) == cfg.batch_size  # stopped after one batch
    assert run.status()["state"] == "cancelled"
    summary = generate(cfg, out, resume=True)
    assert summary["generated"] == 24 - cfg.batch_size and summary["images"] == 24
    ref, got = _images(ref_out), _images(out)
    assert got.keys() == ref.keys() and all(np.array_equal(got[t], ref[t]) for t in ref)
    assert read_rows(out / "metadata.jsonl") == read_rows(ref_out / "metadata.jsonl")


def test_torn_rows_temp_files_and_missing_images_are_repaired(full_run, tmp_path):
    cfg, ref_out, _ = full_run
    out = tmp_path / "torn"
    shutil.copytree(ref_out, out)
    rows = read_rows(out / "metadata.jsonl")
    lines = (out / "metadata.jsonl").read_text().splitlines(keepends=True)
    (out / rows[3]["file_name"]).unlink()  # a row whose image is gone
    (out / rows[1]["file_name"]).with_name(".x.png.123.tmp").write_bytes(b"half")
    text = "".join(lines[:20]) + lines[5] + lines[20][:40]  # a duplicate and a torn last line
    (out / "metadata.jsonl").write_text(text)
    summary = generate(cfg, out)
    assert summary["generated"] == 4 + 1  # tasks 20-23 and task 3 made again
    final = read_rows(out / "metadata.jsonl")
    assert [r["task"] for r in final] == list(range(24)) and not list(out.rglob("*.tmp"))
    assert all(np.array_equal(_pixels(out / r["file_name"]), ref) for r, ref in
               zip(final, _images(ref_out).values(), strict=True))  # fmt: skip


def _make_read_only(path) -> bool:
    os.chmod(path, 0o555)
    if os.geteuid() != 0:
        return True
    # root ignores permission bits: make the folder immutable instead
    res = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    return res.returncode == 0


def _make_writable(path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    os.chmod(path, 0o755)


def test_unwritable_output_folder(full_run, tmp_path):
    cfg, _, _ = full_run
    out = tmp_path / "ro"
    run = RunDir(out)
    with pytest.raises(Cancelled):
        generate(cfg, out, progress=lambda d, t: run.request_cancel())
    finished = {
        r["file_name"]: _pixels(out / r["file_name"]) for r in read_rows(out / "metadata.jsonl")
    }
    if not _make_read_only(out):
        _make_writable(out)
        pytest.skip("cannot make a folder read-only here")
    try:
        pattern = f"cannot write to '{re.escape(str(out))}'.*writable.*another --out.*4 image"
        with pytest.raises(OSError, match=pattern):
            generate(cfg, out)
    finally:
        _make_writable(out)
    for name, px in finished.items():  # the finished images are kept, intact
        assert np.array_equal(_pixels(out / name), px)
    assert generate(cfg, out)["images"] == 24


# --------------------------------------------------------------------------- processes


def test_two_ranks_split_batches_and_merge(full_run, tmp_path):
    cfg, ref_out, _ = full_run
    out = tmp_path / "ranks"
    # the two processes of `accelerate launch --num_processes 2`, one after the other
    generate(cfg, out, _dist=_Dist(rank=0, world=2))
    rank0 = read_rows(out / "metadata.jsonl")
    assert rank0 and all(r["batch"] % 2 == 0 for r in rank0)
    generate(cfg, out, _dist=_Dist(rank=1, world=2))
    rank1 = read_rows(out / "metadata.1.jsonl")
    assert rank1 and all(r["batch"] % 2 == 1 for r in rank1)
    assert len(rank0) + len(rank1) == 24
    summary = generate(cfg, out)  # a plain rerun merges what the ranks left and makes nothing
    assert summary["images"] == 24 and summary["generated"] == 0
    assert not list(out.glob("metadata.*.jsonl"))
    rows = read_rows(out / "metadata.jsonl")
    assert [r["task"] for r in rows] == list(range(24))
    ref = _images(ref_out)
    assert all(np.array_equal(px, ref[t]) for t, px in _images(out).items())  # N-independent


# --------------------------------------------------------------------------- strategies & CLI


def test_diff_mix_with_an_adapter(colors, tiny_sd_dir, tmp_path):
    from diffmix.personalize import PersonalizeConfig, personalize

    adapter = personalize(
        PersonalizeConfig(
            dataset=str(colors), shots=2, model=str(tiny_sd_dir), steps=2, batch_size=2, rank=4
        ),  # fmt: skip
        tmp_path / "adapter",
    )
    cfg = _cfg(colors, tiny_sd_dir, strategy="diff-mix", adapter=str(adapter), shots=2,
               multiplier=1, strengths=[0.7], score=False)  # fmt: skip
    out = tmp_path / "diffmix"
    summary = generate(cfg, out)
    rows = read_rows(out / "metadata.jsonl")
    assert summary["images"] == len(rows) == 6
    assert all(r["prompt"].startswith("a photo of a <class_") for r in rows)
    assert all(r["adapter_fingerprint"] and r["faithfulness"] is None for r in rows)
    assert np.array_equal(np.asarray(regenerate(out, rows[2])), _pixels(out / rows[2]["file_name"]))
    # the adapter changes -> the folder refuses to continue with it
    meta = json.loads((adapter / "adapter.json").read_text())
    (adapter / "adapter.json").write_text(json.dumps({**meta, "note": "retrained"}))
    with pytest.raises(ValueError, match="adapter_fingerprint"):
        generate(cfg, out)


def test_cli_generate_json_and_bad_inputs(colors, tiny_sd_dir, tmp_path, capsys):
    from diffmix.cli import main

    out = tmp_path / "cli"
    base = ["generate", str(colors), "--model", str(tiny_sd_dir), "--steps", str(STEPS),
            "--no-score", "--out", str(out)]  # fmt: skip
    argv = base + ["--strategy", "real-aug", "--multiplier", "1", "--strength", "0.6",
                   "--shots", "1", "--json"]  # fmt: skip
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"out", "images", "planned", "kept", "generated"} <= set(payload)
    assert payload["images"] == payload["planned"] == payload["kept"] == 3
    rows = read_rows(out / "metadata.jsonl")
    assert all(r["target_class"] == r["source_class"] and r["strength"] == 0.6 for r in rows)

    bad = [
        (["--strategy", "real-mixx"], "unknown strategy 'real-mixx'"),
        (["--strategy", "real-mix", "--strength", "1.5"], "got 1.5"),
        (["--strategy", "real-mix", "--strengths", "0.5,0"], "got 0.0"),
        (["--strategy", "diff-mix", "--strength", "0.5"], "--adapter"),
        (["--strategy", "real-mix", "--targets", "confusion"], "--confusion FILE"),
    ]
    for extra, message in bad:
        assert main(base[:-1] + [str(tmp_path / "bad")] + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error:") and message in err[-1], err[-1]
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    assert (
        main(["generate", str(empty), "--strategy", "real-mix", "--out", str(tmp_path / "e")]) == 2
    )
    assert "no usable images" in capsys.readouterr().err
    assert main(base[:-1] + [str(colors), "--strategy", "real-mix"]) == 2  # a dataset folder
    assert "not empty and holds no generation" in capsys.readouterr().err


def test_gen_cutmix_and_confusion_targets(colors, tiny_sd_dir, tmp_path):
    gen = generate(_cfg(colors, tiny_sd_dir, strategy="real-gen", strengths=None, limit=4,
                        score=False), tmp_path / "gen")  # fmt: skip
    rows = read_rows(tmp_path / "gen" / "metadata.jsonl")
    assert gen["images"] == 4 and all(r["source_id"] is None for r in rows)
    assert all(r["source_class"] == r["target_class"] and r["strength"] == 1.0 for r in rows)
    assert all(_pixels(tmp_path / "gen" / r["file_name"]).shape == (32, 32, 3) for r in rows)

    cut = generate(_cfg(colors, tiny_sd_dir, strategy="cutmix", strengths=[0.25], limit=6),
                   tmp_path / "cut")  # fmt: skip
    rows = read_rows(tmp_path / "cut" / "metadata.jsonl")
    assert cut["images"] == 6 and all(r["partner_id"].startswith(r["target_class"]) for r in rows)
    assert all(r["diversity"] is not None and r["steps_run"] == 0 for r in rows)

    conf = tmp_path / "confusion.json"  # blue is confused with red only; green with nothing
    conf.write_text(json.dumps({"class_names": ["red", "green", "blue"],
                                "matrix": [[5, 0, 0], [0, 5, 0], [4, 0, 1]]}))  # fmt: skip
    cfg = _cfg(colors, tiny_sd_dir, targets="confusion", confusion=str(conf), multiplier=3,
               score=False, num_inference_steps=1)  # fmt: skip
    generate(cfg, tmp_path / "conf")
    rows = read_rows(tmp_path / "conf" / "metadata.jsonl")
    assert {r["target_class"] for r in rows if r["source_class"] == "blue"} == {"red"}
    assert {r["target_class"] for r in rows if r["source_class"] == "green"} == {"red", "blue"}
