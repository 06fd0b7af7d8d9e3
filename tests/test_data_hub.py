"""Hub datasets without network: a real ``datasets`` cache made on the fly, used offline.

``datasets.load_dataset("owner/name")`` offline does not read the hub snapshot cache: it
reloads the Arrow files that a previous online load prepared under
``$HF_DATASETS_CACHE/<owner>___<name>/<config>/<version>/<hash>/``. The fixture prepares
exactly that from a local parquet file (the same Parquet builder an online load uses), so
the code under test goes through the real offline path of ``datasets``.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

datasets = pytest.importorskip("datasets")
from datasets.packaged_modules.parquet.parquet import Parquet  # noqa: E402

from diffmix.data import DatasetError, load_dataset, make_subset  # noqa: E402
from diffmix.data import hub as hub_mod  # noqa: E402


def _png(value: int, size: int = 8) -> bytes:
    rng = np.random.default_rng(value)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _cache_dataset(
    cache: Path, work: Path, repo_id: str, splits: dict[str, datasets.Dataset]
) -> None:
    """Prepare ``splits`` as ``datasets`` would after downloading ``repo_id`` once."""
    owner, name = repo_id.split("/")
    files = {}
    for split, table in splits.items():
        files[split] = [str(work / f"{name}-{split}-00000-of-00001.parquet")]
        table.to_parquet(files[split][0])
    builder = Parquet(cache_dir=str(work / "build"), dataset_name=name, data_files=files)
    builder.download_and_prepare()
    prepared = Path(builder.cache_dir)
    shutil.copytree(prepared, cache / f"{owner}___{name}" / "default" / "0.0.0" / "0123abcd")


#: Rows of someowner/flowers: 3 classes x 4 good images, then 3 bad rows.
GOOD_ROWS = [(_png(i), ["tulip", "rose", "daisy"][i % 3]) for i in range(12)]
BAD_ROWS = [(b"not an image at all", "rose"), (_png(99)[:60], "tulip"), (_png(98), None)]


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("hf-datasets-cache")
    work = tmp_path_factory.mktemp("hf-work")
    image_features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.Value("string")}
    )
    rows = GOOD_ROWS + BAD_ROWS
    flowers = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b, _ in rows], "label": [lab for _, lab in rows]},
        features=image_features,
    )
    _cache_dataset(cache, work, "someowner/flowers", {"train": flowers})
    labelled = datasets.Features(
        {"img": datasets.Image(), "extra": datasets.Value("int32"),
         "fine": datasets.ClassLabel(names=["cat", "dog"])}
    )  # fmt: skip

    def pets(n: int, offset: int) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {"img": [{"bytes": _png(offset + i), "path": None} for i in range(n)],
             "extra": list(range(n)), "fine": [i % 2 for i in range(n)]},
            features=labelled,
        )  # fmt: skip

    _cache_dataset(cache, work, "someowner/pets", {"train": pets(6, 0), "test": pets(4, 50)})
    return cache


@pytest.fixture
def offline(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``datasets`` in offline mode, reading only the fixture's cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hf_cache)
    return hf_cache


def test_string_labels_bad_rows_and_ids(offline: Path) -> None:
    train = load_dataset("hub:someowner/flowers")
    test = load_dataset("hub:someowner/flowers", split="test")

    assert train.class_names == ["daisy", "rose", "tulip"]  # sorted unique strings
    assert {**train.counts} == {"daisy": 3, "rose": 3, "tulip": 3}
    assert test.counts == {"daisy": 1, "rose": 1, "tulip": 1}  # held out of train
    assert not {it.id for it in train.items} & {it.id for it in test.items}
    assert {it.id for it in train.items + test.items} == {f"train/{r}" for r in range(12)}
    reasons = {s.path: s.reason for s in train.skipped}
    assert reasons == {"train/12": "not an image", "train/13": "truncated image",
                       "train/14": "no label (None)"}  # fmt: skip
    assert all(it.path is None for it in train.items)
    row = int(train.items[0].id.split("/")[1])
    image = train.image(0)
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(GOOD_ROWS[row][0]))))
    assert train.class_names[train.items[0].label] == GOOD_ROWS[row][1]
    again = load_dataset("hub:someowner/flowers")
    assert again.fingerprint == train.fingerprint != test.fingerprint
    assert make_subset(train, shots=2).counts == {"daisy": 2, "rose": 2, "tulip": 2}


def test_class_label_column_and_given_test_split(offline: Path) -> None:
    train = load_dataset("hub:someowner/pets")
    test = load_dataset("hub:someowner/pets", split="test")
    assert train.class_names == ["cat", "dog"]  # ClassLabel names, not the int column
    assert train.counts == {"cat": 3, "dog": 3} and test.counts == {"cat": 2, "dog": 2}
    assert test.items[0].id == "test/0"
    explicit = load_dataset("hub:someowner/pets:test")
    assert explicit.split == "test" and len(explicit) == 4
    with pytest.raises(DatasetError, match="no split 'validation'; available: train, test"):
        load_dataset("hub:someowner/pets:validation")


def test_not_cached_offline_says_network_is_needed(offline: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("hub:someowner/missing")
    message = str(err.value)
    assert "network is needed to download someowner/missing the first time" in message
    assert "HF_HOME" in message


def test_unreachable_hub_uses_cache_without_retries(
    hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not in offline mode, but no network: the cache is used and no request is made."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hf_cache)
    monkeypatch.setattr(hub_mod, "hub_reachable", lambda timeout=3.0: False)

    def no_network(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("datasets.load_dataset must not be called when the hub is unreachable")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    assert load_dataset("hub:someowner/pets").counts == {"cat": 3, "dog": 3}
    with pytest.raises(DatasetError, match="network is needed to download someowner/nope"):
        load_dataset("hub:someowner/nope")


def test_int_labels_and_named_image_column(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain ``img`` bytes column and an int ``label`` column without names."""
    table = datasets.Dataset.from_dict(
        {"img": [_png(i) for i in range(6)] + [b""], "label": [0, 2, 2, 0, 2, -1, 0]}
    )
    monkeypatch.setattr(hub_mod, "_open_dataset_dict", lambda repo_id: {"train": table})
    ds = load_dataset("hub:someowner/ints")
    held_out = load_dataset("hub:someowner/ints", split="test")
    assert ds.class_names == ["0", "1", "2"]
    assert ds.counts == {"0": 1, "1": 0, "2": 2}  # only a train split: 1 per class held out
    assert held_out.counts == {"0": 1, "1": 0, "2": 1}
    assert {s.path: s.reason for s in ds.skipped} == {"train/5": "no label (-1)",
                                                      "train/6": "zero-byte file"}  # fmt: skip
    assert ds.image(0).size == (8, 8)


def test_missing_columns_and_bad_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    table = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    monkeypatch.setattr(hub_mod, "_open_dataset_dict", lambda repo_id: {"train": table})
    with pytest.raises(DatasetError, match="no image column .* columns: text, label"):
        load_dataset("hub:someowner/text")
    for spec in ("hub:", "hub:a/b/c", "hub:a/b:", "hub:../x"):
        with pytest.raises(DatasetError, match="bad hub dataset spec"):
            load_dataset(spec)
