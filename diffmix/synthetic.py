"""The synthetic-dataset folder: the one generate → train → inspect contract (writer and reader).

``diffmix generate`` writes such a folder, ``diffmix train --synthetic`` and the Inspect page
read it; every one of them goes through this module, so the row format lives in one place
(DESIGN.md §3, "Synthetic dataset directory").

Folder ``out``::

    <target class>/<task:07d>.png   the images (each at its source's size)
    metadata.jsonl     one JSON object per line, one line per image (:data:`ROW_FIELDS`)
    metadata.<rank>.jsonl   a process's rows during a multi-process run (merged at its end)
    config.json        the resolved generation config + class_names, dataset, subset,
                       fingerprints (``format`` = :data:`FORMAT`)
    plan.jsonl         the plan, one task per line
    README.md          dataset card (:func:`dataset_card`); grid.png: sample images
    status.json, events.jsonl, log.txt, CANCEL   run-directory files (:mod:`diffmix.runs`)

``datasets.load_dataset("imagefolder", data_dir=out)`` opens it as well (one row per image, the
metadata as columns).

**Rows** (:data:`ROW_FIELD_DOCS` documents every field with its unit and range). The label a
row carries is read by the rule it names (``label_rule``, :mod:`diffmix.labels`):
``diffmix-gamma`` rows (diff-mix, real-mix, ti-mix) hold ``(1 - s^γ, s^γ)`` over (source,
target) and training recomputes them with its own γ; ``pixel-share`` rows (mixup, cutmix) hold
the exact pixel share of the target image and are used as written; ``hard`` rows are one-hot
on the target.

**Writing** (:func:`append_rows`, :func:`save_png`, :func:`fsync_write`): each image is written
atomically (temp file, fsync, ``os.replace``), then a batch's rows are appended with one write +
flush + fsync. A crash therefore leaves at most: temp files, images without a row, and one torn
last line -- all of which :func:`repair` removes.

**Reading** (:func:`read_rows`, :func:`read_folder`, :func:`tail_rows`): one read of the file,
torn or unparsable lines skipped; whether a row's image exists is answered from one listing of
the class folders (:func:`image_files`), not a ``stat`` per row, so a 60k-image folder scans in
one pass. :func:`scan` is the resume scan (finished tasks, rows of every rank file);
:func:`merge` / :func:`repair` turn its result into one clean ``metadata.jsonl``.

(Longer than ~400 lines on purpose: it is the whole contract -- the documented row format,
writer, readers, resume scan, fingerprints and card -- kept together so that writer and
reader cannot drift apart.)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import stat
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:
    import orjson as _orjson
except ImportError:  # optional: the standard json module reads the same rows
    _orjson = None

from diffmix.adapter import adapter_fingerprint  # noqa: F401 (its home since the split; former path)
from diffmix.runs import atomic_write, temp_path

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"
PLAN_FILE = "plan.jsonl"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
GRID_FILE = "grid.png"
#: ``config.json``'s ``format`` of a generation folder.
FORMAT = "diffmix-synthetic/1"
TMP_SUFFIX = ".tmp"
#: File name of a task's image (``<class>/<task:07d>.png``).
TASK_PNG = re.compile(r"^\d{7,}\.png$")
#: Files a run directory may hold before its config is written (a run stopped very early).
RUN_FILES = frozenset(
    {"log.txt", "status.json", "events.jsonl", "CANCEL", "job.json", "stdout.log", "request.yaml"}
)

#: Every field of a metadata row, in the order written, with its meaning, unit and range.
ROW_FIELD_DOCS: dict[str, str] = {
    "file_name": "image path relative to the folder, '<target class dir>/<task:07d>.png'",
    "task": "plan task id, int in [0, planned); unique in a folder",
    "batch": "plan batch, int >= 0 (one shared denoising loop; the unit of exactness)",
    "source_index": "index of the source image in the train split, int >= 0; null for *-gen",
    "source_id": "stable id of the source image (dataset item id); null for *-gen",
    "source_class": "class name of the source (*-gen: the target class)",
    "target_class": "class name the image was translated toward (its prompt's class)",
    "strength": "img2img strength s in (0, 1] (mixup/cutmix: the requested target pixel "
    "share; *-gen: 1)",
    "seed": "the image's generator seed, int in [0, 2^32) (generate.task_seed)",
    "strategy": "strategy name (diffmix.translate.STRATEGIES), e.g. diff-mix, mixup",
    "prompt": "text prompt of the target (empty for mixup/cutmix)",
    "soft_label": "{class name: weight}, weights in [0, 1] summing to 1: diff-mix rows "
    "(1 - s^γ) on the source and s^γ on the target; mixup/cutmix the exact pixel share; "
    "hard rows 1 on the target",
    "label_rule": "how training reads the label (diffmix.labels.LABEL_RULES): "
    "'diffmix-gamma' (recomputed with the run's γ), 'pixel-share' (used as written), 'hard'",
    "faithfulness": "judge probability of the target class in [0, 1]; null when not scored",
    "diversity": "distance of the image to its source in [0, 2] (LPIPS or 1 - feature "
    "cosine); null when not scored or without a source",
    "judge": "the judge that scored the row (e.g. lite0, color); null when not scored",
    "kept": "bool: false = dropped by the faithfulness filter (file stays, training skips it)",
    "partner_index": "mixup/cutmix partner image index in the train split; else null",
    "partner_id": "mixup/cutmix partner image id; else null",
    "steps_run": "denoising steps actually run, int >= 0 (int(steps·s); 0 for mixup/cutmix)",
    "num_inference_steps": "timestep grid size at s = 1, int in [1, 1000]",
    "guidance_scale": "classifier-free guidance scale, float >= 0 (<= 1: off)",
    "gamma": "soft-label exponent γ > 0 the stored diff-mix soft_label was written with",
    "model": "base model spec (nano, a diffusers folder or a hub id)",
    "model_fingerprint": "16-hex sha256 of the model folder's files, or 'hub:<id>'",
    "adapter": "adapter folder of diff-*/ti-* strategies; else null",
    "adapter_fingerprint": "16-hex sha256 of the adapter's files; null without adapter",
    "dataset_fingerprint": "fingerprint of the train split the sources come from",
    "width": "image width in pixels, int >= 1",
    "height": "image height in pixels, int >= 1",
}
#: Keys of every metadata row, in order.
ROW_FIELDS = tuple(ROW_FIELD_DOCS)


# --------------------------------------------------------------------------- writing


#: The one atomic write (temp file, fsync, ``os.replace``) is :mod:`diffmix.runs`'s; these
#: names stay (callers and the fault tests, which patch ``fsync_write`` to fill the disk).
tmp_path = temp_path
fsync_write = atomic_write


def save_png(image, path: Path) -> None:
    """Save a PIL image as PNG atomically (a half-written image never has the final name)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    fsync_write(path, buf.getvalue())


