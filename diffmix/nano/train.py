"""Pretrain nano-SD from scratch on the captioned demo-style corpus (CPU, about 50 minutes).

Run ``python -m diffmix.nano.train --out assets/nano-sd`` to rebuild the shipped model.

Steps:
  1. Render the captioned corpus (:func:`diffmix.data.demo.render_caption_sample`): random
     bird attribute combinations on random backgrounds, plain-word captions, never a demo
     class name.
  2. Train the VAE (``AutoencoderKL``, 4x downsampling) on the corpus images: L1 + image-
     gradient L1, foreground pixels weighted up (the corpus ships masks), tiny KL.
  3. Encode the corpus once to latent means/std; set ``scaling_factor`` to 1/latent std.
  4. Train the UNet and the CLIP text encoder jointly with the SD objective (epsilon
     prediction on the scaled-linear DDPM schedule), 10% caption dropout for classifier-
     free guidance, min-SNR-5 loss weighting and an EMA of the weights.
  5. Save the EMA weights as a diffusers folder in fp16 safetensors, plus ``training.json``
     (config, final losses, wall time) and a sample grid.

Everything is seeded; a crash during step 4 resumes from the last checkpoint in the work
folder (``--work``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffmix.data.demo import DEMO_VERSION
from diffmix.nano.build import NanoArchitecture, build_pipeline
from diffmix.runs import atomic_target

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NanoTrainConfig:
    """Everything that determines the trained nano-SD (saved as ``training.json``)."""

    seed: int = 0
    corpus_size: int = 36000  # captioned images rendered for pretraining
    vae_steps: int = 2000  # VAE optimiser steps
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_foreground_weight: float = 3.0  # loss weight of masked (bird) pixels vs background 1
    unet_steps: int = 2000  # UNet + text encoder optimiser steps
    unet_batch: int = 64
    unet_lr: float = 1e-3
    text_lr: float = 5e-4
    warmup_steps: int = 100
    caption_dropout: float = 0.1  # probability of an empty caption (classifier-free guidance)
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    arch: NanoArchitecture = field(
        default_factory=lambda: NanoArchitecture(unet_channels=(48, 96, 144), text_hidden=64)
    )


# --------------------------------------------------------------------------- 1. corpus


def _render_range(args: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from diffmix.data.demo import render_caption_sample

    start, stop, seed, size = args
    imgs = np.empty((stop - start, size, size, 3), np.uint8)
    masks = np.empty((stop - start, size, size), np.uint8)
    caps = []
    for k, i in enumerate(range(start, stop)):
        im, m, c = render_caption_sample(i, seed=seed, size=size)
        imgs[k], masks[k] = np.asarray(im), np.asarray(m)
        caps.append(c)
    return imgs, masks, caps


def render_corpus(
    n: int, *, seed: int, size: int, workers: int = 2, cache: Path | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Render ``n`` captioned samples: uint8 images (n,H,W,3), masks (n,H,W), captions."""
    if cache is not None and cache.is_file():
        data = np.load(cache, allow_pickle=False)
        return data["images"], data["masks"], [str(c) for c in data["captions"]]
    chunks = [(a, min(n, a + 2000), seed, size) for a in range(0, n, 2000)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(_render_range, chunks))
    images = np.concatenate([p[0] for p in parts])
    masks = np.concatenate([p[1] for p in parts])
    captions = [c for p in parts for c in p[2]]
    if cache is not None:
        np.savez(cache, images=images, masks=masks, captions=np.array(captions))
    return images, masks, captions


# --------------------------------------------------------------------------- 2. VAE


