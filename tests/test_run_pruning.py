"""Issue 16, item 5: a finished personalization keeps only what resume and reuse need -- the
newest checkpoint (a resume of the finished run starts from it) and the adapter files -- not
every checkpoint it wrote on the way (~200 MB a run on nano). Training's side is checked in
tests/test_classify_train.py::test_tiny_training_writes_a_complete_run_dir."""

from __future__ import annotations

from pathlib import Path

from diffmix.personalize import PersonalizeConfig, attach_adapter, personalize
from diffmix.runs import RunDir


def test_finished_personalization_keeps_the_newest_checkpoint_and_the_adapter(
    tiny_sd_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pz"
    cfg = PersonalizeConfig(dataset="demo", shots=2, seed=0, model=str(tiny_sd_dir), steps=6,
                            batch_size=2, rank=4, lr=1e-3, ti_lr=1e-2, checkpoint_every=2,
                            sample_every=0)  # fmt: skip
    personalize(cfg, out)  # checkpoints at steps 2 and 4 (two kept while it runs)
    assert RunDir(out).status()["state"] == "done"
    assert [p.name for p in (out / "checkpoints").glob("*.pt")] == ["step-000004.pt"]
    # what reuse needs is all there: the adapter attaches to the base model
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert len(list((out / "embeddings").glob("*.safetensors"))) == 12
    from diffusers import StableDiffusionPipeline

    attach_adapter(StableDiffusionPipeline.from_pretrained(tiny_sd_dir), out)