def rows_text(rows: Iterable[dict]) -> str:
    """JSONL text of ``rows`` (one object per line)."""
    return "".join(json.dumps(r) + "\n" for r in rows)


def append_rows(path: Path, rows: Sequence[dict]) -> None:
    """Append rows to a JSONL file in one write, then flush + fsync."""
    text = rows_text(rows)
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_rows(path: Path, rows: Sequence[dict], current: str | None = None) -> bool:
    """Replace a JSONL file by ``rows`` atomically, only if its text changes; True if written.

    ``current``: the file's text when the caller has just read it (saves a read), else read.
    """
    text = rows_text(rows)
    if current is None and path.is_file():
        current = path.read_text()
    if current == text or (not rows and current is None):
        return False
    fsync_write(path, text.encode())
    return True


def class_dir(name: str) -> str:
    """A folder name for a class (path separators and leading dots replaced)."""
    safe = name.replace("/", "_").replace("\\", "_").strip()
    return safe.lstrip(".") or "class"


def image_name(target_class: str, task: int) -> str:
    """``file_name`` of a task's image: ``<class dir>/<task:07d>.png``."""
    return f"{class_dir(target_class)}/{task:07d}.png"


def rank_file(out: Path, rank: int, world: int) -> Path:
    """The rows file a process appends to: ``metadata.jsonl`` alone, else per rank."""
    return out / (METADATA_FILE if world == 1 else f"metadata.{rank}.jsonl")


def rank_files(out: Path) -> list[Path]:
    """The per-process rows files of a multi-process run not merged yet."""
    return sorted(out.glob("metadata.*.jsonl"))


# --------------------------------------------------------------------------- reading


def _parse(text: str) -> tuple[list[tuple[int, Any]], list[tuple[int, str]]]:
    """``(lineno, value)`` of each parsable non-empty line, ``(lineno, error)`` of the rest."""
    good, bad = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            good.append((lineno, _loads(line)))
        except json.JSONDecodeError as e:
            bad.append((lineno, str(e)))
    return good, bad


