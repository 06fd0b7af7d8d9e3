"""Image-folder datasets: class subfolders on disk.

A folder spec is read by the first rule that matches:

1. **Given splits** -- ``<root>/train/<class>/...`` and ``<root>/test/<class>/...``
   (``val/`` or ``validation/`` stand in for ``test/``). ``split="test"`` reads the test
   (or val) folder. Masks: ``<root>/masks/<split folder>/<class>/<same relative name>``.
   When only ``train/`` exists, the test split is held out of it as in rule 3.
2. **Exported layout** -- ``<root>/images/<class>/...`` with masks in
   ``<root>/masks/<class>/<same name>``; this is what
   :func:`diffmix.data.export_dataset` writes, so exports reload. The folder is exactly
   one split: the one recorded in ``subset.json`` (``"train"`` when absent); asking for
   another split is a :class:`DatasetError`.
3. **Class folders** -- ``<root>/<class>/...``. The split is a deterministic stratified
   holdout: per class, files are sorted by the sha1 of their relative path; the first
   ``round(test_fraction * n)`` (half rounds up; at least 1 when the class has >= 2 usable
   images, none when it has 1, never all of them) are the test split, the rest train.
   A ``masks/`` folder at the root is not a class: it holds ``masks/<class>/<same name>``.

In every layout: the class name is the class folder's name, images at any depth below a
class folder count, classes are sorted by name (train and test share the union of both
splits' class folders), and items are sorted by their path relative to ``<root>`` (which is
also their ``id``). A mask is the file with the same relative path, or the same path with a
``.png`` extension. ``classes.json`` at the root (class -> prompt) fills ``class_prompts``;
the ``"superclass"`` of ``demo.json`` (or of an export's ``subset.json``) fills
``superclass``. Hidden files and folders (names starting with ``.``) and ``__MACOSX`` are
ignored silently, as are non-image files next to the class folders (READMEs, metadata
files); every other file that is not a usable image -- including an image lying next to
the class folders -- is listed in ``skipped`` with the reason. Each image is fully
decoded once while loading, so a dataset that loads has no unreadable images.

The fingerprint depends on the split, the class names and each item's id, label and file
content (sha1), not on where the folder lives: the same files give the same fingerprint.

**Scan cache.** Decoding every file is the cost of a load (a CUB-sized folder: thousands of
photos, tens of seconds). Each load records, per file, its size, modification time (ns), sha1
and skip reason in ``<workspace>/cache/scan/<hash of the folder path>.json``; the next load of
the same folder decodes and hashes only the files whose size or modification time changed
(the rule ``make`` and ``git`` use). A file modified less than :data:`RACY_NS` before the scan
is not recorded (its timestamp may not tell a second write in the same clock tick apart, as
git's "racily clean" entries). An unwritable workspace only means no cache.

Over 400 lines because the three layout rules, the holdout and the scan cache are one reader: the
cache records exactly what the scan decodes and skips, so the two cannot be changed apart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from diffmix.data.dataset import DatasetError, ImageDataset, Item, Skipped, fingerprint_of
from diffmix.data.images import ImageDecodeError, extension_reason, is_image_name, open_rgb

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
#: Folder names accepted for the evaluation split, in order of preference (rule 1).
TEST_DIR_NAMES = ("test", "val", "validation")
LAYOUT_HELP = (
    "expected <folder>/<class>/<images>, or <folder>/train/<class>/... with "
    "<folder>/test/<class>/... (or val/), or <folder>/images/<class>/..."
)


@dataclass(frozen=True)
class _Layout:
    """Where a split's images are: ``image_root`` holds the class folders."""

    name: str  # "splits", "train-only", "images" or "classes"
    image_root: Path
    mask_root: Path | None
    holdout: bool  # True: the split is a hash holdout of image_root
    class_roots: tuple[Path, ...]  # folders whose class subfolders define class_names


