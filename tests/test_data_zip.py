"""Zip datasets: extraction, reuse, and every unsafe archive refused without side effects."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffmix import workspace
from diffmix.data import DatasetError, load_dataset
from diffmix.data.archive import extract_zip, safe_member_path


def _png_bytes(value: int) -> bytes:
    rng = np.random.default_rng(value)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _make_folder(root: Path) -> Path:
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            (root / name / f"{i}.png").write_bytes(_png_bytes(10 * c + i))
    return root


def _zip_folder(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return zip_path


def _zip_members(zip_path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return zip_path


def _listing(folder: Path) -> set[str]:
    return (
        {p.relative_to(folder).as_posix() for p in folder.rglob("*")} if folder.exists() else set()
    )


@pytest.fixture
def datasets_dir() -> Path:
    return workspace.subdir("datasets")


def test_zip_with_wrapping_folder_loads_like_the_folder(tmp_path: Path, datasets_dir: Path) -> None:
    folder = _make_folder(tmp_path / "pets")
    archive = _zip_folder(folder, tmp_path / "pets.zip", prefix="pets/")
    (tmp_path / "extra").mkdir()

    ds = load_dataset(str(archive))
    direct = load_dataset(str(folder))

    assert ds.class_names == ["cat", "dog"] and ds.counts == direct.counts
    assert ds.fingerprint == direct.fingerprint  # same files -> same fingerprint
    assert ds.spec == str(archive)
    assert Path(ds.root).name == "pets" and Path(ds.root).parent.name.startswith("zip-")
    assert Path(ds.root).parent.parent == datasets_dir
    assert ds.image(0).mode == "RGB"
    # Loaded again: the extraction is reused, nothing new is written.
    before = _listing(datasets_dir)
    assert load_dataset(str(archive), split="test").counts == {"cat": 1, "dog": 1}
    assert _listing(datasets_dir) == before


def test_zip_without_wrapper_and_given_splits(tmp_path: Path) -> None:
    folder = tmp_path / "split"
    _make_folder(folder / "train")
    _make_folder(folder / "test")
    ds = load_dataset(str(_zip_folder(folder, tmp_path / "split.zip")), split="test")
    assert ds.counts == {"cat": 4, "dog": 4} and ds.items[0].id.startswith("test/")


def test_safe_member_path_rules() -> None:
    assert str(safe_member_path("a/b.png")) == "a/b.png"
    assert str(safe_member_path("a\\b.png")) == "a/b.png"
    assert str(safe_member_path("./a//b.png")) == "a/b.png"
    for bad in ("../evil.png", "a/../../evil.png", "/tmp/x", "C:/x.png", "c:x.png", "\\\\srv\\x"):
        assert safe_member_path(bad) is None, bad


def _symlink_info() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("cat/link.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    "kind", ["dotdot", "absolute", "symlink", "bomb", "oversized-data", "not-a-zip", "corrupt"]
)
def test_unsafe_zip_refused_and_nothing_written(
    tmp_path: Path, datasets_dir: Path, kind: str
) -> None:
    good = [(f"cat/{i}.png", _png_bytes(i)) for i in range(2)]
    outside = tmp_path / "outside"
    outside.mkdir()
    path = tmp_path / f"{kind}.zip"
    if kind == "dotdot":
        _zip_members(path, [*good, (zipfile.ZipInfo("../evil.png"), b"evil")])
        match, escaped = "unsafe member path '../evil.png'", tmp_path / "evil.png"
    elif kind == "absolute":
        target = outside / "abs.png"
        _zip_members(path, [*good, (zipfile.ZipInfo(str(target)), b"evil")])
        assert str(target) in zipfile.ZipFile(path).namelist()  # really absolute
        match, escaped = "unsafe member path", target
    elif kind == "symlink":
        _zip_members(path, [*good, (_symlink_info(), b"/etc/passwd")])
        match, escaped = "symlink member 'cat/link.png'", None
    elif kind == "bomb":
        _zip_members(path, [*good, ("cat/zeros.png", bytes(11 * 1024**2))])
        match, escaped = "zip bomb", None
    elif kind == "oversized-data":
        data = bytes(range(256)) * 4
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("cat/big.png", data)
        raw = bytearray(path.read_bytes())
        for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # lie: declare 100 bytes
            at = raw.index(sig) + off
            raw[at : at + 4] = (100).to_bytes(4, "little")
        path.write_bytes(bytes(raw))
        match, escaped = "corrupt zip .* Bad CRC", None
    elif kind == "not-a-zip":
        path.write_text("this is not a zip archive")
        match, escaped = "not a zip archive", None
    else:
        data = _zip_members(tmp_path / "src.zip", good).read_bytes()
        path.write_bytes(data[: len(data) // 2] + bytes(64) + data[-22:])
        match, escaped = "corrupt zip|not a zip archive", None
    before = _listing(datasets_dir)
    outside_before = _listing(tmp_path)

    with pytest.raises(DatasetError, match=match):
        load_dataset(str(path))

    assert _listing(datasets_dir) == before  # no extraction folder, no temp folder left
    assert _listing(tmp_path) == outside_before
    if escaped is not None:
        assert not escaped.exists()


def test_member_and_size_limits(tmp_path: Path) -> None:
    members = [(f"cat/{i}.png", _png_bytes(i)) for i in range(11)]
    path = _zip_members(tmp_path / "many.zip", members)
    dest = tmp_path / "dest"
    with pytest.raises(DatasetError, match="11 members, more than the limit of 10"):
        extract_zip(path, dest_root=dest, max_members=10)
    total = sum(len(d) for _, d in members)
    with pytest.raises(DatasetError, match="expands to more than"):
        extract_zip(path, dest_root=dest, max_total_bytes=total - 1)
    assert _listing(dest) == set()
    root = extract_zip(path, dest_root=dest, max_members=11, max_total_bytes=total)
    assert len(list((root / "cat").iterdir())) == 11


def test_streaming_cap_refuses_more_data_than_declared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even if the zip reader handed out more bytes than a member declares, we stop."""
    path = _zip_members(tmp_path / "lying.zip", [("cat/0.png", _png_bytes(0))])
    real_open = zipfile.ZipFile.open

    def open_with_extra(self, info, *args, **kwargs):  # noqa: ANN001
        data = real_open(self, info, *args, **kwargs).read()
        return io.BytesIO(data + bytes(1000))

    monkeypatch.setattr(zipfile.ZipFile, "open", open_with_extra)
    dest = tmp_path / "dest"
    with pytest.raises(DatasetError, match="holds more data than it declares"):
        extract_zip(path, dest_root=dest)
    assert _listing(dest) == set()