def _loads(line: str) -> Any:
    """``json.loads``, through ``orjson`` (several times faster; installed with gradio) when it
    is there; ``orjson`` refuses the NaN / Infinity that ``json.dumps`` writes: those lines,
    and torn ones, go through ``json``."""
    if _orjson is not None:
        try:
            return _orjson.loads(line)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(line)


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Task rows of a JSONL file (objects with a ``task``); a torn or unparsable line (a crash
    mid-write) is skipped; a missing file has none."""
    p = Path(path)
    try:
        text = p.read_text()
    except (FileNotFoundError, IsADirectoryError):
        return []
    good, _ = _parse(text)
    return [r for _, r in good if isinstance(r, dict) and "task" in r]


def image_files(out: Path) -> frozenset[str]:
    """Relative paths ``<dir>/<file>`` of the files one folder below ``out`` (one listing per
    class folder, no ``stat`` per file)."""
    found = []
    try:
        tops = list(os.scandir(out))
    except OSError:
        return frozenset()
    for d in tops:
        if not d.is_dir():
            continue
        try:
            with os.scandir(d.path) as it:
                found.extend(f"{d.name}/{e.name}" for e in it if e.is_file())
        except OSError:
            continue
    return frozenset(found)


def has_image(out: Path, row: dict, files: frozenset[str]) -> bool:
    """Whether ``row``'s image is on disk (``files`` from :func:`image_files`)."""
    rel = str(row.get("file_name") or "")
    if not rel:
        return False
    if rel.count("/") == 1 and "\\" not in rel and not rel.startswith("."):
        return rel in files
    return (out / rel).is_file()  # an unusual name: ask the file system


@dataclass
class FolderRows:
    """The rows of a synthetic folder as a reader sees them (:func:`read_folder`).

    Attributes:
        root: the folder.
        rows: every parsable row, in file order.
        where: ``"<metadata path>:<line>"`` of each row (for messages).
        bad_lines: unparsable lines skipped (a torn last line of a killed run).
        files: the image files on disk (:func:`image_files`).
    """

    root: Path
    rows: list[dict[str, Any]]
    where: list[str]
    bad_lines: int = 0
    files: frozenset[str] = field(default_factory=frozenset)

    def has_image(self, row: dict) -> bool:
        """Whether ``row``'s image file exists."""
        return has_image(self.root, row, self.files)


def read_folder(root: str | os.PathLike) -> FolderRows:
    """Read a synthetic folder's ``metadata.jsonl`` once: rows, their lines, the image listing.

    Unparsable lines are skipped with a warning each. Raises ``ValueError`` when ``root`` holds
    no ``metadata.jsonl``.
    """
    root = Path(root).expanduser()
    path = root / METADATA_FILE
    if not path.is_file():
        raise ValueError(
            f"{str(root)!r} is not a synthetic dataset folder (no {METADATA_FILE}); "
            "give a folder written by 'diffmix generate'"
        )
    good, bad = _parse(path.read_text())
    for lineno, err in bad:
        logger.warning("%s:%d: not valid JSON (%s); row skipped", path, lineno, err)
    rows = [(n, r) for n, r in good if isinstance(r, dict)]
    return FolderRows(
        root=root,
        rows=[r for _, r in rows],
        where=[f"{path}:{n}" for n, _ in rows],
        bad_lines=len(bad) + len(good) - len(rows),
        files=image_files(root),
    )


