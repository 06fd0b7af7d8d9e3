"""Hugging Face Hub datasets: ``hub:<owner>/<name>[:split]``.

The dataset is opened with ``datasets.load_dataset(<owner>/<name>)``. Once downloaded it
lives in the local ``datasets`` cache (``$HF_HOME/datasets``) and reloads without network;
with ``HF_HUB_OFFLINE=1``, or when the Hub cannot be reached, only that cache is used (no
retry loop). A dataset that is not cached needs the network the first time: that case is
a :class:`DatasetError` saying so.

Columns: the image column is the first ``datasets.Image`` feature (else a column named
``image``/``img``/...); the label column is the first ``ClassLabel`` (its names are the
class names), else a string column named ``label``/``labels``/``class``/``category``/...
(class names = sorted unique values over all splits), else such an integer column without
names (class names ``"0"``, ``"1"``, ...). Rows with a missing label (None or negative)
or an image that does not decode are listed in ``skipped``.

Items have ``id = "<hub split>/<row>"`` and no path; every row is decoded once while
loading. When the dataset has no ``test``/``validation`` split, the test split is a
holdout of ``train`` by the folder rule (hash of the row id, see
:func:`diffmix.data.folder.holdout_test_ids`) and the train split is the rest, so no
held-out row is ever trained on.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any
from urllib.parse import urlparse

from PIL import Image

from diffmix.data.dataset import DatasetError, ImageDataset, Item, Skipped, fingerprint_of
from diffmix.data.folder import check_test_fraction, holdout_test_ids
from diffmix.data.images import ImageDecodeError, open_rgb, to_rgb

logger = logging.getLogger(__name__)

IMAGE_COLUMN_NAMES = ("image", "img", "picture", "photo", "pixel_values")
LABEL_COLUMN_NAMES = (
    "label", "labels", "class", "classes", "category", "categories", "species",
    "fine_label", "class_name", "breed", "target", "y",
)  # fmt: skip
TEST_SPLIT_NAMES = ("test", "validation", "valid", "val")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def parse_hub_spec(spec: str, default_split: str) -> tuple[str, str]:
    """``"hub:owner/name[:split]"`` -> ``(repo_id, split)``; ``DatasetError`` when malformed."""
    body = spec[len("hub:") :] if spec.startswith("hub:") else spec
    repo_id, sep, split = body.partition(":")
    if not _REPO_ID.match(repo_id) or (sep and not split):
        raise DatasetError(
            f"bad hub dataset spec {spec!r}; write hub:<owner>/<name> or hub:<owner>/<name>:<split>"
        )
    return repo_id, split or default_split


def load_hub(
    repo_id: str, *, split: str = "train", test_fraction: float = 0.2, spec: str | None = None
) -> ImageDataset:
    """Load one split of a Hub image-classification dataset (rules in the module docstring)."""
    # 1. Check inputs and open every split of the dataset (cache first, network if needed).
    check_test_fraction(test_fraction)
    spec = spec if spec is not None else f"hub:{repo_id}"
    splits = _open_dataset_dict(repo_id)

    # 2. Pick the split, or hold the test split out of train.
    source_split, holdout = _choose_split(repo_id, splits, split)
    table = splits[source_split]

    # 3. Columns and class names (shared by all splits).
    image_col = _image_column(repo_id, table)
    label_col, class_names, to_label = _label_column(repo_id, splits, image_col)

    # 4. Decode every row once; bad rows go to skipped.
    table = _undecoded(table, image_col)
    items: list[Item] = []
    skipped: list[Skipped] = []
    for row, record in enumerate(table.select_columns([image_col, label_col])):
        item_id = f"{source_split}/{row}"
        label = to_label(record[label_col])
        if label is None:
            skipped.append(Skipped(item_id, f"no label ({record[label_col]!r})"))
            continue
        try:
            decode_value(record[image_col])
        except ImageDecodeError as e:
            skipped.append(Skipped(item_id, e.reason))
            continue
        items.append(Item(id=item_id, label=label))
    if holdout:
        test_ids = holdout_test_ids(((it.label, it.id) for it in items), test_fraction)
        items = [it for it in items if (it.id in test_ids) == (split == "test")]
    if not items:
        raise DatasetError(
            f"no usable rows in split {split!r} of hub dataset {repo_id!r} "
            f"({len(skipped)} rows skipped)"
        )
    for s in skipped:
        logger.debug("skipped %s: %s", s.path, s.reason)
    if skipped:
        logger.info("%s: skipped %d rows (see the dataset's skipped list)", spec, len(skipped))

    # 5. Fingerprint from the name, split, classes and the table's own fingerprint.
    content = getattr(table, "_fingerprint", None) or table.num_rows
    fingerprint = fingerprint_of(
        ["hub", repo_id, split, source_split, holdout and test_fraction, class_names, content,
         [[it.id, it.label] for it in items]]
    )  # fmt: skip
    return ImageDataset(
        spec=spec,
        split=split,
        class_names=class_names,
        items=items,
        loader=HubLoader(table, image_col),
        skipped=skipped,
        fingerprint=fingerprint,
    )


class HubLoader:
    """Loader of hub items: decodes row ``int(id.split('/')[-1])`` of one table."""

    def __init__(self, table: Any, image_col: str) -> None:
        self.table = table
        self.image_col = image_col

    def __call__(self, item: Item) -> Image.Image:
        row = int(item.id.rsplit("/", 1)[-1])
        return decode_value(self.table[row][self.image_col])


def decode_value(value: Any) -> Image.Image:
    """An RGB image from a hub cell: ``{"bytes", "path"}`` dict, bytes, a path or a PIL image."""
    if isinstance(value, Image.Image):
        try:
            value.load()
        except Exception as e:
            raise ImageDecodeError(f"corrupt image: {e}") from None
        return to_rgb(value)
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return open_rgb(value["bytes"])
        if value.get("path"):
            return _open_path(value["path"])
        raise ImageDecodeError("empty image cell")
    if isinstance(value, (bytes, bytearray)):
        return open_rgb(bytes(value))
    if isinstance(value, str):
        return _open_path(value)
    if value is None:
        raise ImageDecodeError("empty image cell")
    raise ImageDecodeError(f"not an image ({type(value).__name__} cell)")


def _open_path(path: str) -> Image.Image:
    try:
        return open_rgb(path)
    except OSError as e:
        raise ImageDecodeError(f"unreadable image file {path!r} ({e.strerror or e})") from None


# --------------------------------------------------------------------------- opening


def _open_dataset_dict(repo_id: str) -> Mapping[str, Any]:
    """All splits of ``repo_id``: from the Hub (and its cache) when reachable, else the cache."""
    import datasets

    from_cache_only = datasets.config.HF_HUB_OFFLINE or not hub_reachable()
    try:
        if from_cache_only and not datasets.config.HF_HUB_OFFLINE:
            logger.debug("Hugging Face Hub unreachable; looking for %s in the local cache", repo_id)
            result = _load_cached(repo_id)
        else:
            result = datasets.load_dataset(repo_id)
    except DatasetError:
        raise
    except Exception as e:
        raise _translate_error(repo_id, e) from None
    if not isinstance(result, Mapping):  # a single Dataset
        result = {"train": result}
    return result


def _load_cached(repo_id: str) -> Mapping[str, Any]:
    """Reload a dataset prepared earlier from ``datasets``' cache, without any network."""
    from datasets.packaged_modules.cache.cache import Cache

    try:
        builder = Cache(
            repo_id=repo_id, dataset_name=repo_id.split("/")[-1], version="auto", hash="auto"
        )
    except ValueError as e:
        if "Couldn't find cache" in str(e):
            raise ConnectionError(f"not cached ({e})") from None
        raise
    builder.download_and_prepare()
    return builder.as_dataset()


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when a TCP connection to the Hub endpoint opens within ``timeout`` seconds.

    Behind an HTTP(S) proxy the direct check says nothing, so it is skipped (True).
    """
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    import datasets

    url = urlparse(datasets.config.HF_ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _translate_error(repo_id: str, error: Exception) -> DatasetError:
    """A one-line DatasetError telling the user what went wrong and what to do."""
    name = type(error).__name__
    offline = isinstance(error, ConnectionError) or any(
        key in name for key in ("Offline", "ConnectError", "Timeout", "LocalEntryNotFound")
    )
    if offline:
        return DatasetError(
            f"hub dataset {repo_id!r} is not in the local cache and the Hugging Face Hub cannot "
            f"be reached: the network is needed to download {repo_id} the first time. Connect "
            f"and run again (with HF_HUB_OFFLINE unset), or pre-download it on a machine with network "
            f"(datasets.load_dataset({repo_id!r})) and point HF_HOME at that cache"
        )
    if name in ("DatasetNotFoundError", "RepositoryNotFoundError", "GatedRepoError"):
        return DatasetError(
            f"hub dataset {repo_id!r} was not found or cannot be accessed ({error}); "
            f"check the name at https://huggingface.co/datasets/{repo_id}"
        )
    return DatasetError(f"cannot load hub dataset {repo_id!r}: {name}: {error}")


def _choose_split(repo_id: str, splits: Mapping[str, Any], split: str) -> tuple[str, bool]:
    """``(hub split to read, hold test out of it?)`` for the requested ``split``.

    A dataset without a test-like split gets the hash holdout on its train split, for both
    ``split="train"`` (holdout removed) and ``split="test"`` (holdout only).
    """
    has_test = any(name in splits for name in TEST_SPLIT_NAMES)
    if split == "train" and "train" in splits:
        return "train", not has_test
    if split in splits:
        return split, False
    if split == "test":
        for name in TEST_SPLIT_NAMES:
            if name in splits:
                return name, False
        if "train" in splits:
            return "train", True
    raise DatasetError(
        f"hub dataset {repo_id!r} has no split {split!r}; available: {', '.join(splits)}"
    )


# --------------------------------------------------------------------------- columns


def _image_column(repo_id: str, table: Any) -> str:
    import datasets

    features = table.features
    for col, feat in features.items():
        if isinstance(feat, datasets.Image):
            return col
    for col in features:
        if col.lower() in IMAGE_COLUMN_NAMES:
            return col
    raise DatasetError(
        f"hub dataset {repo_id!r} has no image column (an Image feature or a column named "
        f"{'/'.join(IMAGE_COLUMN_NAMES)}); columns: {', '.join(features)}"
    )


def _label_column(
    repo_id: str, splits: Mapping[str, Any], image_col: str
) -> tuple[str, list[str], Callable[[Any], int | None]]:
    """``(column, class_names, value -> label or None)`` from the features of all splits."""
    import datasets

    features = next(iter(splits.values())).features
    for col, feat in features.items():
        if col != image_col and isinstance(feat, datasets.ClassLabel):
            return col, list(feat.names), partial(_int_label, n=len(feat.names))
    named = [c for c in features if c != image_col and c.lower() in LABEL_COLUMN_NAMES]
    named.sort(key=lambda c: LABEL_COLUMN_NAMES.index(c.lower()))
    for col in named:
        dtype = getattr(features[col], "dtype", None)
        present = [t for t in splits.values() if col in t.column_names]
        if dtype in ("string", "large_string"):
            values = sorted({v for t in present for v in t.unique(col) if isinstance(v, str)})
            return col, values, partial(_str_label, index={v: i for i, v in enumerate(values)})
        if isinstance(dtype, str) and dtype.startswith(("int", "uint")):
            top = max((int(v) for t in present for v in t.unique(col) if v is not None), default=-1)
            if top < 0:
                continue
            return col, [str(i) for i in range(top + 1)], partial(_int_label, n=top + 1)
    raise DatasetError(
        f"hub dataset {repo_id!r} has no label column (a ClassLabel feature, or a text or "
        f"integer column named {'/'.join(LABEL_COLUMN_NAMES)}); columns: {', '.join(features)}"
    )


def _str_label(value: Any, index: Mapping[str, int]) -> int | None:
    return index.get(value) if isinstance(value, str) else None


def _int_label(value: Any, n: int) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        label = int(value)
    except (TypeError, ValueError):
        return None
    return label if 0 <= label < n else None


def _undecoded(table: Any, image_col: str) -> Any:
    """The table with its Image column left as ``{"bytes", "path"}`` (decoded by us)."""
    import datasets

    if isinstance(table.features[image_col], datasets.Image):
        return table.cast_column(image_col, datasets.Image(decode=False))
    return table