@dataclass(frozen=True)
class _Candidate:
    id: str
    class_name: str
    path: Path
    rel_in_root: str  # path relative to the image root (for masks)


# ~105 lines: steps 1-6 of one scan share the layout, the scan cache and the skipped list.
def load_folder(
    root: str | os.PathLike,
    *,
    split: str = "train",
    test_fraction: float = 0.2,
    spec: str | None = None,
) -> ImageDataset:
    """Load one split of an image-folder dataset (rules in the module docstring).

    ``test_fraction`` in (0, 1) is the share of each class held out for the test split
    when the folder has no given splits. ``spec`` is recorded on the dataset (defaults to
    the folder path). Raises :class:`DatasetError` when the folder is missing, has none of
    the expected layouts, or has no usable image in the requested split.
    """
    # 1. Check inputs.
    root = Path(root).expanduser().absolute()
    check_split(split)
    check_test_fraction(test_fraction)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {str(root)!r}; give an existing folder")
    spec = spec if spec is not None else str(root)

    # 2. Find the layout and scan the files of the requested split.
    layout = _detect_layout(root, split)
    class_names = sorted(
        {c for r in layout.class_roots for c in _class_folder_names(r, at_root=r == root)}
    )
    candidates, skipped = _scan(root, layout.image_root)

    # 3. Decode every image once; unusable ones go to skipped. A file the scan cache saw
    #    with the same size and modification time is not decoded again.
    known = _read_scan_cache(root)
    seen: dict[str, list] = {}
    good: list[tuple[_Candidate, str]] = []
    now_ns = time.time_ns()
    for cand in candidates:
        try:
            st = cand.path.stat()
            hit = known.get(cand.id)
            if hit is not None and hit[:2] == [st.st_size, st.st_mtime_ns]:
                seen[cand.id] = hit
                if hit[2] is not None:
                    good.append((cand, hit[2]))
                else:
                    skipped.append(Skipped(cand.id, hit[3]))
                continue
            data = cand.path.read_bytes()
            open_rgb(data)
        except ImageDecodeError as e:
            skipped.append(Skipped(cand.id, e.reason))
            _remember(seen, cand.id, st, None, e.reason, now_ns)
            continue
        except OSError as e:
            skipped.append(Skipped(cand.id, f"unreadable file ({e.strerror or e})"))
            continue
        digest = hashlib.sha1(data).hexdigest()
        _remember(seen, cand.id, st, digest, None, now_ns)
        good.append((cand, digest))
    if seen != known:
        _write_scan_cache(root, seen)

    # 4. Hold out the test split when the folder has no given splits.
    if layout.holdout:
        test_ids = holdout_test_ids(((c.class_name, c.id) for c, _ in good), test_fraction)
        want_test = split == "test"
        good = [(c, h) for c, h in good if (c.id in test_ids) == want_test]

    # 5. Build items (sorted by id) with masks.
    good.sort(key=lambda ch: ch[0].id)
    label_of = {name: i for i, name in enumerate(class_names)}
    items = [
        Item(
            id=c.id,
            label=label_of[c.class_name],
            path=str(c.path),
            mask_path=_find_mask(layout.mask_root, c.rel_in_root),
        )
        for c, _ in good
    ]
    if not items:
        raise DatasetError(
            f"no usable images in the {split!r} split of {str(root)!r} "
            f"({len(skipped)} files skipped); {LAYOUT_HELP}"
        )
    skipped.sort(key=lambda s: s.path)
    for s in skipped:
        logger.debug("skipped %s: %s", s.path, s.reason)
    if skipped:
        logger.info("%s: skipped %d files (see the dataset's skipped list)", spec, len(skipped))

    # 6. Metadata and fingerprint.
    fingerprint = fingerprint_of(
        ["folder", split, class_names, [[c.id, label_of[c.class_name], h] for c, h in good]]
    )
    return ImageDataset(
        spec=spec,
        split=split,
        class_names=class_names,
        items=items,
        loader=load_item_path,
        skipped=skipped,
        fingerprint=fingerprint,
        class_prompts=_read_class_prompts(root, class_names),
        superclass=_read_superclass(root),
        root=str(root.resolve()),
    )