def folder_rows(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Every parsable row of a synthetic folder, in file order: unparsable lines (a torn last
    line of a growing folder) skipped silently, no image check. Raises ``ValueError`` naming
    the folder (its name, not its path) when it has no metadata.jsonl.

    Parses every row (nothing kept): a browser of a large folder reads :func:`row_index`
    instead and parses only the rows it shows."""
    index = row_index(folder)
    return index.rows()


#: The columns :class:`RowIndex` keeps per row (what a browser filters and sorts by).
INDEX_NUMBERS = ("strength", "faithfulness", "diversity")


class StaleIndex(Exception):
    """The rows file changed since its :class:`RowIndex` was made (read it again)."""


@dataclass(frozen=True, eq=False)  # compared (and hashed) by identity: one per file version
class RowIndex:
    """A synthetic folder's rows as columns, for browsing 60,000+ rows (the Inspect page).

    Built by one pass over ``metadata.jsonl`` (:func:`row_index`) that keeps, per row, only
    the columns a browser filters and sorts by and where the row's line is in the file -- about
    50 bytes a row instead of the ~3 KB of a parsed row -- and parses the rows it is asked for
    again from the file (:meth:`rows`). Rows are the parsable JSON objects, in file order
    (position k = the k-th such line); an unterminated last line counts when it parses.

    Attributes:
        path: the ``metadata.jsonl`` indexed; ``ino``, ``size``, ``mtime_ns``: its identity.
        parsed: bytes of complete lines indexed (up to and including the last newline);
            ``guard``: the bytes just before (an append leaves them unchanged).
        complete: rows among those complete lines (the rest: the unterminated last line).
        start, stop: int64 byte range of each row's line (without the newline).
        classes: the class names met (``""`` for a row without one), in order of appearance.
        source, target: int32 position in ``classes`` of each row's source / target class.
        strength, faithfulness, diversity: float64 per row, NaN where missing or not a number.
        kept: bool per row, False only where the row says ``"kept": false``.
    """

    path: Path
    ino: int
    size: int
    mtime_ns: int
    parsed: int
    guard: bytes = field(repr=False)  # the _GUARD bytes before ``parsed``
    complete: int
    start: np.ndarray
    stop: np.ndarray
    classes: tuple[str, ...]
    source: np.ndarray
    target: np.ndarray
    strength: np.ndarray
    faithfulness: np.ndarray
    diversity: np.ndarray
    kept: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    def rows(self, positions: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """The rows at ``positions`` (all by default), parsed again from the file.

        Raises :class:`StaleIndex` when the file is not the one indexed any more (use
        :func:`index_rows`, which reads the index again and retries)."""
        ks = range(len(self)) if positions is None else [int(k) for k in positions]
        for k in ks:
            if not 0 <= k < len(self):
                raise IndexError(f"row {k} is outside 0..{len(self) - 1}")
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise StaleIndex(str(e)) from None
        try:
            st = os.fstat(fd)
            if (st.st_ino, st.st_size, st.st_mtime_ns) != (self.ino, self.size, self.mtime_ns):
                raise StaleIndex(f"{self.path} changed")
            if len(ks) > _FEW_ROWS:  # many rows: one read of the file
                data = os.pread(fd, self.size, 0)
                spans = ((data, int(self.start[k]), int(self.stop[k])) for k in ks)
            else:
                spans = ((os.pread(fd, int(self.stop[k] - self.start[k]), int(self.start[k])), 0,
                          int(self.stop[k] - self.start[k])) for k in ks)  # fmt: skip
            out = []
            for buf, a, b in spans:
                row = _loads(buf[a:b])
                if not isinstance(row, dict):
                    raise StaleIndex(f"{self.path} changed")
                out.append(row)
            return out
        except (ValueError, OSError):  # a line that no longer parses: the file changed
            raise StaleIndex(f"{self.path} changed") from None
        finally:
            os.close(fd)


def _number(value: Any) -> float:
    """A row's number as float (NaN when missing or not a number; numeric strings count)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return math.nan


def _index_lines(data: bytes, base: int, vocab: dict[str, int]) -> dict[str, list]:
    """The index columns of the parsable JSON-object lines of ``data`` (``base``: its offset
    in the file); new class names are added to ``vocab``. Each row is dropped once its
    columns are taken, so memory stays at the columns whatever the file's size."""
    cols: dict[str, list] = {k: [] for k in ("start", "stop", "source", "target", *INDEX_NUMBERS,
                                            "kept")}  # fmt: skip
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10).tolist() + [len(data)]
    a = 0
    for b in ends:
        if b > a:
            try:
                row = _loads(data[a:b])
            except ValueError:  # torn or not JSON (json.JSONDecodeError, UnicodeDecodeError)
                row = None
            if isinstance(row, dict):
                cols["start"].append(base + a)
                cols["stop"].append(base + b)
                for key in ("source", "target"):
                    value = row.get(f"{key}_class")
                    name = "" if value is None else str(value)
                    code = vocab.get(name)
                    if code is None:
                        code = vocab[name] = len(vocab)
                    cols[key].append(code)
                for key in INDEX_NUMBERS:
                    cols[key].append(_number(row.get(key)))
                cols["kept"].append(row.get("kept", True) is not False)
        a = b + 1
    return cols


_COL_TYPES = {"start": np.int64, "stop": np.int64, "source": np.int32, "target": np.int32,
              **dict.fromkeys(INDEX_NUMBERS, np.float64), "kept": np.bool_}  # fmt: skip


