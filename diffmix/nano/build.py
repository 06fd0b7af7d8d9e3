"""Build the components of nano-SD: a genuine (tiny) diffusers Stable Diffusion pipeline.

Every component is the class Stable Diffusion itself uses -- ``CLIPTokenizer`` with the real
49,408-token CLIP BPE vocabulary, ``CLIPTextModel``, ``AutoencoderKL``,
``UNet2DConditionModel`` with cross-attention and ``DPMSolverMultistepScheduler`` -- only
smaller, so the same code path serves nano-SD on a CPU and SD 1.5 / 2.1 on a GPU.

The sizes here are also what the tests use (with smaller widths) to build tiny SD models
from configs.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NanoArchitecture:
    """Widths and depths of the nano-SD components (defaults: the shipped model).

    ``resolution`` is the pixel side (px) of the images the model makes; the VAE downsamples
    by ``2 ** (len(vae_channels) - 1)``, so the UNet works on ``resolution / 4`` latents.
    """

    resolution: int = 64
    text_hidden: int = 96  # CLIP text width; the token embedding is 49,408 x text_hidden
    text_layers: int = 3
    text_heads: int = 4
    max_length: int = 77  # tokens, as CLIP
    vae_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 160)
    unet_layers_per_block: int = 1
    unet_head_dim: int = 32
    unet_transformer_layers: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NanoArchitecture:
        data = dict(data)
        for key in ("vae_channels", "unet_channels"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


# --------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP reversible byte -> printable unicode map (from the CLIP BPE paper code)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def clip_bpe_path() -> Path:
    """The CLIP BPE merges file shipped inside the ``open_clip_torch`` wheel."""
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP BPE vocabulary not found at {path}; reinstall open_clip_torch "
            "(pip install open_clip_torch) to build the nano-SD tokenizer"
        )
    return path


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    with gzip.open(clip_bpe_path()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_clip_tokenizer(max_length: int = 77):
    """A ``CLIPTokenizer`` with the full CLIP vocabulary (49,408 tokens), built offline."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=[tuple(m.split()) for m in merges],
        model_max_length=max_length,
        pad_token="<|endoftext|>",
    )


# --------------------------------------------------------------------------- models


def build_text_encoder(arch: NanoArchitecture, vocab_size: int = 49408):
    """A randomly initialised ``CLIPTextModel`` of the given width."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=arch.text_hidden,
        intermediate_size=arch.text_hidden * 4,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=arch.max_length,
        projection_dim=arch.text_hidden,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def build_vae(arch: NanoArchitecture):
    """A randomly initialised ``AutoencoderKL`` (downsampling ``2**(len(channels)-1)``)."""
    from diffusers import AutoencoderKL

    n = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=arch.vae_channels,
        layers_per_block=1,
        latent_channels=arch.latent_channels,
        norm_num_groups=16,
        sample_size=arch.resolution,
        mid_block_add_attention=False,
    )


def vae_scale_factor(arch: NanoArchitecture) -> int:
    return 2 ** (len(arch.vae_channels) - 1)


def build_unet(arch: NanoArchitecture):
    """A randomly initialised ``UNet2DConditionModel`` with cross-attention on every level."""
    from diffusers import UNet2DConditionModel

    n = len(arch.unet_channels)
    heads = tuple(max(1, c // arch.unet_head_dim) for c in arch.unet_channels)
    return UNet2DConditionModel(
        sample_size=arch.resolution // vae_scale_factor(arch),
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=arch.unet_channels,
        layers_per_block=arch.unet_layers_per_block,
        cross_attention_dim=arch.text_hidden,
        attention_head_dim=heads,
        transformer_layers_per_block=arch.unet_transformer_layers,
        norm_num_groups=16,
    )


def build_scheduler():
    """The scheduler saved with nano-SD: DPM-Solver++ multistep (2M) with Karras sigmas.

    The UNet is trained on SD's own scaled-linear schedule (``alphas_cumprod``); only the
    sampling grid differs. Karras spacing (rho 7) puts more of the 25 steps at low noise, so
    img2img ``strength`` (a fraction of that grid) corrupts a 16x16 nano latent about as
    gently as linear spacing corrupts SD's 64x64 latent: at ``strength`` 0.3 sampling starts
    at sigma 0.25 (alpha_bar 0.94) instead of 0.78 (0.62), which at 64 px already recoloured
    a third of the birds. At ``strength`` >= 0.7 the two grids start at nearly the same noise.
    """
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        steps_offset=1,
        use_karras_sigmas=True,
    )


def build_pipeline(arch: NanoArchitecture = NanoArchitecture(), *, seed: int = 0):
    """An untrained ``StableDiffusionPipeline`` of this architecture (fp32, CPU)."""
    import torch
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(seed)
    return StableDiffusionPipeline(
        vae=build_vae(arch),
        text_encoder=build_text_encoder(arch),
        tokenizer=build_clip_tokenizer(arch.max_length),
        unet=build_unet(arch),
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