#: Files modified less than this (ns) before a scan are decoded again by the next scan.
RACY_NS = 2_000_000_000
_SCAN_CACHE_VERSION = 1


def _scan_cache_path(root: Path) -> Path:
    from diffmix import workspace

    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return workspace.home() / "cache" / "scan" / f"{key}.json"


def _read_scan_cache(root: Path) -> dict[str, list]:
    """``{id: [size, mtime_ns, sha1 | None, reason | None]}`` of the last scan (empty if none)."""
    try:
        data = json.loads(_scan_cache_path(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _SCAN_CACHE_VERSION:
        return {}
    if data.get("root") != str(root.resolve()) or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _remember(seen: dict, item_id: str, st, digest: str | None, reason: str | None,
              now_ns: int) -> None:  # fmt: skip
    if now_ns - st.st_mtime_ns >= RACY_NS:
        seen[item_id] = [st.st_size, st.st_mtime_ns, digest, reason]


def _write_scan_cache(root: Path, files: dict[str, list]) -> None:
    path = _scan_cache_path(root)
    record = {"version": _SCAN_CACHE_VERSION, "root": str(root.resolve()), "files": files}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:  # a read-only workspace: the next load decodes again
        logger.debug("scan cache not written (%s)", e)


def load_item_path(item: Item) -> Image.Image:
    """Loader of file-backed items: the RGB image at ``item.path`` (see ``open_rgb``)."""
    if item.path is None:
        raise ValueError(f"item {item.id!r} has no file path")
    return open_rgb(item.path)


# --------------------------------------------------------------------------- splits


def check_split(split: str) -> None:
    """Raise ``ValueError`` unless ``split`` is ``"train"`` or ``"test"``."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def check_test_fraction(test_fraction: float) -> None:
    """Raise ``ValueError`` unless ``0 < test_fraction < 1``."""
    if not (isinstance(test_fraction, (int, float)) and 0.0 < test_fraction < 1.0):
        raise ValueError(
            f"test_fraction must be a number between 0 and 1 (exclusive), got {test_fraction!r}"
        )


def holdout_count(n: int, test_fraction: float) -> int:
    """How many of a class's ``n`` images go to the held-out test split.

    ``round(test_fraction * n)`` with halves rounded up, at least 1 when ``n >= 2`` and at
    most ``n - 1`` (a class always keeps a training image); 0 when ``n <= 1``.
    """
    if n <= 1:
        return 0
    k = math.floor(test_fraction * n + 0.5)
    return min(max(k, 1), n - 1)


def holdout_test_ids(labelled_ids: Iterable[tuple[object, str]], test_fraction: float) -> set[str]:
    """The ids held out as test from ``(class, id)`` pairs: per class, the first
    :func:`holdout_count` ids in order of ``sha1(id)``. Deterministic on every machine."""
    by_class: dict[object, list[str]] = {}
    for cls, item_id in labelled_ids:
        by_class.setdefault(cls, []).append(item_id)
    test: set[str] = set()
    for ids in by_class.values():
        ordered = sorted(ids, key=lambda i: (hashlib.sha1(i.encode()).hexdigest(), i))
        test.update(ordered[: holdout_count(len(ordered), test_fraction)])
    return test


# --------------------------------------------------------------------------- layout


def is_ignored_name(name: str) -> bool:
    """Hidden names (leading dot) and macOS archive debris are ignored silently."""
    return name.startswith(".") or name == "__MACOSX"


def _subdirs(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_dir() and not is_ignored_name(p.name)]


def _class_folder_names(folder: Path, *, at_root: bool = False) -> list[str]:
    """Class folder names in ``folder``; at a dataset root ``masks/`` is reserved."""
    return [p.name for p in _subdirs(folder) if not (at_root and p.name == "masks")]


def _has_classes(folder: Path, *, at_root: bool = False) -> bool:
    return folder.is_dir() and bool(_class_folder_names(folder, at_root=at_root))


def _detect_layout(root: Path, split: str) -> _Layout:
    train = root / "train"
    test = next((root / n for n in TEST_DIR_NAMES if _has_classes(root / n)), None)
    masks = root / "masks"
    if _has_classes(train) and test is not None:  # rule 1
        chosen = train if split == "train" else test
        return _Layout("splits", chosen, masks / chosen.name, False, (train, test))
    if _has_classes(train):  # rule 1, train only: hold the test split out of train/
        return _Layout("train-only", train, masks / "train", True, (train,))
    if _has_classes(root / "images"):  # rule 2
        recorded = _read_json(root / "subset.json").get("split", "train")
        if split != recorded:
            raise DatasetError(
                f"{str(root)!r} holds one exported split ({recorded!r}) under images/; "
                f"load it with split={recorded!r}, or arrange it as train/ and test/ folders"
            )
        return _Layout("images", root / "images", masks, False, (root / "images",))
    if _has_classes(root, at_root=True):  # rule 3
        return _Layout("classes", root, masks, True, (root,))
    raise DatasetError(f"no class subfolders in {str(root)!r}; {LAYOUT_HELP}")


def _scan(root: Path, image_root: Path) -> tuple[list[_Candidate], list[Skipped]]:
    """Every file below the class folders of ``image_root``: image candidates and skips."""
    candidates: list[_Candidate] = []
    skipped: list[Skipped] = []
    for name in _loose_files(image_root):  # non-image files here are docs or metadata
        if is_image_name(name):
            skipped.append(Skipped(_rel(image_root / name, root), "image outside any class folder"))
    names = set(_class_folder_names(image_root, at_root=image_root == root))
    class_dirs = [d for d in _subdirs(image_root) if d.name in names]
    for class_dir in class_dirs:
        for path in _walk_files(class_dir):
            rel_id = _rel(path, root)
            if is_image_name(path.name):
                candidates.append(_Candidate(rel_id, class_dir.name, path, _rel(path, image_root)))
            else:
                skipped.append(Skipped(rel_id, extension_reason(path.name)))
    return candidates, skipped


def _loose_files(folder: Path) -> list[str]:
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
    except OSError:
        return []
    return [n for n in names if not is_ignored_name(n)]


def _walk_files(folder: Path) -> list[Path]:
    """Files at any depth below ``folder``, hidden entries pruned, in sorted order."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored_name(d))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not is_ignored_name(f))
    return out


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _find_mask(mask_root: Path | None, rel_in_root: str) -> str | None:
    if mask_root is None:
        return None
    same = mask_root / rel_in_root
    for cand in (same, same.with_suffix(".png")):
        if cand.is_file():
            return str(cand)
    return None


# --------------------------------------------------------------------------- metadata


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"cannot read {str(path)!r}: {e}; fix or remove the file") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def _read_class_prompts(root: Path, class_names: Sequence[str]) -> dict[str, str]:
    data = _read_json(root / "classes.json")
    unknown = sorted(set(data) - set(class_names))
    if unknown:
        logger.warning("classes.json names unknown classes (ignored): %s", ", ".join(unknown))
    bad = sorted(k for k, v in data.items() if not isinstance(v, str))
    if bad:
        raise DatasetError(
            f"classes.json in {str(root)!r} must map class -> prompt text; "
            f"non-text prompt for: {', '.join(map(str, bad))}"
        )
    return {c: data[c] for c in class_names if c in data}


def _read_superclass(root: Path) -> str | None:
    for name in ("demo.json", "subset.json"):
        value = _read_json(root / name).get("superclass")
        if isinstance(value, str) and value:
            return value
    return None