def _build_index(path: Path, st: os.stat_result, hit: RowIndex | None) -> RowIndex:
    """Index ``path`` (of stat ``st``, read up to that size): only the lines after ``hit``'s
    complete ones when the file was appended to (the bytes just before unchanged), else all
    of it. Read in chunks of :data:`_CHUNK` bytes, so memory stays at the columns."""
    cols: dict[str, list] = {key: [] for key in _COL_TYPES}
    with open(path, "rb") as f:
        start = 0
        if hit is not None and hit.ino == st.st_ino and st.st_size >= hit.parsed >= _GUARD:
            f.seek(hit.parsed - _GUARD)  # appended to: index only the new lines
            if f.read(_GUARD) == hit.guard:
                start = hit.parsed
        f.seek(start)
        vocab = {name: k for k, name in enumerate(hit.classes)} if start else {}
        guard = hit.guard if start else b""
        pos, carry, left = start, b"", st.st_size - start
        while left > 0:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            data = carry + chunk
            cut = data.rfind(b"\n") + 1
            for key, values in _index_lines(data[:cut], pos, vocab).items():
                cols[key] += values
            guard = (guard + data[max(0, cut - _GUARD) : cut])[-_GUARD:]
            pos, carry = pos + cut, data[cut:]
    complete = len(cols["start"])
    for key, values in _index_lines(carry, pos, vocab).items():  # an unterminated last line
        cols[key] += values
    arrays = {}
    for key, kind in _COL_TYPES.items():
        old = getattr(hit, key)[: hit.complete] if start else np.empty(0, kind)
        arrays[key] = np.concatenate([old, np.asarray(cols[key], dtype=kind)])
    complete += hit.complete if start else 0
    return RowIndex(path, st.st_ino, st.st_size, st.st_mtime_ns, pos, guard, complete,
                    classes=tuple(vocab), **arrays)  # fmt: skip


#: Folders whose :class:`RowIndex` :func:`row_index` keeps (a few users browsing at once).
ROWS_CACHE_FOLDERS = 4
_GUARD = 64  # bytes before the parsed end that must be unchanged for an incremental read
_CHUNK = 1 << 22  # bytes read at a time when indexing
_FEW_ROWS = 256  # RowIndex.rows reads more rows than this with one read of the whole file

_ROWS_CACHE: OrderedDict[str, RowIndex] = OrderedDict()
_ROWS_LOCK = threading.Lock()
_PATH_LOCKS: dict[str, threading.Lock] = {}


def row_index(folder: str | os.PathLike) -> RowIndex:
    """The :class:`RowIndex` of a synthetic folder's ``metadata.jsonl``, read once per version.

    Kept for the last :data:`ROWS_CACHE_FOLDERS` folders, keyed by the file's identity, size and
    modification time: a filter or page change on a 60k-row folder reads nothing again, a
    folder that grew (a generation appending batches) reads only its new lines, and callers
    asking for the same folder at once (two users opening it) wait for one read. Raises
    ``ValueError`` naming the folder when it has no metadata.jsonl.
    """
    folder = Path(folder)
    path = folder / METADATA_FILE
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(str(path))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ValueError(
            f"{folder.name!r} is not a synthetic dataset (no {METADATA_FILE})"
        ) from None
    key = os.path.abspath(path)
    with _ROWS_LOCK:
        lock = _PATH_LOCKS.setdefault(key, threading.Lock())
    with lock:  # one reader per file; other files are read meanwhile
        st = path.stat()
        with _ROWS_LOCK:
            hit = _ROWS_CACHE.get(key)
        if hit is None or (hit.ino, hit.size, hit.mtime_ns) != (
            st.st_ino, st.st_size, st.st_mtime_ns
        ):  # fmt: skip
            hit = _build_index(path, st, hit)
        with _ROWS_LOCK:
            _ROWS_CACHE[key] = hit
            _ROWS_CACHE.move_to_end(key)
            while len(_ROWS_CACHE) > ROWS_CACHE_FOLDERS:
                _PATH_LOCKS.pop(_ROWS_CACHE.popitem(last=False)[0], None)
    return hit


def index_rows(folder: str | os.PathLike, positions: Iterable[int]) -> tuple[RowIndex, list[dict]]:
    """``(index, rows at positions)`` of a folder, reading the index again if the file changed
    between (rows keep their positions when a generation appends)."""
    positions = list(positions)
    for _ in range(3):
        index = row_index(folder)
        try:
            return index, index.rows(positions)
        except StaleIndex:
            continue
    raise ValueError(f"{Path(folder).name!r} keeps changing; try again")


def read_record(root: str | os.PathLike) -> dict[str, Any]:
    """A synthetic folder's ``config.json`` (``ValueError`` when absent or not a JSON object)."""
    path = Path(root).expanduser() / CONFIG_FILE
    if not path.is_file():
        raise ValueError(
            f"{str(path.parent)!r} is not a synthetic dataset folder (no {CONFIG_FILE}); "
            "give a folder written by 'diffmix generate'"
        )
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{str(path)!r} does not hold a JSON object")
    return record


