"""The adapter folder as one module (issue 14): one missing-adapter check, one fingerprint, and
the former import paths still naming the same objects. No model is loaded."""

from __future__ import annotations

import statistics

import pytest

from diffmix import adapter
from diffmix.translate import get_strategy


def test_one_missing_adapter_check_serves_python_and_the_command_line():
    from diffmix.generate import GenerateConfig
    from diffmix.translate import TranslateConfig, TranslationItem, translate

    with pytest.raises(adapter.AdapterError, match="'diff-mix'.*pass --adapter DIR.*'real-mix'"):
        adapter.require_adapter(get_strategy("diff-mix"), None, how="pass --adapter DIR")
    with pytest.raises(adapter.AdapterError, match="'ti-aug'.*'real-aug'"):
        adapter.require_adapter(get_strategy("ti-aug"), "", how="x")
    adapter.require_adapter(get_strategy("real-mix"), None, how="x")  # needs none: no error
    adapter.require_adapter(get_strategy("diff-mix"), "some/dir", how="x")

    with pytest.raises(ValueError, match="needs a personalized adapter folder.*--adapter DIR"):
        GenerateConfig(strategy="diff-aug")
    item = TranslationItem(source=None, source_class="a", target_class="a", strength=0.5)
    with pytest.raises(
        adapter.AdapterError, match="needs a personalized adapter folder.*adapter=DIR"
    ):
        translate([item], TranslateConfig(strategy="diff-aug"), class_names=["a"])


def _adapter_folder(root, ti_only=False):
    root.mkdir()
    meta = {"format": adapter.ADAPTER_FORMAT, "base_model": "nano", "ti_only": ti_only,
            "class_tokens": {"a": "<class_0>", "b": "<class_1>"}}  # fmt: skip
    adapter.write_adapter_json(root, meta)
    (root / "embeddings").mkdir()
    for t in meta["class_tokens"].values():
        adapter.embedding_file(root, t).write_bytes(t.encode())
    return root


def test_kind_check_and_fingerprint_of_an_adapter_folder(tmp_path):
    full = _adapter_folder(tmp_path / "full")
    meta = adapter.read_adapter(full)
    assert not (full / ".adapter.json.tmp").exists()  # written through a temp file
    adapter.check_adapter_for(meta, get_strategy("diff-mix"), "nano", ["a", "b"])
    with pytest.raises(adapter.AdapterError, match="token-only baseline.*'diff-mix'"):
        adapter.check_adapter_for(meta, get_strategy("ti-mix"), "nano", ["a", "b"])
    with pytest.raises(adapter.AdapterError, match="classes do not match"):
        adapter.check_adapter_for(meta, get_strategy("diff-mix"), "nano", ["a", "c"])

    assert adapter.adapter_fingerprint(None) is None
    fp = adapter.adapter_fingerprint(full)
    assert fp == adapter.adapter_fingerprint(str(full)) and len(fp) == 16
    (full / adapter.LORA_FILE).write_bytes(b"lora")
    with_lora = adapter.adapter_fingerprint(full)
    adapter.embedding_file(full, "<class_1>").write_bytes(b"changed")
    assert len({fp, with_lora, adapter.adapter_fingerprint(full)}) == 3
    (full / "unrelated.txt").write_text("not part of the adapter")
    assert adapter.adapter_fingerprint(full) == adapter.adapter_fingerprint(full)


def test_former_import_paths_name_the_same_objects():
    from diffmix import experiment, generate, personalize, pipeline, synthetic, translate
    from diffmix.experiment import plan as experiment_plan
    from diffmix.personalize import run as pz_run

    for name in ("AdapterError", "read_adapter", "check_adapter", "attach_adapter",
                 "check_prompt_template", "import_authors_checkpoint", "convert_lora_layout",
                 "lora_layers", "ADAPTER_FILE", "LORA_FILE"):  # fmt: skip
        assert getattr(personalize, name) is getattr(adapter, name)
    assert generate.adapter_fingerprint is adapter.adapter_fingerprint
    assert synthetic.adapter_fingerprint is adapter.adapter_fingerprint
    assert experiment.classifier_backbone is experiment_plan.classifier_backbone
    assert generate.model_fingerprint is synthetic.model_fingerprint
    assert translate.AdapterError is adapter.AdapterError
    assert personalize.personalize is pz_run.personalize
    assert callable(pipeline.load_base)


def test_one_mean_std_for_the_experiment_table_and_the_train_page():
    from diffmix.experiment import format_mean_std, mean_std

    xs = [0.5, 0.6, 0.75]
    m, s = mean_std(xs)
    assert (m, s) == pytest.approx((statistics.mean(xs), statistics.stdev(xs)))
    assert format_mean_std([*xs, None]) == f"{100 * m:.1f} ± {100 * s:.1f}"
    assert format_mean_std([0.5, None]) == "50.0" and format_mean_std([None]) == ""
    assert format_mean_std([1.0, 3.0], scale=1.0) == "2.0 ± 1.4"
