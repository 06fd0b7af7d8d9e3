"""The house-keeping seams: one atomic write, one config base, one env-integer parser."""

from __future__ import annotations

import errno
import os

import pytest
from pydantic import ValidationError

from diffmix import runs
from diffmix.config import StageConfig, field_default
from diffmix.settings import env_int


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.json"
    runs.atomic_write(path, "one\n")
    runs.atomic_write(path, b"two\n", sync_dir=True)
    assert path.read_text() == "two\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    path.write_text("old\n")

    def full(p, data, **kw):
        p.write_bytes(data[:2])  # a torn temp file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(p))

    monkeypatch.setattr(runs, "_write_file", full)
    with pytest.raises(OSError):
        runs.atomic_write(path, "a much longer new text\n")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_target_swaps_in_what_a_file_writer_wrote(tmp_path):
    path = tmp_path / "w.bin"
    with runs.atomic_target(path, sync_dir=True) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".tmp") and tmp.name.startswith(".")
        tmp.write_bytes(b"weights")
        assert not path.exists()  # nothing under the final name until the writer is done
    assert path.read_bytes() == b"weights"
    with pytest.raises(RuntimeError), runs.atomic_target(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert path.read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin"]


def test_every_stage_config_refuses_unknown_keys():
    from diffmix.classify.config import TrainConfig
    from diffmix.experiment import ExperimentConfig
    from diffmix.generate import GenerateConfig
    from diffmix.personalize import PersonalizeConfig
    from diffmix.translate import TranslateConfig

    for cls in (TrainConfig, ExperimentConfig, GenerateConfig, PersonalizeConfig, TranslateConfig):
        assert issubclass(cls, StageConfig)
        with pytest.raises(ValidationError, match="stepz"):
            cls(stepz=3)


def test_field_default_reads_the_config():
    from diffmix.classify.config import TrainConfig
    from diffmix.generate import GenerateConfig

    assert field_default(GenerateConfig, "num_inference_steps") == 25
    assert field_default(TrainConfig, "synthetic") == []  # a default factory's value
    with pytest.raises(KeyError):
        field_default(TrainConfig, "nope")


def test_env_int_one_parser_two_minimums():
    env = {"N": " 7 ", "Z": "0", "BAD": "x", "NEG": "-1"}
    assert env_int(env, "N", 3, minimum=1, unit="megabytes") == 7
    assert env_int(env, "UNSET", 3, minimum=1, unit="megabytes") == 3
    assert env_int(env, "Z", 3, minimum=0, unit="epochs") == 0
    with pytest.raises(ValueError, match=r"^Z='0' must be a whole number >= 1 \(megabytes\)$"):
        env_int(env, "Z", 3, minimum=1, unit="megabytes")
    with pytest.raises(ValueError, match=r"BAD='x' is not a whole number \(epochs; 0 means no"):
        env_int(env, "BAD", 3, minimum=0, unit="epochs")
    with pytest.raises(ValueError, match=r"NEG='-1' must be a whole number >= 0"):
        env_int(env, "NEG", 3, minimum=0, unit="epochs")
