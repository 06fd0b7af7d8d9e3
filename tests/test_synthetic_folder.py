"""The synthetic-dataset folder contract (diffmix.synthetic): what generate writes, training and
Inspect read -- row format, label rules, torn lines, the resume scan of a half-done folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffmix import synthetic as syn
from diffmix.classify import read_synthetic
from diffmix.labels import LABEL_RULES, soft_label

CLASSES = ["ant", "bee", "cat"]
GAMMA_WRITTEN = 0.5


def _row(task: int, src: str, tgt: str, s: float, strategy: str, rule: str, label: dict) -> dict:
    """A full metadata row (every ROW_FIELDS key) as generate writes it."""
    row = dict.fromkeys(syn.ROW_FIELDS)
    row.update(
        file_name=syn.image_name(tgt, task), task=task, batch=task // 2, source_index=task,
        source_id=f"train/{src}/{task}.png", source_class=src, target_class=tgt, strength=s,
        seed=task, strategy=strategy, prompt=f"a photo of a {tgt}", soft_label=label,
        label_rule=rule, kept=True, gamma=GAMMA_WRITTEN, width=8, height=8,
    )  # fmt: skip
    return row


def _diffmix(task: int, src: str, tgt: str, s: float) -> dict:
    vec = soft_label(CLASSES.index(src), CLASSES.index(tgt), s, GAMMA_WRITTEN, num_classes=3)
    label = {c: float(w) for c, w in zip(CLASSES, vec, strict=True) if w}
    return _row(task, src, tgt, s, "diff-mix", "diffmix-gamma", label)


def _write_folder(root: Path, rows: list[dict], *, images: bool = True) -> Path:
    """Through the writer: each image atomically, the rows appended, config.json."""
    root.mkdir(parents=True, exist_ok=True)
    if images:
        for r in rows:
            (root / r["file_name"]).parent.mkdir(exist_ok=True)
            syn.save_png(
                Image.new("RGB", (8, 8), (40 * r["task"] % 255, 9, 9)), root / r["file_name"]
            )
    syn.append_rows(root / syn.METADATA_FILE, rows)
    syn.fsync_write(
        root / syn.CONFIG_FILE,
        json.dumps({"format": syn.FORMAT, "class_names": CLASSES}).encode(),
    )
    return root


@pytest.fixture
def mixed(tmp_path) -> tuple[Path, list[dict]]:
    rows = [
        _diffmix(0, "ant", "bee", 0.25),  # (1 - 0.25^γ, 0.25^γ) = (0.5, 0.5) at γ = 0.5
        _diffmix(1, "cat", "ant", 0.7),
        # mixup: blend weight 0.3 of the target; cutmix: the pasted box covers 0.36 of the
        # pixels although 0.3 was asked -- training must use the stored share, not the strength
        _row(2, "ant", "cat", 0.3, "mixup", "pixel-share", {"ant": 0.7, "cat": 0.3}),
        _row(3, "bee", "ant", 0.3, "cutmix", "pixel-share", {"bee": 0.64, "ant": 0.36}),
        _row(4, "bee", "bee", 0.7, "diff-aug", "hard", {"bee": 1.0}),
    ]
    return _write_folder(tmp_path / "syn", rows), rows


def test_every_row_field_is_documented_and_rules_are_the_labels_ones():
    assert all(len(doc) > 15 for doc in syn.ROW_FIELD_DOCS.values())
    assert all(rule in syn.ROW_FIELD_DOCS["label_rule"] for rule in LABEL_RULES)


def test_rows_written_are_read_back_by_training_and_inspect(mixed):
    root, rows = mixed
    # Inspect's reader: every row as written, in order
    assert syn.folder_rows(root) == rows
    # the generate reader (task rows) and the folder reader agree
    assert syn.read_rows(root / syn.METADATA_FILE) == rows
    folder = syn.read_folder(root)
    assert folder.rows == rows and folder.bad_lines == 0
    assert all(folder.has_image(r) for r in rows)

    # Training's reader, at the written γ and at another γ
    s = read_synthetic([root], CLASSES, gamma=0.5)
    assert len(s) == 5 and s.missing == 0 and s.excluded == 0
    assert s.label_rules == ["diffmix-gamma", "diffmix-gamma", "pixel-share", "pixel-share", "hard"]
    want = torch.tensor(
        [
            [0.5, 0.5, 0.0],  # ant -> bee at s = 0.25: 0.25^0.5 = 0.5
            [0.7**0.5, 0.0, 1 - 0.7**0.5],  # cat -> ant at s = 0.7
            [0.7, 0.0, 0.3],  # mixup: as stored
            [0.36, 0.64, 0.0],  # cutmix: the box area, not the asked 0.3
            [0.0, 1.0, 0.0],  # hard
        ]
    )
    assert torch.allclose(s.targets, want, atol=1e-6)
    s1 = read_synthetic([root], CLASSES, gamma=1.0)  # diff-mix rows follow γ, the rest do not
    assert torch.allclose(s1.targets[0], torch.tensor([0.75, 0.25, 0.0]))
    assert torch.allclose(s1.targets[1], torch.tensor([0.7, 0.0, 0.3]))
    assert torch.allclose(s1.targets[2:], want[2:])


def test_a_corrupt_last_line_is_skipped_by_every_reader(mixed, caplog):
    root, rows = mixed
    path = root / syn.METADATA_FILE
    path.write_text(path.read_text() + json.dumps(_diffmix(5, "ant", "cat", 0.5))[:40])  # torn
    assert syn.folder_rows(root) == rows
    assert syn.read_rows(path) == rows
    assert syn.tail_rows(path, 2) == [rows[4], rows[3]]  # newest first, torn line skipped
    with caplog.at_level(logging.WARNING, logger="diffmix"):
        s = read_synthetic([root], CLASSES, gamma=0.5)
    assert len(s) == 5 and s.missing == 1  # the torn line is counted and named
    assert any(f"{syn.METADATA_FILE}:6" in r.getMessage() for r in caplog.records)
    assert syn.scan(root).rows == rows and syn.scan(root).read == 5


def test_half_done_folder_resume_scan_and_repair(tmp_path):
    rows = [_diffmix(t, "ant", "bee", 0.5) for t in range(6)]
    root = _write_folder(tmp_path / "half", rows[:3])  # tasks 0-2 finished
    # a killed multi-process run: rank files holding task 3 (image on disk), a duplicate of
    # task 1, and task 4 whose image never landed; task 5's image without any row; a temp file
    _write_folder(tmp_path / "half", [rows[3]])
    (root / syn.METADATA_FILE).write_text(
        syn.rows_text(rows[:3]) + '{"task": 9, "file_na'  # torn last line
    )
    syn.append_rows(root / "metadata.0.jsonl", [rows[3], rows[1]])
    syn.append_rows(root / "metadata.1.jsonl", [rows[4]])
    Image.new("RGB", (8, 8)).save(root / rows[5]["file_name"])
    tmp = syn.tmp_path(root / rows[5]["file_name"])
    tmp.write_bytes(b"\x89PNG torn")

    s = syn.scan(root, planned=set(range(6)))
    assert s.done == {0, 1, 2, 3} and s.read == 6
    assert syn.count_done(root) == 4

    fixed = syn.repair(root, planned=set(range(6)))
    assert [r["task"] for r in fixed.rows] == [0, 1, 2, 3]
    assert syn.read_rows(root / syn.METADATA_FILE) == rows[:4]  # merged, sorted, one per task
    assert syn.rank_files(root) == []
    assert not (root / rows[5]["file_name"]).exists()  # orphan image: made again on resume
    assert not tmp.exists()
    assert {p.relative_to(root).as_posix() for p in root.glob("*/*.png")} == {
        r["file_name"] for r in rows[:4]
    }
    # a second repair changes nothing
    before = (root / syn.METADATA_FILE).read_bytes()
    syn.repair(root, planned=set(range(6)))
    assert (root / syn.METADATA_FILE).read_bytes() == before


def test_resume_scan_lists_images_once_instead_of_a_stat_per_row(tmp_path, monkeypatch):
    rows = [_diffmix(t, "ant", "bee", 0.5) for t in range(50)]
    root = _write_folder(tmp_path / "many", rows)
    calls = {"n": 0}
    real = Path.is_file

    def counting(self):
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(Path, "is_file", counting)
    assert syn.scan(root).done == set(range(50))
    assert syn.read_folder(root).rows == rows
    assert calls["n"] <= 2  # the metadata file itself, not one per row


def test_readers_refuse_what_is_not_a_synthetic_folder(tmp_path):
    with pytest.raises(ValueError, match="not a synthetic dataset"):
        syn.folder_rows(tmp_path)
    with pytest.raises(ValueError, match="not a synthetic dataset"):
        syn.read_folder(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        syn.check_classes(tmp_path / "nope", CLASSES)
    assert syn.read_rows(tmp_path / syn.METADATA_FILE) == []


def test_dataset_card_counts_per_class_and_strength(mixed):
    _, rows = mixed
    record = {
        "strategy": "diff-mix", "dataset": "demo", "model": "nano", "model_fingerprint": "f",
        "num_inference_steps": 25, "guidance_scale": 7.5, "gamma": 0.5, "strengths": [0.7],
        "strength_sampling": "fixed", "targets": "uniform", "multiplier": 5,
        "command": "diffmix generate demo", "class_names": CLASSES,
    }  # fmt: skip
    card = syn.dataset_card(rows, record, planned=10)
    assert "5 of 10 planned images, 5 kept" in card
    assert "| ant | 2 | 2 | - |" in card and "| bee | 2 | 2 | - |" in card
    assert "| 0.3 | 2 | - | - |" in card and "| 0.7 | 2 | - | - |" in card


def test_pages_read_through_the_core_reader():
    inspect = pytest.importorskip("pages.inspect")
    generate = pytest.importorskip("pages.generate")
    assert inspect.read_rows is syn.folder_rows
    assert inspect.row_index is syn.row_index and inspect.index_rows is syn.index_rows
    assert generate.tail_rows is syn.tail_rows


def test_scan_reads_escaped_names_and_rows_written_by_other_tools(tmp_path):
    root = tmp_path / "u"
    rows = [_diffmix(t, "ant", "bee", 0.5) for t in range(3)]
    rows[1]["file_name"] = 'bée "x"/0000001.png'  # json.dumps escapes both
    for r in rows:
        (root / r["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / r["file_name"])
    text = syn.rows_text(rows[:2]) + json.dumps(rows[2], indent=None, separators=(",", ":")) + "\n"
    (root / syn.METADATA_FILE).write_text(text)
    s = syn.scan(root)
    assert s.done == {0, 1, 2} and s.rows == rows
    syn.repair(root, {0, 1, 2})  # the odd line is rewritten in the writer's form
    assert (root / syn.METADATA_FILE).read_text() == syn.rows_text(rows)
