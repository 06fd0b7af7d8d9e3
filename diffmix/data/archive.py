"""Zip datasets: a ``.zip`` of an image folder, extracted safely into the workspace.

The archive is extracted once into ``<workspace>/datasets/zip-<sha256[:16] of the zip>``
(built in a temporary sibling folder, then renamed into place, so a half-extracted
folder never exists) and then read as a folder (see :mod:`diffmix.data.folder`). A zip
whose content is wrapped in a single top-level folder is unwrapped.

Refused with a :class:`DatasetError` before anything is kept (the temporary folder is
removed): absolute member paths, drive letters, ``..`` components, symlink members,
encrypted members, more than ``max_members`` members, a declared total size over
``max_total_bytes`` (the deployment's ``DIFFMIX_MAX_EXTRACT_MB``), any member larger than
10 MiB compressed more than 200:1 (zip bomb), a whole archive that expands to more than 10 MiB
and more than ``max_ratio`` (``DIFFMIX_MAX_ZIP_RATIO``) times its own size (many members each
just under the per-member threshold), and any member whose data is larger than its declared
size (checked while streaming). Nothing is ever written outside the extraction folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from diffmix import workspace
from diffmix.data.dataset import DatasetError, ImageDataset
from diffmix.data.folder import is_ignored_name, load_folder

logger = logging.getLogger(__name__)

#: Most members an archive may have.
MAX_MEMBERS = 100_000
#: Largest total uncompressed size accepted, in bytes (4 GiB).
MAX_TOTAL_BYTES = 4 * 1024**3
#: A member is a zip bomb when it is larger than this (bytes) ...
BOMB_MIN_BYTES = 10 * 1024**2
#: ... and its uncompressed / compressed size ratio exceeds this.
BOMB_MAX_RATIO = 200
_CHUNK = 1024**2
_DRIVE = re.compile(r"^[A-Za-z]:")


def load_zip(
    path: str | os.PathLike,
    *,
    split: str = "train",
    test_fraction: float = 0.2,
    spec: str | None = None,
) -> ImageDataset:
    """Extract the zip at ``path`` (once, see :func:`extract_zip`) and load it as a folder."""
    root = extract_zip(path)
    return load_folder(
        root, split=split, test_fraction=test_fraction, spec=spec if spec is not None else str(path)
    )


def extract_zip(
    path: str | os.PathLike,
    *,
    dest_root: str | os.PathLike | None = None,
    max_members: int = MAX_MEMBERS,
    max_total_bytes: int | None = None,
    max_ratio: float | None = None,
) -> Path:
    """Safely extract a zip into ``dest_root/zip-<hash>`` and return the dataset folder.

    ``dest_root`` defaults to ``<workspace>/datasets``. An archive already extracted there
    is reused. The returned folder is the extraction folder, or the single top-level
    folder inside it when the archive wraps everything in one folder. ``max_total_bytes``
    and ``max_ratio`` (total expanded / archive size, applied above 10 MiB) default to the
    deployment's settings (:class:`diffmix.settings.Limits`); 0 turns a bound off.
    """
    # 1. Check inputs and identify the archive by its content.
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"zip file not found: {str(path)!r}; give an existing .zip file")
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{str(path)!r} is not a zip archive (or is corrupt); give a .zip file")
    if max_total_bytes is None or max_ratio is None:
        from diffmix.settings import Settings

        limits = Settings.from_env().limits
        if max_total_bytes is None:
            max_total_bytes = limits.max_extract_mb * 1024**2 or MAX_TOTAL_BYTES
        if max_ratio is None:
            max_ratio = limits.max_zip_ratio
    if max_ratio:  # the whole archive, not only each member
        max_total_bytes = min(
            max_total_bytes, max(BOMB_MIN_BYTES, int(max_ratio * path.stat().st_size))
        )
    dest_root = Path(dest_root) if dest_root is not None else workspace.subdir("datasets")
    dest_root.mkdir(parents=True, exist_ok=True)
    final = dest_root / f"zip-{_sha256(path)[:16]}"
    if final.is_dir():
        logger.debug("reusing extracted %s", final)
        return _content_root(final)

    # 2. Extract into a temporary sibling, then rename into place.
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=dest_root))
    try:
        try:
            with zipfile.ZipFile(path) as zf:
                members = _check_members(zf, path, max_members, max_total_bytes)
                _extract_members(zf, members, tmp, path, max_total_bytes)
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            NotImplementedError,
            EOFError,
            zlib.error,
        ) as e:
            raise DatasetError(f"corrupt zip {str(path)!r}: {e}; re-create the archive") from None
        except OSError as e:  # e.g. a member that is both a file and a folder, disk full
            raise DatasetError(f"cannot extract zip {str(path)!r}: {e}") from None
        logger.info("extracted %s to %s", path, final)
        try:
            tmp.rename(final)
        except OSError:  # another process extracted the same archive first: keep theirs
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _content_root(final)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def safe_member_path(name: str) -> PurePosixPath | None:
    """The relative path a member name may be extracted to; ``None`` when it is unsafe.

    Unsafe: absolute paths, drive letters (``C:``), and ``..`` components. Backslashes
    count as separators.
    """
    norm = name.replace("\\", "/")
    if norm.startswith("/") or _DRIVE.match(norm):
        return None
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _check_members(
    zf: zipfile.ZipFile, path: Path, max_members: int, max_total_bytes: int
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Refuse unsafe archives from their directory alone (before writing anything)."""
    infos = zf.infolist()
    if len(infos) > max_members:
        raise DatasetError(
            f"zip {str(path)!r} has {len(infos)} members, more than the limit of {max_members}; "
            "split the dataset or use a folder"
        )
    total = 0
    out = []
    for info in infos:
        rel = safe_member_path(info.filename)
        if rel is None:
            raise DatasetError(
                f"zip {str(path)!r} has an unsafe member path {info.filename!r} "
                "(absolute, drive letter or '..'); re-create the archive with relative paths"
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetError(
                f"zip {str(path)!r} has a symlink member {info.filename!r}; "
                "symlinks are refused, archive the files themselves"
            )
        if info.flag_bits & 0x1:
            raise DatasetError(
                f"zip {str(path)!r} has an encrypted member {info.filename!r}; "
                "give an archive without a password"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > BOMB_MIN_BYTES and ratio > BOMB_MAX_RATIO:
            raise DatasetError(
                f"zip {str(path)!r} member {info.filename!r} expands {ratio:.0f}:1 to "
                f"{info.file_size} bytes (zip bomb); refused"
            )
        total += info.file_size
        if total > max_total_bytes:
            size = path.stat().st_size
            raise DatasetError(
                f"zip {str(path)!r} ({size} bytes) expands to more than {max_total_bytes} bytes, "
                "the limit for this archive (the total and the expansion ratio are bounded: "
                "DIFFMIX_MAX_EXTRACT_MB, DIFFMIX_MAX_ZIP_RATIO); use a folder or a smaller archive"
            )
        out.append((info, rel))
    return out


def _extract_members(
    zf: zipfile.ZipFile,
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]],
    dest: Path,
    path: Path,
    max_total_bytes: int,
) -> None:
    """Stream every member into ``dest``, never past its declared size or the total cap."""
    dest = dest.resolve()
    written_total = 0
    for info, rel in members:
        target = (dest / rel).resolve() if rel != PurePosixPath(".") else dest
        if target != dest and dest not in target.parents:
            raise DatasetError(f"zip {str(path)!r} member {info.filename!r} escapes the folder")
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with zf.open(info) as src, open(target, "wb") as out:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                written_total += len(chunk)
                if written > info.file_size or written_total > max_total_bytes:
                    raise DatasetError(
                        f"zip {str(path)!r} member {info.filename!r} holds more data than "
                        f"it declares ({info.file_size} bytes); refused"
                    )
                out.write(chunk)


def _content_root(folder: Path) -> Path:
    """Unwrap a single top-level folder that itself has subfolders (the zipped folder)."""
    entries = [p for p in folder.iterdir() if not is_ignored_name(p.name)]
    if len(entries) == 1 and entries[0].is_dir():
        inner = entries[0]
        if any(p.is_dir() and not is_ignored_name(p.name) for p in inner.iterdir()):
            return inner
    return folder