def _lr_at(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Linear warmup then cosine decay to ``floor`` (fraction of the base lr)."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n,H,W,3) -> float (n,3,H,W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_vae(vae, images: np.ndarray, masks: np.ndarray, cfg: NanoTrainConfig) -> float:
    """Train the VAE in place; returns the final mean L1 reconstruction error (0-2 scale)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae.train()
    recent: list[float] = []
    for step in range(cfg.vae_steps):
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * _lr_at(step, cfg.vae_steps, 50)
        idx = torch.randint(0, len(images), (cfg.vae_batch,), generator=gen).numpy()
        x = _to_tensor(images[idx])
        w = 1.0 + (cfg.vae_foreground_weight - 1.0) * torch.from_numpy(masks[idx] > 127).float()
        w = w[:, None]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        l1 = (w * (rec - x).abs()).mean()
        gx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
        gy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
        grad = (gx(rec) - gx(x)).abs().mean() + (gy(rec) - gy(x)).abs().mean()
        kl = post.kl().mean()
        loss = l1 + 0.5 * grad + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        recent = (recent + [float((rec - x).abs().mean())])[-50:]
        if step % 50 == 0 or step == cfg.vae_steps - 1:
            logger.info(
                "vae step %d/%d  l1 %.4f  kl %.1f", step, cfg.vae_steps, np.mean(recent), float(kl)
            )
    vae.eval()
    return float(np.mean(recent))


@torch.no_grad()
def encode_corpus(vae, images: np.ndarray, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every corpus image, (n, C, h, w) float32 each."""
    means, stds = [], []
    for a in range(0, len(images), batch):
        dist = vae.encode(_to_tensor(images[a : a + batch])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


# --------------------------------------------------------------------------- 4. UNet


def min_snr_weights(
    timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction (Hang et al., 2023): min(SNR, g)/SNR."""
    ac = alphas_cumprod[timesteps]
    snr = ac / (1 - ac)
    return torch.clamp(snr, max=gamma) / snr


def _tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


class _EMA:
    """Exponential moving average of parameters (decay warmed up as (1+t)/(10+t))."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = params
        self.shadow = [p.detach().clone() for p in params]
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_mul_(self.shadow, d)
        torch._foreach_add_(self.shadow, [p.detach() for p in self.params], alpha=1 - d)

    @torch.no_grad()
    def copy_to(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            p.copy_(s)


def train_unet(pipe, means, stds, captions: list[str], cfg: NanoTrainConfig, work: Path) -> float:
    """Train UNet + text encoder jointly (in place, EMA weights copied in at the end).

    Checkpoints to ``work/unet_ckpt.pt`` every ``cfg.checkpoint_every`` steps and resumes
    from it. Returns the final mean (unweighted) epsilon MSE.
    """
    unet, te, tok = pipe.unet, pipe.text_encoder, pipe.tokenizer
    sched = pipe.scheduler
    alphas_cumprod = sched.alphas_cumprod.float()
    ids = _tokenize(tok, captions)
    empty = _tokenize(tok, [""])[0]
    scale = pipe.vae.config.scaling_factor
    params_u = [p for p in unet.parameters()]
    params_t = [p for p in te.parameters()]
    opt = torch.optim.AdamW(
        [
            {"params": params_u, "lr": cfg.unet_lr, "weight_decay": 1e-2},
            {"params": params_t, "lr": cfg.text_lr, "weight_decay": 0.0},
        ]
    )
    ema = _EMA(params_u + params_t, cfg.ema_decay)
    start, recent = 0, []
    ckpt = work / "unet_ckpt.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        unet.load_state_dict(state["unet"])
        te.load_state_dict(state["te"])
        opt.load_state_dict(state["opt"])
        ema.shadow = state["ema"]
        start, recent = state["step"], state["recent"]
        logger.info("resumed UNet training at step %d", start)
    unet.train()
    te.train()
    n = len(captions)
    t0 = time.time()
    for step in range(start, cfg.unet_steps):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # resumable RNG
        for g, base in zip(opt.param_groups, (cfg.unet_lr, cfg.text_lr), strict=True):
            g["lr"] = base * _lr_at(step, cfg.unet_steps, cfg.warmup_steps)
        idx = torch.randint(0, n, (cfg.unet_batch,), generator=gen)
        z = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
        batch_ids = ids[idx].clone()
        drop = torch.rand(cfg.unet_batch, generator=gen) < cfg.caption_dropout
        batch_ids[drop] = empty
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
        ac = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = ac.sqrt() * z + (1 - ac).sqrt() * noise
        ctx = te(batch_ids)[0]
        pred = unet(noisy, t, ctx).sample
        mse = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (mse * min_snr_weights(t, alphas_cumprod, cfg.min_snr_gamma)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params_u + params_t, 1.0)
        opt.step()
        ema.update(step)
        recent = (recent + [float(mse.mean())])[-100:]
        if step % 50 == 0 or step == cfg.unet_steps - 1:
            rate = (step + 1 - start) / max(1e-6, time.time() - t0)
            logger.info(
                "unet step %d/%d  mse %.4f  %.2f steps/s  eta %.1f min",
                step, cfg.unet_steps, np.mean(recent), rate,
                (cfg.unet_steps - step - 1) / max(rate, 1e-6) / 60,
            )  # fmt: skip
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.unet_steps:
            state = {
                "unet": unet.state_dict(), "te": te.state_dict(), "opt": opt.state_dict(),
                "ema": ema.shadow, "step": step + 1, "recent": recent,
            }  # fmt: skip
            with atomic_target(ckpt) as tmp:
                torch.save(state, tmp)
    ema.copy_to()
    unet.eval()
    te.eval()
    return float(np.mean(recent))


# --------------------------------------------------------------------------- 5. save


def save_nano(pipe, out: Path, info: dict) -> None:
    """Save the pipeline as fp16 safetensors + ``training.json`` (atomic folder swap)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.to(torch.float16)
    pipe.save_pretrained(tmp, safe_serialization=True)
    pipe.to(torch.float32)
    # The weights are stored in fp16 (half the size), but transformers loads a text encoder in
    # its config's dtype while diffusers loads the UNet/VAE in fp32: a plain
    # ``from_pretrained(folder)`` then mixed fp16 and fp32 and failed at the first prompt.
    # Recording fp32 makes every component load in fp32 (pass ``torch_dtype=`` for another).
    te_config = tmp / "text_encoder" / "config.json"
    te_meta = json.loads(te_config.read_text())
    te_meta["dtype"] = "float32"
    te_config.write_text(json.dumps(te_meta, indent=2, sort_keys=True) + "\n")
    (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def train_nano(cfg: NanoTrainConfig, out: Path, work: Path) -> dict:
    """Run steps 1-5 and return the training record written to ``training.json``."""
    torch.manual_seed(cfg.seed)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    arch = cfg.arch
    # 1. corpus
    images, masks, captions = render_corpus(
        cfg.corpus_size, seed=cfg.seed, size=arch.resolution,
        workers=min(2, os.cpu_count() or 1), cache=work / f"corpus-v{DEMO_VERSION}-{cfg.seed}-{cfg.corpus_size}.npz",
    )  # fmt: skip
    logger.info("corpus: %d images (%.0f s)", len(images), time.time() - t_start)
    pipe = build_pipeline(arch, seed=cfg.seed)
    # 2. VAE
    vae_state = work / "vae.pt"
    if vae_state.is_file():
        pipe.vae.load_state_dict(torch.load(vae_state, weights_only=True))
        vae_l1 = json.loads((work / "vae.json").read_text())["l1"]
    else:
        vae_l1 = train_vae(pipe.vae, images, masks, cfg)
        torch.save(pipe.vae.state_dict(), vae_state)
        (work / "vae.json").write_text(json.dumps({"l1": vae_l1}))
    pipe.vae.eval()
    t_vae = time.time() - t_start
    # 3. latents
    means, stds = encode_corpus(pipe.vae, images)
    latent_std = float(means.std())
    pipe.vae.register_to_config(scaling_factor=1.0 / latent_std)
    logger.info("latent std %.4f -> scaling_factor %.4f", latent_std, 1.0 / latent_std)
    # 4. UNet + text encoder
    unet_mse = train_unet(pipe, means, stds, captions, cfg, work)
    info = {
        "config": asdict(cfg),
        "final": {"vae_l1": vae_l1, "unet_eps_mse": unet_mse, "latent_std": latent_std},
        "wall_seconds": {"vae_and_corpus": round(t_vae), "total": round(time.time() - t_start)},
        "demo_version": DEMO_VERSION,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    # 5. save
    save_nano(pipe, out, info)
    logger.info("saved nano-SD to %s (%.1f min)", out, (time.time() - t_start) / 60)
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", type=Path, default=Path("assets/nano-sd"), help="output pipeline folder"
    )
    p.add_argument(
        "--work", type=Path, default=None, help="scratch folder (corpus cache, checkpoints)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unet-steps", type=int, default=None)
    p.add_argument("--vae-steps", type=int, default=None)
    p.add_argument("--corpus-size", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(os.cpu_count() or 1)
    overrides = {
        k: v
        for k, v in {
            "seed": args.seed,
            "unet_steps": args.unet_steps,
            "vae_steps": args.vae_steps,
            "corpus_size": args.corpus_size,
        }.items()
        if v is not None
    }
    cfg = NanoTrainConfig(**overrides)
    from diffmix.workspace import subdir

    work = args.work or subdir("nano-train", f"demo-v{DEMO_VERSION}-seed{cfg.seed}")
    train_nano(cfg, args.out, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