def check_classes(root: str | os.PathLike, class_names: Sequence[str]) -> None:
    """Refuse a folder that is not a synthetic dataset or was made for other classes."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"synthetic dataset folder not found: {str(root)!r}")
    if not (root / METADATA_FILE).is_file():
        raise ValueError(
            f"{str(root)!r} is not a synthetic dataset folder (no {METADATA_FILE}); "
            "give a folder written by 'diffmix generate'"
        )
    record = read_record(root)
    theirs = record.get("class_names")
    if not isinstance(theirs, list):
        raise ValueError(f"{str(root / CONFIG_FILE)!r} has no 'class_names' list")
    only_theirs = [c for c in theirs if c not in class_names]
    only_ours = [c for c in class_names if c not in theirs]
    if only_theirs or only_ours:
        raise ValueError(
            f"synthetic dataset {str(root)!r} was made for other classes than the training "
            f"dataset: only in the synthetic data: {only_theirs}; only in the training data: "
            f"{only_ours}; generate it from this dataset"
        )
    if list(theirs) != list(class_names):
        logger.info("%s lists the classes in another order; labels are matched by name", root)


def tail_rows(path: Path, n: int = 12, chunk: int = 1 << 16) -> list[dict[str, Any]]:
    """The last ``n`` complete JSON rows of a (possibly growing) JSONL file, newest first.

    Reads only the end of the file (doubling the window until ``n`` rows are found), so a poll
    stays cheap however many images the folder holds; a torn last line is skipped.
    """
    try:
        size = path.stat().st_size
    except OSError:
        return []
    window = chunk
    while True:
        try:
            with path.open("rb") as f:
                f.seek(max(0, size - window))
                data = f.read(window)
        except OSError:
            return []
        lines = data.decode("utf-8", "replace").splitlines()
        if size > window:
            lines = lines[1:]  # the first line may be cut
        rows = []
        for line in reversed(lines):
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
            if len(rows) == n:
                return rows
        if window >= size:
            return rows
        window *= 2


# --------------------------------------------------------------------------- resume scan


#: A whole row line as :func:`rows_text` writes it (``file_name`` then ``task`` first): lets the
#: resume scan take a row's task and image without parsing the line.
_ROW_LINE = re.compile(r'^\{"file_name": ("(?:[^"\\\n]|\\.)*"), "task": (\d+), [^\n]*\}$', re.M)


@dataclass
class Scan:
    """What a generation folder holds now (:func:`scan`).

    Attributes:
        entries: ``(task, file_name, line)`` of one finished row per task (a row whose image
            exists; the first such row of a task wins), sorted by task; ``line`` is the row's
            JSON text.
        read: rows read over ``metadata.jsonl`` and every rank file (torn lines excluded).
        files: the files one folder below ``out`` (:func:`image_files`).
        current: ``metadata.jsonl``'s text (None when absent), to skip an unchanged rewrite.
    """

    entries: list[tuple[int, str, str]]
    read: int
    files: frozenset[str]
    current: str | None

    @property
    def done(self) -> set[int]:
        """The finished task ids."""
        return {t for t, _, _ in self.entries}

    @property
    def text(self) -> str:
        """The merged ``metadata.jsonl`` text (one line per finished task, by task)."""
        return "".join(line + "\n" for _, _, line in self.entries)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The finished rows, parsed."""
        return [json.loads(line) for _, _, line in self.entries]


def _task_lines(text: str) -> list[tuple[int, str, str]]:
    """``(task, file_name, line)`` of each task row of a rows file (torn lines skipped).

    Lines as :func:`rows_text` writes them are found by one regex pass (no JSON parse); the
    last line (the only one a crash can tear) and any other line are parsed in full.
    """
    body = text.rstrip("\n")
    cut = body.rfind("\n") + 1
    body, tail = body[:cut], body[cut:]
    out: list[tuple[int, str, str]] = []
    pos = 0
    for m in _ROW_LINE.finditer(body):
        if m.start() > pos:
            out += _parsed_task_lines(body[pos : m.start()])
        name = m.group(1)
        out.append((int(m.group(2)), json.loads(name) if "\\" in name else name[1:-1], m.group()))
        pos = m.end() + 1
    return out + _parsed_task_lines(body[pos:]) + _parsed_task_lines(tail)


def _parsed_task_lines(text: str) -> list[tuple[int, str, str]]:
    """``(task, file_name, line)`` of the task rows among ``text``'s lines, each parsed."""
    out = []
    for _, row in _parse(text)[0]:
        if isinstance(row, dict) and "task" in row:
            out.append((row["task"], str(row.get("file_name") or ""), json.dumps(row)))
    return out


