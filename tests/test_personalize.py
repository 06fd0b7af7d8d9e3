"""Personalization on a tiny SD built from configs: tokens, LoRA round trip, resume, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from diffmix.personalize import (
    AdapterError,
    PersonalizeConfig,
    attach_adapter,
    check_adapter,
    class_token,
    personalize,
    read_adapter,
)
from diffmix.runs import Cancelled, RunDir


def _cfg(tiny_sd_dir, **kw) -> PersonalizeConfig:
    base = dict(dataset="demo", shots=2, seed=0, model=str(tiny_sd_dir), steps=6, batch_size=2,
                rank=4, lr=1e-3, ti_lr=1e-2, checkpoint_every=3)  # fmt: skip
    base.update(kw)
    return PersonalizeConfig(**base)


def _render(pipe, prompts, seed=0):
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    return pipe(
        prompts, num_inference_steps=3, guidance_scale=7.5, generator=gens, output_type="np"
    ).images


@pytest.fixture(scope="module")
def trained(tiny_sd_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "a"
    out, pipe = personalize(_cfg(tiny_sd_dir), out, return_pipeline=True)
    return out, pipe


def test_adapter_folder_contract(trained, tiny_sd_dir):
    out, _ = trained
    meta = read_adapter(out)
    assert meta["base_model"] == str(tiny_sd_dir)
    assert len(meta["class_tokens"]) == 12
    assert list(meta["class_tokens"].values()) == [class_token(i) for i in range(12)]
    assert list(meta["class_tokens"]) == meta["dataset"]["class_names"]
    assert "{token}" in meta["prompt_template"] and meta["superclass"] == "bird"
    assert meta["subset"]["shots"] == 2 and len(meta["subset"]["indices"]) == 24
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    emb = load_file(out / "embeddings" / "class_0.safetensors")
    assert list(emb) == ["<class_0>"] and emb["<class_0>"].shape == (32,)
    status = RunDir(out).status()
    assert status["state"] == "done" and status["progress"] == 1.0
    assert RunDir(out).events("progress")[-1]["step"] == 6


def test_only_new_token_rows_move(trained, tiny_sd_dir):
    _, pipe = trained
    base = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    before = base.text_encoder.get_input_embeddings().weight
    after = pipe.text_encoder.get_input_embeddings().weight
    n = before.shape[0]
    assert after.shape[0] == n + 12
    assert torch.equal(after[:n], before)  # every original row untouched
    bird = base.tokenizer("bird", add_special_tokens=False).input_ids
    init = before[bird].mean(0)
    moved = [not torch.allclose(after[n + i], init) for i in range(12)]
    assert sum(moved) >= 3  # the new rows of the classes seen in 6 steps x 2 images trained


def test_saved_adapter_reloads_with_plain_diffusers_and_matches(trained, tiny_sd_dir):
    out, pipe = trained
    meta = read_adapter(out)
    prompts = [
        meta["prompt_template"].format(token=t) for t in list(meta["class_tokens"].values())[:3]
    ]
    expected = _render(pipe, prompts)
    fresh = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    fresh.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    files = sorted(str(p) for p in (out / "embeddings").glob("*.safetensors"))
    fresh.load_textual_inversion(files)
    fresh.load_lora_weights(str(out))
    got = _render(fresh, prompts)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    base = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    base.scheduler = fresh.scheduler
    base_img = _render(base, [p.replace("<class_0>", "bird") for p in prompts[:1]])
    assert np.abs(base_img - got[:1]).max() > 1e-3  # the adapter changes the output
    # attach_adapter is the same thing in one call
    again = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    again.scheduler = fresh.scheduler
    attach_adapter(again, out)
    np.testing.assert_allclose(_render(again, prompts), expected, atol=1e-4)


def test_resume_after_crash_gives_the_same_adapter(trained, tiny_sd_dir, tmp_path):
    out, _ = trained
    crashed = tmp_path / "crashed"
    shutil.copytree(out, crashed)
    # Simulate a crash after the step-3 checkpoint: the final outputs were never written.
    for name in ("adapter.json", "pytorch_lora_weights.safetensors"):
        (crashed / name).unlink()
    shutil.rmtree(crashed / "embeddings")
    assert [p.name for p in (crashed / "checkpoints").glob("*.pt")] == ["step-000003.pt"]
    personalize(_cfg(tiny_sd_dir), crashed, resume=True)
    for f in ("pytorch_lora_weights.safetensors", "embeddings/class_5.safetensors"):
        a, b = load_file(out / f), load_file(crashed / f)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_ti_only_writes_no_lora(tiny_sd_dir, tmp_path):
    out = personalize(_cfg(tiny_sd_dir, ti_only=True, steps=2), tmp_path / "ti")
    assert not (out / "pytorch_lora_weights.safetensors").exists()
    assert read_adapter(out)["ti_only"] is True


def test_cancel_keeps_the_work_and_resume_finishes_identically(
    trained, tiny_sd_dir, tmp_path, monkeypatch
):
    ref_out, _ = trained
    out = tmp_path / "c"
    calls = {"n": 0}

    def cancel_on_third_check(self):
        calls["n"] += 1
        return calls["n"] >= 3  # asked to stop after two finished steps

    monkeypatch.setattr(RunDir, "cancel_requested", cancel_on_third_check)
    with pytest.raises(Cancelled):
        personalize(_cfg(tiny_sd_dir), out)
    monkeypatch.undo()
    assert RunDir(out).status()["state"] == "cancelled"
    assert [p.name for p in (out / "checkpoints").glob("*.pt")] == ["step-000002.pt"]
    personalize(_cfg(tiny_sd_dir), out, resume=True)
    a = load_file(ref_out / "pytorch_lora_weights.safetensors")
    b = load_file(out / "pytorch_lora_weights.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_errors(tiny_sd_dir, tmp_path, trained):
    out, _ = trained
    with pytest.raises(ValueError, match="already holds"):
        personalize(_cfg(tiny_sd_dir), out)
    with pytest.raises(ValueError, match="config differs"):
        personalize(_cfg(tiny_sd_dir, steps=7), out, resume=True)
    with pytest.raises(ValueError, match="not both"):
        _cfg(tiny_sd_dir, imbalance=0.5)
    with pytest.raises(ValueError, match="extra"):
        PersonalizeConfig(stepz=3)
    meta = read_adapter(out)
    with pytest.raises(AdapterError, match="base model"):
        check_adapter(meta, model="nano")
    with pytest.raises(AdapterError, match="classes do not match"):
        check_adapter(meta, class_names=["a", "b"])
    with pytest.raises(AdapterError, match="not an adapter folder"):
        read_adapter(tmp_path)
    notsd = tmp_path / "notsd"
    notsd.mkdir()
    (notsd / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="FluxPipeline"):
        personalize(_cfg(notsd), tmp_path / "x")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_import_authors_checkpoint_round_trip(trained, tiny_sd_dir, tmp_path):
    from diffmix.personalize import import_authors_checkpoint

    out, _ = trained
    ckpt = {
        "learned_embeds_dict": {"<Black_footed_Albatross>": torch.randn(32), "<Laysan_Albatross>": torch.randn(32)},
        "name2placeholder": {"Black_footed_Albatross": "<Black_footed_Albatross>", "Laysan_Albatross": "<Laysan_Albatross>"},
        "placeholder2name": {"<Black_footed_Albatross>": "Black_footed_Albatross", "<Laysan_Albatross>": "Laysan_Albatross"},
    }  # fmt: skip
    torch.save(ckpt, tmp_path / "learned_embeds-steps-last.bin")
    dst = import_authors_checkpoint(
        tmp_path / "learned_embeds-steps-last.bin", tmp_path / "imported", base_model=str(tiny_sd_dir),
        lora_path=out, class_names=["Laysan Albatross", "Black footed Albatross"], superclass="bird",
    )  # fmt: skip
    meta = read_adapter(dst)
    assert list(meta["class_tokens"].values()) == ["<Laysan_Albatross>", "<Black_footed_Albatross>"]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    attach_adapter(pipe, dst)
    tid = pipe.tokenizer.convert_tokens_to_ids("<Laysan_Albatross>")
    torch.testing.assert_close(
        pipe.text_encoder.get_input_embeddings().weight[tid],
        ckpt["learned_embeds_dict"]["<Laysan_Albatross>"],
    )
    img = _render(pipe, [meta["prompt_template"].format(token="<Laysan_Albatross>")])
    assert img.shape == (1, 32, 32, 3)
    # a pickle carrying code is refused, not executed
    torch.save({"learned_embeds_dict": _Evil(), "name2placeholder": {}}, tmp_path / "evil.bin")
    with pytest.raises(AdapterError, match="refused to unpickle"):
        import_authors_checkpoint(tmp_path / "evil.bin", tmp_path / "x", base_model="nano")
    with pytest.raises(AdapterError, match="not in the checkpoint"):
        import_authors_checkpoint(
            tmp_path / "learned_embeds-steps-last.bin",
            tmp_path / "y",
            base_model="nano",
            class_names=["Crow"],
        )


def test_cli_personalize_json_and_errors(tiny_sd_dir, tmp_path, workspace_home):
    import os
    import subprocess
    import sys

    env = {**os.environ, "DIFFMIX_HOME": str(workspace_home)}
    cmd = [sys.executable, "-m", "diffmix", "personalize", "demo", "--model", str(tiny_sd_dir),
           "--out", str(tmp_path / "cli"), "--steps", "2", "--shots", "1", "--batch-size", "2", "--json"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(last["class_tokens"]) == 12 and "{token}" in last["prompt_template"]
    bad = subprocess.run(
        cmd[:-1] + ["--rank", "0"], capture_output=True, text=True, env=env, timeout=120
    )
    assert bad.returncode == 2
    err = bad.stderr.strip().splitlines()[-1]
    assert err.startswith("error:") and "rank" in err


def _authors_lora(unet, rank: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A LoRA in the authors' layout (old LoRAAttnProcessor keys, as unet.save_attn_procs
    wrote them) on every attention projection of ``unet``, with non-zero up matrices."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for proc in unet.attn_processors:  # "<block path>.processor"
        attn = unet.get_submodule(proc.removesuffix(".processor"))
        for name, lin in (("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v),
                          ("to_out", attn.to_out[0])):  # fmt: skip
            state[f"{proc}.{name}_lora.down.weight"] = (
                torch.randn(rank, lin.in_features, generator=g) * 0.3
            )
            state[f"{proc}.{name}_lora.up.weight"] = (
                torch.randn(lin.out_features, rank, generator=g) * 0.3
            )
    return state


def test_import_converts_the_authors_lora_layout_exactly(tiny_sd_dir, tmp_path):
    """An imported authors' LoRA changes the UNet exactly as W + up @ down on every projection
    (the authors' processors add ``up(down(x))`` at scale 1)."""
    from safetensors.torch import save_file

    from diffmix.personalize import import_authors_checkpoint

    base = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    state = _authors_lora(base.unet)
    (tmp_path / "theirs").mkdir()
    save_file(state, tmp_path / "theirs" / "pytorch_lora_weights.safetensors")
    torch.save({"learned_embeds_dict": {"<a>": torch.randn(32), "<b>": torch.randn(32)},
                "name2placeholder": {"a": "<a>", "b": "<b>"}}, tmp_path / "emb.bin")  # fmt: skip
    dst = import_authors_checkpoint(tmp_path / "emb.bin", tmp_path / "imported",
                                    base_model=str(tiny_sd_dir), lora_path=tmp_path / "theirs")  # fmt: skip
    assert read_adapter(dst)["ti_only"] is False
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    attach_adapter(pipe, dst)
    # the reference: the base UNet with each projection's weight moved by up @ down
    ref = base.unet
    with torch.no_grad():
        for key, down in state.items():
            if ".down." not in key:
                continue
            up = state[key.replace(".down.", ".up.")]
            block, proj = key.split(".processor.")
            proj = proj.split("_lora")[0]
            attn = ref.get_submodule(block)
            lin = attn.to_out[0] if proj == "to_out" else getattr(attn, proj)
            lin.weight += up @ down
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, ref.config.in_channels, 4, 4, generator=g)
    enc = torch.randn(2, 77, ref.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        got = pipe.unet(x, 10, encoder_hidden_states=enc).sample
        want = ref(x, 10, encoder_hidden_states=enc).sample
        plain = (
            StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
            .unet(x, 10, encoder_hidden_states=enc)
            .sample
        )
    assert (want - plain).abs().max() > 1e-2  # the LoRA really moves the output
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_a_lora_diffusers_cannot_read_is_an_error(tiny_sd_dir, tmp_path):
    from safetensors.torch import save_file

    from diffmix.personalize import import_authors_checkpoint

    unet = StableDiffusionPipeline.from_pretrained(tiny_sd_dir).unet
    state = _authors_lora(unet)
    torch.save({"learned_embeds_dict": {"<a>": torch.randn(32)}, "name2placeholder": {"a": "<a>"}},
               tmp_path / "emb.bin")  # fmt: skip
    # a key in no known layout: the import names it instead of dropping it
    save_file(
        {**state, "mid_block.mystery.weight": torch.zeros(2, 2)}, tmp_path / "bad.safetensors"
    )
    with pytest.raises(AdapterError, match="mid_block.mystery.weight"):
        import_authors_checkpoint(tmp_path / "emb.bin", tmp_path / "x", base_model=str(tiny_sd_dir),
                                  lora_path=tmp_path / "bad.safetensors")  # fmt: skip
    # an adapter folder holding the raw authors' file (what the old importer copied): attaching
    # it must fail, not run as token-only
    dst = import_authors_checkpoint(
        tmp_path / "emb.bin", tmp_path / "y", base_model=str(tiny_sd_dir)
    )
    save_file(state, dst / "pytorch_lora_weights.safetensors")
    with pytest.raises(AdapterError, match="claims a LoRA"):
        attach_adapter(StableDiffusionPipeline.from_pretrained(tiny_sd_dir), dst)


def test_status_names_the_real_phase(tiny_sd_dir, tmp_path, monkeypatch):
    """Drawing samples and saving are said in the status (it showed "training 100 % · ETA 0 s"
    for 80 s while the last sample grid was drawn and the adapter saved)."""
    from pages import jobs_ui

    seen: list[tuple[str, object]] = []
    original = RunDir.set_status

    def record(self, state=None, **fields):
        if "message" in fields:
            seen.append((fields["message"], fields.get("eta_s", "kept")))
        return original(self, state, **fields)

    monkeypatch.setattr(RunDir, "set_status", record)
    out = personalize(_cfg(tiny_sd_dir, steps=4, sample_every=4, checkpoint_every=2),
                      tmp_path / "phases")  # fmt: skip
    messages = [m for m, _ in seen]
    assert "saving a checkpoint (step 2)" in messages
    assert "drawing samples (step 4)" in messages
    assert messages.index("drawing samples (step 4)") < messages.index(
        "saving the adapter (step 4)"
    )
    assert all(eta is None for m, eta in seen if m.startswith(("drawing", "saving")))
    # the job panel shows the phase on the bar while the run is in it
    RunDir(out).set_status("running", phase="drawing samples", progress=1.0, eta_s=None)
    view = jobs_ui.job_view(out)
    assert "drawing samples · 100%" in view.bar and "ETA" not in view.text
