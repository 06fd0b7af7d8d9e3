"""Folder datasets (three layouts), the demo spec, spec errors and export round trips."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffmix.data import DatasetError, export_dataset, load_dataset, make_subset
from diffmix.data.demo import DEMO_CLASSES, SUPERCLASS
from diffmix.data.folder import holdout_count


def _png(path: Path, value: int = 0, size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _class_folder(root: Path, sizes: dict[str, int]) -> Path:
    """``root/<class>/img_<i>.png`` with ``sizes[class]`` images each (distinct pixels)."""
    for c, (name, n) in enumerate(sizes.items()):
        for i in range(n):
            _png(root / name / f"img_{i:02d}.png", value=100 * c + i)
    return root


def _expected_test_ids(ids: list[str], fraction: float) -> set[str]:
    """The holdout rule, written out independently: sort by sha1(id), take round-half-up."""
    ordered = sorted(ids, key=lambda i: hashlib.sha1(i.encode()).hexdigest())
    n = len(ordered)
    k = 0 if n < 2 else min(max(int(fraction * n + 0.5), 1), n - 1)
    return set(ordered[:k])


# --------------------------------------------------------------------------- rule 3


def test_class_folders_split_by_stratified_hash_holdout(tmp_path: Path) -> None:
    root = _class_folder(tmp_path / "ds", {"tulip": 10, "aster": 5, "rose": 2, "lone": 1})
    _png(root / "aster" / "nested" / "deep" / "x.png", value=999)  # any depth counts
    (root / "aster" / "readme.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    _png(root / ".hidden" / "h.png")
    _png(root / "__MACOSX" / "tulip" / "._img_00.png")
    _png(root / "rose" / ".thumb.png")
    (root / "README.md").write_text("about this dataset")  # root docs are ignored
    _png(root / "loose.png")

    train = load_dataset(str(root))
    test = load_dataset(str(root), split="test")

    assert train.class_names == test.class_names == ["aster", "lone", "rose", "tulip"]
    assert train.counts == {"aster": 5, "lone": 1, "rose": 1, "tulip": 8}  # aster: 6 images
    assert test.counts == {"aster": 1, "lone": 0, "rose": 1, "tulip": 2}
    for cls in train.class_names:
        all_ids = [
            it.id for ds in (train, test) for it in ds.items if ds.class_names[it.label] == cls
        ]
        test_ids = {it.id for it in test.items if test.class_names[it.label] == cls}
        assert test_ids == _expected_test_ids(all_ids, 0.2)
    assert "aster/nested/deep/x.png" in {it.id for it in train.items + test.items}
    assert [it.id for it in train.items] == sorted(it.id for it in train.items)
    assert {s.path: s.reason for s in train.skipped} == {
        "aster/readme.txt": "not an image file (extension .txt)",
        "loose.png": "image outside any class folder",
    }
    # Deterministic: loading again gives the same items and fingerprint.
    again = load_dataset(str(root))
    assert again.items == train.items and again.fingerprint == train.fingerprint
    assert train.fingerprint != test.fingerprint
    assert train.image(0).mode == "RGB"
    assert all(it.mask_path is None for it in train.items)


def test_holdout_count_rounding() -> None:
    assert [holdout_count(n, 0.2) for n in (0, 1, 2, 3, 5, 8, 10, 30)] == [0, 0, 1, 1, 1, 2, 2, 6]
    assert holdout_count(5, 0.5) == 3  # 2.5 rounds half up
    assert holdout_count(2, 0.9) == 1  # a class always keeps a training image


def test_test_fraction_changes_the_split(tmp_path: Path) -> None:
    root = _class_folder(tmp_path / "ds", {"a": 10, "b": 10})
    assert load_dataset(str(root), split="test", test_fraction=0.5).counts == {"a": 5, "b": 5}
    with pytest.raises(ValueError, match="test_fraction .* got 1.5"):
        load_dataset(str(root), test_fraction=1.5)


def test_fingerprint_follows_content_not_location(tmp_path: Path) -> None:
    root = _class_folder(tmp_path / "one", {"a": 3, "b": 3})
    copy = tmp_path / "two"
    shutil.copytree(root, copy)
    assert load_dataset(str(root)).fingerprint == load_dataset(str(copy)).fingerprint
    first = sorted((copy / "a").iterdir())[0]
    _png(first, value=12345)  # same name, other pixels
    changed = load_dataset(str(copy)).fingerprint, load_dataset(str(copy), split="test").fingerprint
    original = (
        load_dataset(str(root)).fingerprint,
        load_dataset(str(root), split="test").fingerprint,
    )
    assert changed != original


# --------------------------------------------------------------------------- rule 1


def test_given_splits_with_masks_prompts_and_superclass(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("owl", "wren"):
            for i in range(n):
                _png(root / split / cls / f"{i}.png", value=i)
    _png(root / "val" / "finch" / "0.png")  # a class only in the eval split
    _png(root / "masks" / "train" / "owl" / "0.png")
    _png(root / "masks" / "val" / "wren" / "1.png")
    (root / "classes.json").write_text(json.dumps({"owl": "a photo of an owl"}))
    (root / "demo.json").write_text(json.dumps({"superclass": "bird"}))

    train = load_dataset(str(root))
    test = load_dataset(str(root), split="test")

    assert train.class_names == test.class_names == ["finch", "owl", "wren"]
    assert train.counts == {"finch": 0, "owl": 3, "wren": 3}
    assert test.counts == {"finch": 1, "owl": 2, "wren": 2}
    assert train.items[0].id == "train/owl/0.png"
    assert [it.id for it in train.items if it.mask_path] == ["train/owl/0.png"]
    assert [it.id for it in test.items if it.mask_path] == ["val/wren/1.png"]
    assert train.mask(0).mode == "L"
    assert train.class_prompts == {"owl": "a photo of an owl"}
    assert train.superclass == "bird"


def test_train_only_folder_holds_out_test(tmp_path: Path) -> None:
    root = _class_folder(tmp_path / "ds" / "train", {"a": 5, "b": 5}).parent
    train, test = load_dataset(str(root)), load_dataset(str(root), split="test")
    assert train.counts == {"a": 4, "b": 4} and test.counts == {"a": 1, "b": 1}
    assert not {it.id for it in train.items} & {it.id for it in test.items}


# --------------------------------------------------------------------------- demo


def test_demo_spec_loads_given_splits_with_masks() -> None:
    train = load_dataset("demo")
    test = load_dataset("demo", split="test")
    assert train.class_names == sorted(DEMO_CLASSES)
    assert set(train.counts.values()) == {60} and set(test.counts.values()) == {30}
    assert all(it.mask_path for it in train.items + test.items)
    assert train.superclass == SUPERCLASS
    assert set(train.class_prompts) == set(DEMO_CLASSES)
    assert not train.skipped
    assert load_dataset("demo:0").fingerprint == train.fingerprint
    assert train.image(0).size == (64, 64)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("layout", ["empty", "no-images", "missing", "not-zip"])
def test_unusable_specs_raise_dataset_error(tmp_path: Path, layout: str) -> None:
    spec = tmp_path / "ds"
    if layout == "empty":
        spec.mkdir()
        match = "no class subfolders .* expected"
    elif layout == "no-images":
        (spec / "a").mkdir(parents=True)
        (spec / "a" / "notes.txt").write_text("x")
        match = "no usable images"
    elif layout == "missing":
        match = "no dataset named .* give 'demo'"
    else:
        spec = tmp_path / "data.csv"
        spec.write_text("a,b\n")
        match = "not a .zip"
    with pytest.raises(DatasetError, match=match):
        load_dataset(str(spec))


def test_bad_split_and_bad_classes_json(tmp_path: Path) -> None:
    root = _class_folder(tmp_path / "ds", {"a": 2, "b": 2})
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'dev'"):
        load_dataset(str(root), split="dev")
    (root / "classes.json").write_text("{not json")
    with pytest.raises(DatasetError, match="classes.json"):
        load_dataset(str(root))


# --------------------------------------------------------------------------- export (rule 2)


def test_export_demo_subset_round_trip(tmp_path: Path) -> None:
    ds = load_dataset("demo")
    subset = make_subset(ds, shots=3, seed=1)
    out = export_dataset(ds, subset.indices, tmp_path / "export")

    back = load_dataset(str(out))
    assert back.class_names == ds.class_names
    assert back.counts == subset.counts
    assert all(it.mask_path for it in back.items)
    assert back.class_prompts == ds.class_prompts and back.superclass == SUPERCLASS
    meta = json.loads((out / "subset.json").read_text())
    assert meta["indices"] == list(subset.indices)
    assert meta["fingerprint"] == ds.fingerprint and meta["split"] == "train"
    # Pixels survive the PNG re-encode exactly.
    first = ds.items[subset.indices[0]]
    twin = next(i for i, it in enumerate(back.items) if Path(it.id).name == Path(first.id).name)
    assert np.array_equal(np.asarray(back.image(twin)), np.asarray(ds.loader(first)))
    with pytest.raises(DatasetError, match="one exported split"):
        load_dataset(str(out), split="test")
    with pytest.raises(ValueError, match="not empty"):
        export_dataset(ds, [0], out)


def test_export_cleans_odd_images_and_names_default_prompts(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    (root / "train" / "rose").mkdir(parents=True)
    cmyk.save(root / "train" / "rose" / "x.jpg")
    Image.new("LA", (8, 8), (0, 0)).save(root / "train" / "rose" / "x.png")  # same stem
    _png(root / "test" / "rose" / "t.png")
    ds = load_dataset(str(root))
    out = export_dataset(ds, None, tmp_path / "out")
    files = sorted(p.name for p in (out / "images" / "rose").iterdir())
    assert len(files) == 2 and len(set(files)) == 2 and all(f.endswith(".png") for f in files)
    for f in files:
        with Image.open(out / "images" / "rose" / f) as im:
            assert im.mode == "RGB" and im.format == "PNG"
    assert json.loads((out / "classes.json").read_text()) == {"rose": "a photo of a rose object"}
    assert load_dataset(str(out)).counts == {"rose": 2}