def test_many_members_each_under_the_bomb_threshold_are_refused_as_a_whole(
    tmp_path: Path, datasets_dir: Path
) -> None:
    """30 members of exactly 10 MiB of zeros pass the per-member check; the whole does not."""
    path = tmp_path / "flat-bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for i in range(30):
            zf.writestr(f"cat/{i}.png", bytes(10 * 1024**2))
    assert path.stat().st_size < 1024**2  # ~300 KB that would expand to 300 MiB
    before = _listing(datasets_dir)
    with pytest.raises(DatasetError, match="expands to more than .* expansion ratio"):
        load_dataset(str(path))
    assert _listing(datasets_dir) == before  # nothing written, nothing kept
    # the operator's absolute bound holds too, whatever the ratio
    members = [(f"cat/{i}.png", _png_bytes(i)) for i in range(3)]
    small = _zip_members(tmp_path / "small.zip", members)
    with pytest.raises(DatasetError, match="expands to more than 100 bytes"):
        extract_zip(small, dest_root=tmp_path / "d", max_total_bytes=100, max_ratio=0)


def test_public_limits_bound_the_extracted_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DIFFMIX_MAX_EXTRACT_MB and DIFFMIX_MAX_ZIP_RATIO are read from the deployment."""
    members = [(f"cat/{i}.png", bytes(3 * 1024**2)) for i in range(2)]  # 6 MiB of zeros
    path = _zip_members(tmp_path / "zeros.zip", members)
    monkeypatch.setenv("DIFFMIX_PUBLIC", "1")
    monkeypatch.setenv("DIFFMIX_MAX_EXTRACT_MB", "5")
    with pytest.raises(DatasetError, match="expands to more than 5242880 bytes"):
        extract_zip(path, dest_root=tmp_path / "d")
    monkeypatch.setenv("DIFFMIX_MAX_EXTRACT_MB", "0")  # no absolute bound; 6 MiB < 10 MiB floor
    assert (
        extract_zip(path, dest_root=tmp_path / "d") / "cat" / "1.png"
    ).stat().st_size == 3 * 1024**2