def scan(out: Path, planned: set[int] | None = None) -> Scan:
    """One pass over a generation folder: the rows of ``metadata.jsonl`` and the rank files, and
    one listing of the images (no ``stat`` per row, no full parse of well-formed rows).
    ``planned``: keep only these tasks (rows of another plan dropped)."""
    main = out / METADATA_FILE
    try:
        current: str | None = main.read_text()
    except (FileNotFoundError, IsADirectoryError):
        current = None
    texts = [current or ""] + [p.read_text() for p in rank_files(out)]
    files = image_files(out)
    by_task: dict[int, tuple[int, str, str]] = {}
    read = 0
    for text in texts:
        entries = _task_lines(text)
        read += len(entries)
        for t, name, line in entries:
            if not isinstance(t, int) or (planned is not None and t not in planned):
                continue
            if t not in by_task and (name in files or has_image(out, {"file_name": name}, files)):
                by_task[t] = (t, name, line)
    return Scan([by_task[t] for t in sorted(by_task)], read, files, current)


def merge(out: Path, planned: set[int] | None = None) -> Scan:
    """Merge rank files into one ``metadata.jsonl`` (atomically): torn lines, rows without an
    image and duplicate tasks dropped; rank files removed. Returns the scan it wrote."""
    s = scan(out, planned)
    text = s.text
    if s.current != text and (s.entries or s.current is not None):
        fsync_write(out / METADATA_FILE, text.encode())
    for p in rank_files(out):
        p.unlink()
    if s.read != len(s.entries):
        logger.info("metadata: %d row(s) kept of %d read (torn, duplicate or imageless dropped)",
                    len(s.entries), s.read)  # fmt: skip
    return s


def repair(out: Path, planned: set[int]) -> Scan:
    """Start-of-run cleanup: rows merged (:func:`merge`); temp files and task images without a
    row (the batch in flight of a killed run) removed -- they are made again."""
    s = merge(out, planned)
    listed = {name for _, name, _ in s.entries}
    tmps = [out / rel for rel in s.files if rel.rsplit("/", 1)[-1].startswith(".")
            and rel.endswith(TMP_SUFFIX)]  # fmt: skip
    orphans = [
        out / rel for rel in s.files
        if TASK_PNG.match(rel.rsplit("/", 1)[-1]) and rel not in listed
    ]  # fmt: skip
    for p in [*out.glob(f".*{TMP_SUFFIX}"), *tmps, *orphans]:
        with contextlib.suppress(OSError):
            p.unlink()
    if orphans:
        logger.info("removed %d image(s) without a metadata row (a batch in flight)", len(orphans))
    return s


def count_done(out: Path) -> int:
    """Finished images in a folder: tasks with a row (in any rows file) and an image."""
    return len(scan(out).entries)


# --------------------------------------------------------------------------- fingerprints


def folder_fingerprint(path: Path, files: Iterable[Path]) -> str:
    """sha256 (16 hex) over relative paths, sizes and contents (head+tail of big files)."""
    h = hashlib.sha256()
    for f in sorted(files):
        size = f.stat().st_size
        h.update(f"{f.relative_to(path).as_posix()}:{size}\n".encode())
        with open(f, "rb") as fh:
            if size <= 64 << 20:
                h.update(fh.read())
            else:  # multi-GB weights: the first and last MiB identify them
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def model_fingerprint(model: str) -> str:
    """Fingerprint of a base model: its folder's files (local), ``hub:<id>`` otherwise."""
    from diffmix.pipeline import resolve_model

    ref = resolve_model(model)
    if not ref.local:
        return f"hub:{ref.source}"
    root = Path(ref.source)
    return folder_fingerprint(root, [p for p in root.rglob("*") if p.is_file()])


# --------------------------------------------------------------------------- summary and card


def summary(rows: Sequence[dict], out: Path, planned: int) -> dict[str, Any]:
    """Counts of a folder's rows: images, planned, kept, per target class, per strength."""
    per_class = Counter(r["target_class"] for r in rows)
    per_strength = Counter(str(r["strength"]) for r in rows)
    return {
        "out": str(out),
        "images": len(rows),
        "planned": planned,
        "kept": sum(1 for r in rows if r.get("kept", True)),
        "per_class": dict(sorted(per_class.items())),
        "per_strength": dict(sorted(per_strength.items())),
    }


