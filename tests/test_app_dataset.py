"""The Dataset page's plain functions and callbacks, without a browser."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

import app
from diffmix.data import DatasetError
from diffmix.settings import Settings
from pages import common, dataset

DEMO_CLASSES = 12
DEMO_TRAIN = 60 * DEMO_CLASSES


def _settings(**env: str) -> Settings:
    return Settings.from_env(env)


@pytest.fixture
def private(workspace_home: Path) -> Settings:
    return _settings(DIFFMIX_HOME=str(workspace_home))


@pytest.fixture
def public(workspace_home: Path) -> Settings:
    return _settings(DIFFMIX_HOME=str(workspace_home), SPACE_ID="someone/diffmix")


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """Three classes x 4 PNGs, and one broken file that must be reported as skipped."""
    root = tmp_path / "tiny"
    for c, color in enumerate(["red", "green", "blue"]):
        (root / color).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (24 + i, 20), (60 * c, 10 * i, 200 - 50 * c)).save(
                root / color / f"{color}_{i}.png"
            )
    (root / "blue" / "broken.png").write_bytes(b"not a png")
    return root


# --------------------------------------------------------------------------- resolve_spec


def test_resolve_demo(public: Settings) -> None:
    assert dataset.resolve_spec("Demo", settings=public) == "demo"


def test_resolve_folder_private_and_public(private: Settings, public: Settings) -> None:
    assert dataset.resolve_spec("Server folder", folder=" /data/x ", settings=private) == "/data/x"
    with pytest.raises(ValueError, match="DIFFMIX_ALLOW_LOCAL_PATHS=1"):
        dataset.resolve_spec("Server folder", folder="/data/x", settings=public)
    with pytest.raises(ValueError, match="type the path"):
        dataset.resolve_spec("Server folder", folder="  ", settings=private)


def test_resolve_hub(private: Settings) -> None:
    assert dataset.resolve_spec("Hub dataset", hub="owner/name", settings=private) == (
        "hub:owner/name"
    )
    assert dataset.resolve_spec("Hub dataset", hub="hub:owner/name:test", settings=private) == (
        "hub:owner/name:test"
    )
    with pytest.raises(ValueError, match="DIFFMIX_ALLOW_HUB=1"):
        dataset.resolve_spec(
            "Hub dataset", hub="owner/name", settings=_settings(DIFFMIX_ALLOW_HUB="0")
        )
    with pytest.raises(ValueError, match="Hub dataset id"):
        dataset.resolve_spec("Hub dataset", hub="", settings=private)


def test_resolve_unknown_source(private: Settings) -> None:
    with pytest.raises(ValueError, match="unknown dataset source 'FTP'"):
        dataset.resolve_spec("FTP", settings=private)


# --------------------------------------------------------------------------- uploads


def _zip_of(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder.parent).as_posix())
    return dest


def test_upload_is_staged_in_the_workspace_and_loads(
    tiny_folder: Path, tmp_path: Path, public: Settings, workspace_home: Path
) -> None:
    upload = _zip_of(tiny_folder, tmp_path / "tiny.zip")
    spec = dataset.resolve_spec("Upload zip", upload=str(upload), settings=public, session="s1")
    staged = Path(spec)
    assert staged.is_file() and staged.name == "tiny.zip"
    assert staged.is_relative_to(workspace_home / "uploads" / "s1")
    assert staged.read_bytes() == upload.read_bytes()
    # the same content lands in the same place (the dataset cache is reused)
    again = dataset.stage_upload(str(upload), settings=public, session="s1")
    assert again == staged
    res = dataset.load_selection(spec, settings=public)
    # the browser gets an opaque name for the upload, which the server maps back
    token = res.selection["spec"]
    assert (
        token.startswith("upload:")
        and token.endswith("/tiny.zip")
        and str(workspace_home) not in token
    )
    assert (
        common.selection_spec(token, public) == spec and res.selection["name"] == "upload:tiny.zip"
    )
    assert list(res.summary["spec"]) == ["upload:tiny.zip"]  # no server path on show
    assert list(res.summary["classes"]) == [3]
    # an upload is allowed on a public deployment, where server paths are not
    ds, sub = common.open_selection(res.selection, public)
    assert sub is None and ds.fingerprint == res.selection["fingerprint"]


def test_upload_limits(tmp_path: Path, workspace_home: Path) -> None:
    small = _settings(DIFFMIX_HOME=str(workspace_home), DIFFMIX_MAX_UPLOAD_MB="1")
    big = tmp_path / "big.zip"
    big.write_bytes(b"\0" * (1024 * 1024 + 1))
    with pytest.raises(ValueError, match="DIFFMIX_MAX_UPLOAD_MB"):
        dataset.stage_upload(str(big), settings=small, session="s")
    notzip = tmp_path / "data.tar"
    notzip.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .zip"):
        dataset.stage_upload(str(notzip), settings=small, session="s")
    with pytest.raises(ValueError, match="upload a .zip"):
        dataset.stage_upload(None, settings=small, session="s")


# --------------------------------------------------------------------------- load_selection


def test_demo_few_shot(private: Settings) -> None:
    res = dataset.load_selection("demo", subset="few-shot", shots=5, seed=0)
    sel = res.selection
    # the summary: the split, then the subset
    rows = res.summary.to_dict("records")
    assert list(res.summary.columns) == dataset.SUMMARY_COLUMNS
    assert rows[0]["images"] == DEMO_TRAIN and rows[0]["subset"] == "full"
    assert rows[1] == {
        "spec": "demo",
        "split": "train",
        "classes": DEMO_CLASSES,
        "images": 60,
        "fingerprint": sel["subset_fingerprint"],
        "subset": "5-shot",
        "seed": 0,
    }
    assert sel["subset_fingerprint"] != sel["fingerprint"]
    # the chart: the split's counts and the subset's side by side
    full, part = res.figure.data
    assert list(full.y) == [60] * DEMO_CLASSES and list(part.y) == [5] * DEMO_CLASSES
    assert part.name == "5-shot"
    # samples: 4 per class, captioned with the class name, drawn from the subset
    captions = [c for _, c in res.gallery]
    assert len(res.gallery) == 4 * DEMO_CLASSES
    assert sorted(set(captions)) == sorted(sel["class_names"])
    assert all(isinstance(img, Image.Image) and img.mode == "RGB" for img, _ in res.gallery)
    assert "720 images (64×64 px); 5-shot subset of 60 images (seed 0)" in res.message
    # nothing skipped in the demo
    assert res.skipped.empty and res.skipped_note == "No files skipped."
    # the selection is plain JSON and names exactly 5 images per class
    assert json.loads(json.dumps(sel)) == sel
    assert len(sel["indices"]) == 60 and sel["counts"] == dict.fromkeys(sel["class_names"], 5)
    assert (sel["spec"], sel["split"], sel["shots"], sel["seed"]) == ("demo", "train", 5, 0)


def test_subset_depends_on_seed_only(private: Settings) -> None:
    a = dataset.load_selection("demo", subset="few-shot", shots=3, seed=1).selection
    b = dataset.load_selection("demo", subset="few-shot", shots=3, seed=1).selection
    c = dataset.load_selection("demo", subset="few-shot", shots=3, seed=2).selection
    assert a["indices"] == b["indices"] and a["indices"] != c["indices"]


def test_demo_long_tail_decays(private: Settings) -> None:
    res = dataset.load_selection("demo", subset="long-tail", imbalance=0.1, seed=0)
    y = list(res.figure.data[1].y)
    assert y == sorted(y, reverse=True) and y[0] == 60 and y[-1] == 6
    assert sum(y) == res.selection["num_images"] == len(res.selection["indices"])
    assert res.summary.iloc[1]["subset"] == "long-tail 0.1"
    assert (res.selection["imbalance"], res.selection["shots"]) == (0.1, None)


def test_full_split_and_test_split(private: Settings) -> None:
    res = dataset.load_selection("demo", split="test")
    assert len(res.summary) == 1 and res.summary.iloc[0]["images"] == 30 * DEMO_CLASSES
    assert res.selection["indices"] is None
    assert len(res.figure.data) == 1
    with pytest.raises(ValueError, match="train split"):
        dataset.load_selection("demo", split="test", subset="few-shot", shots=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"subset": "few-shot", "shots": 0}, "shots"),
        ({"subset": "few-shot", "shots": 2.5}, "shots"),
        ({"subset": "long-tail", "imbalance": 0}, "imbalance"),
        ({"subset": "long-tail", "imbalance": None}, "imbalance"),
        ({"subset": "half"}, "unknown subset"),
        ({"split": "val"}, "unknown split"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_choices_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataset.load_selection("demo", **kwargs)


def test_skipped_files_are_reported(tiny_folder: Path, private: Settings) -> None:
    res = dataset.load_selection(str(tiny_folder), subset="few-shot", shots=2)
    assert res.skipped_note == "1 file(s) skipped while loading."
    assert list(res.skipped.columns) == ["path", "reason"]
    assert "broken.png" in res.skipped.iloc[0]["path"] and res.skipped.iloc[0]["reason"]


def test_missing_folder_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere"):
        dataset.load_selection(str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------- selection hand-off


def test_open_selection_round_trip(private: Settings, public: Settings) -> None:
    sel = dataset.load_selection("demo", subset="long-tail", imbalance=0.2, seed=3).selection
    ds, sub = common.open_selection(sel, public)
    assert sub is not None and list(sub.indices) == sel["indices"]
    assert sub.apply(ds).fingerprint == sel["subset_fingerprint"]
    with pytest.raises(DatasetError, match="changed since it was selected"):
        common.open_selection({**sel, "fingerprint": "0" * 16}, public)
    with pytest.raises(ValueError, match="load one on the Dataset page"):
        common.open_selection(None, public)


def test_open_selection_rechecks_the_spec(
    tiny_folder: Path, private: Settings, public: Settings
) -> None:
    sel = dataset.load_selection(str(tiny_folder)).selection
    assert common.open_selection(sel, private)[1] is None
    with pytest.raises(ValueError, match="DIFFMIX_ALLOW_LOCAL_PATHS"):
        common.open_selection(sel, public)


# --------------------------------------------------------------------------- helpers


def test_sample_grid_caps(private: Settings) -> None:
    ds = common.load_cached("demo", "train")
    grid = dataset.sample_grid(ds, range(len(ds)), per_class=4, max_images=24)
    assert len(grid) == 24  # 2 per class for 12 classes
    assert [c for _, c in grid[:2]] == [ds.class_names[0]] * 2
    assert max(max(img.size) for img, _ in grid) <= 160


def test_counts_figure_without_subset() -> None:
    fig = dataset.counts_figure({"a": 3, "b": 1})
    assert len(fig.data) == 1 and list(fig.data[0].x) == ["a", "b"]
    fig = dataset.counts_figure({"a": 3, "b": 3}, {"a": 1, "b": 2}, sort_by_subset=True)
    assert list(fig.data[1].x) == ["b", "a"]


# --------------------------------------------------------------------------- callbacks and app


def _no_progress(*_a: object, **_k: object) -> None:
    return None


def test_on_load_success_and_error(private: Settings, public: Settings) -> None:
    out = dataset.on_load(
        "Demo",
        "",
        None,
        "",
        "train",
        "few-shot",
        2,
        0.1,
        0,
        settings=private,
        progress=_no_progress,
    )
    selection, status, summary, figure, gallery, skipped, note = out
    assert selection["num_images"] == 2 * DEMO_CLASSES
    assert "dm-info" in status and "2-shot" in status
    assert summary.iloc[1]["images"] == 2 * DEMO_CLASSES
    err = dataset.on_load(
        "Server folder", "/no/such/<dir>", None, "", "train", "full", 5, 0.1, 0,
        settings=private, progress=_no_progress,
    )  # fmt: skip
    assert "dm-error" in err[1] and "/no/such/&lt;dir&gt;" in err[1]
    assert "Traceback" not in err[1]
    assert all(isinstance(o, type(gr.skip())) for o in (err[0], *err[2:]))
    refused = dataset.on_load(
        "Server folder", "/data/cub", None, "", "train", "full", 5, 0.1, 0, settings=public
    )
    assert "dm-error" in refused[1] and "DIFFMIX_ALLOW_LOCAL_PATHS=1" in refused[1]


def test_create_app_routes_and_api_names(private: Settings) -> None:
    demo = app.create_app(private)
    assert isinstance(demo, gr.Blocks)
    assert [p[0] for p in demo.pages] == [""] + [m.PATH for m in app.PAGES[1:]]
    public_api = {
        d.api_name for d in demo.fns.values() if getattr(d, "api_visibility", "public") == "public"
    }
    assert "load_dataset" in public_api
    for page in app.PAGES:
        assert page.TITLE and page.PATH and callable(page.build)