def write_grid(out: Path, rows: Sequence[dict], class_names: Sequence[str],
               per_class: int = 6, max_classes: int = 12, thumb: int = 64) -> None:  # fmt: skip
    """``grid.png``: up to ``per_class`` kept images (columns) for up to ``max_classes``
    target classes (rows), each fitted into a ``thumb`` px square."""
    from PIL import Image, ImageOps

    picks: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("kept", True) and len(picks.setdefault(r["target_class"], [])) < per_class:
            picks[r["target_class"]].append(r)
    classes = [c for c in class_names if picks.get(c)][:max_classes]
    if not classes:
        return
    grid = Image.new("RGB", (per_class * thumb, len(classes) * thumb), (255, 255, 255))
    for y, c in enumerate(classes):
        for x, r in enumerate(picks[c]):
            with Image.open(out / r["file_name"]) as im:
                small = ImageOps.contain(im.convert("RGB"), (thumb, thumb))
            grid.paste(small, (x * thumb + (thumb - small.width) // 2,
                               y * thumb + (thumb - small.height) // 2))  # fmt: skip
    save_png(grid, out / GRID_FILE)


def _mean(xs: Iterable[float | None]) -> str:
    vals = [x for x in xs if x is not None]
    return f"{sum(vals) / len(vals):.3f}" if vals else "-"


def _card_header(rows: Sequence[dict], record: dict, planned: int) -> list[str]:
    kept = sum(1 for r in rows if r.get("kept", True))
    adapter = (
        f", adapter `{record['adapter']}` (`{record['adapter_fingerprint']}`)"
        if record.get("adapter")
        else ""
    )
    lines = [
        f"# Synthetic dataset: {record['strategy']} on `{record['dataset']}`",
        "",
        f"Made by `diffmix generate` (Diff-Mix Studio): {len(rows)} of {planned} planned "
        f"images, {kept} kept. Model `{record['model']}` "
        f"(fingerprint `{record['model_fingerprint']}`)" + adapter
        + f"; {record['num_inference_steps']} steps, guidance {record['guidance_scale']}, "
        f"γ = {record['gamma']}, strengths {record['strengths']} ({record['strength_sampling']}), "
        f"targets {record['targets']}, multiplier {record['multiplier']}.",
        "",
        "```",
        record["command"],
        "```",
        "",
    ]  # fmt: skip
    j = record.get("judge")
    if j:
        seen = "this run's subset" if j["fit_on"] == "subset" else "the whole train split"
        lines += [
            f"Scores: faithfulness by the `{j['judge']}` judge fitted on {j['train_images']} "
            f"labelled images ({seen}); diversity: `{j['diversity_metric']}`.",
            "",
        ]
    if record.get("filter_bottom"):
        lines += [
            f"The {record['filter_bottom']:.0%} least faithful images are marked `kept: false` "
            "in `metadata.jsonl` (their files stay on disk); `diffmix train` skips them.",
            "",
        ]
    return lines


def dataset_card(rows: Sequence[dict], record: dict, planned: int) -> str:
    """The folder's ``README.md``: what it is, counts per target class and strength, how to use."""
    lines = _card_header(rows, record, planned)
    lines += ["## Per target class", "", "| class | images | kept | faithfulness (mean) |",
              "|---|---:|---:|---:|"]  # fmt: skip
    by_class: dict[str, list[dict]] = {}
    by_strength: dict[float, list[dict]] = {}
    for r in rows:
        by_class.setdefault(r["target_class"], []).append(r)
        by_strength.setdefault(r["strength"], []).append(r)
    for c in record["class_names"]:
        if rc := by_class.get(c):
            lines.append(f"| {c} | {len(rc)} | {sum(1 for r in rc if r.get('kept', True))} | "
                         f"{_mean(r.get('faithfulness') for r in rc)} |")  # fmt: skip
    lines += ["", "## Per strength", "", "| strength | images | faithfulness | diversity |",
              "|---:|---:|---:|---:|"]  # fmt: skip
    for s in sorted(by_strength):
        rs = by_strength[s]
        lines.append(f"| {s} | {len(rs)} | {_mean(r.get('faithfulness') for r in rs)} | "
                     f"{_mean(r.get('diversity') for r in rs)} |")  # fmt: skip
    lines += [
        "",
        "## Samples",
        "",
        f"![samples (rows: target classes)]({GRID_FILE})",
        "",
        "## Files",
        "",
        "- `<target class>/<task>.png`: the images; `metadata.jsonl`: one row per image "
        "(source, target, strength, seed, prompt, soft label, scores, `kept`, fingerprints);",
        "- `config.json`: the resolved settings, class names, dataset and subset; `plan.jsonl`: "
        "every planned task.",
        '- Open it with `datasets.load_dataset("imagefolder", data_dir=...)`; train with '
        "`diffmix train ... --synthetic <this folder>`; any row is reproduced exactly by "
        "`diffmix.generate.regenerate(folder, row)`.",
        "",
    ]
    return "\n".join(lines)
