"""The built-in demo dataset: toy "birds" told apart by attribute combinations.

It stands in for a fine-grained dataset such as CUB. Every class is a *bird*; classes differ
only in the combination of body colour, head colour and body pattern, and each class has a
species-like name that says nothing about those attributes (so a text-to-image model that
only knows attribute words cannot draw a class from its name -- personalization fixes that).

Each image is a bird at a random position, scale, tilt and facing on a background that is
independent of the class (real textures shipped inside scikit-image plus procedural ones).
Every image has a foreground mask. Everything is a pure function of ``(seed, split, class,
index)``, so the dataset is bit-identical on every machine and for every requested size.

The same renderer also emits a *captioned corpus* (:func:`render_caption_sample`): random
attribute combinations -- far more than the 12 classes -- described in plain words, never
with a class name. That corpus pretrains the embedded nano Stable Diffusion model.

Over 400 lines because one renderer draws both the demo images and the caption corpus, so the nano
model pretrained on the corpus draws the very birds the demo classes are made of.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

logger = logging.getLogger(__name__)

#: Bump when the renderer changes: cached demo folders are keyed by it.
DEMO_VERSION = 2
# Stripe geometry in units of the 64-px bird canvas (the bird is then scaled to 50-85% of the
# image width). Version 1 drew 2.2-wide stripes every 5 units: 2-3 image pixels apart, finer
# than the 4x-downsampled latent grid of nano-SD can hold, so no model could draw them.
# Version 2 draws 6-wide bands every 12 units (about 3 across the body).
STRIPE_WIDTH = 6.0
STRIPE_PERIOD = 12.0
SUPERCLASS = "bird"

#: Colour words and their RGB values (0-255). Used for bodies and heads.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (245, 220, 50),
    "green": (50, 170, 60),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "black": (25, 25, 25),
    "white": (240, 240, 240),
}
BODY_COLORS = ("red", "orange", "yellow", "green", "blue", "purple")
HEAD_COLORS = ("black", "white", "red", "yellow", "blue", "green")
PATTERNS = ("plain", "striped", "spotted")


@dataclass(frozen=True)
class BirdAttributes:
    """One combination of foreground attributes."""

    body: str
    head: str
    pattern: str

    def describe(self, template: int = 0) -> str:
        """Plain-word caption of these attributes (never a class name).

        ``template`` in ``[0, len(CAPTION_TEMPLATES))`` picks the wording; 0 is the
        canonical one used for class prompts.
        """
        pat = {"plain": "", "striped": "striped ", "spotted": "spotted "}[self.pattern]
        pat_with = {"plain": "", "striped": " with stripes", "spotted": " with spots"}[self.pattern]
        return CAPTION_TEMPLATES[template].format(
            body=self.body, head=self.head, pat=pat, pat_with=pat_with
        )


CAPTION_TEMPLATES = (
    "a photo of a {pat}bird with a {body} body and a {head} head",
    "a {pat}{body} bird with a {head} head",
    "a photo of a bird with a {head} head and a {body} body{pat_with}",
    "a {body} bird{pat_with} and a {head} head",
)

#: The demo classes: species-like names that say nothing about the attributes.
DEMO_CLASSES: dict[str, BirdAttributes] = {
    "quellan": BirdAttributes("red", "black", "plain"),
    "doravik": BirdAttributes("red", "white", "striped"),
    "sintaro": BirdAttributes("blue", "black", "spotted"),
    "mervish": BirdAttributes("blue", "yellow", "plain"),
    "talbrook": BirdAttributes("yellow", "black", "striped"),
    "orvane": BirdAttributes("yellow", "blue", "plain"),
    "keswith": BirdAttributes("green", "white", "spotted"),
    "pellory": BirdAttributes("green", "red", "plain"),
    "vandric": BirdAttributes("purple", "yellow", "striped"),
    "ulmster": BirdAttributes("purple", "white", "plain"),
    "corbane": BirdAttributes("orange", "blue", "spotted"),
    "hestwick": BirdAttributes("orange", "black", "plain"),
}

_SPLIT_IDS = {"train": 0, "test": 1, "corpus": 2}
_SUPER = 4  # supersampling factor of the bird layer (anti-aliasing)


def class_prompt(class_name: str) -> str:
    """The plain-word prompt describing a demo class (the pretraining caption wording)."""
    try:
        return DEMO_CLASSES[class_name].describe(0)
    except KeyError:
        raise ValueError(
            f"unknown demo class {class_name!r}; known: {', '.join(DEMO_CLASSES)}"
        ) from None


def all_attribute_combinations() -> list[BirdAttributes]:
    """Every (body, head, pattern) combination the corpus draws from (head != body)."""
    return [
        BirdAttributes(b, h, p)
        for b in BODY_COLORS
        for h in HEAD_COLORS
        for p in PATTERNS
        if h != b
    ]


# --------------------------------------------------------------------------- backgrounds


@lru_cache(maxsize=1)
def _textures() -> tuple[np.ndarray, ...]:
    """Real photos/textures shipped inside the scikit-image wheel (no download), as RGB uint8."""
    import skimage.data as skd

    names = (
        "brick", "grass", "gravel", "coffee", "rocket", "chelsea", "astronaut",
        "moon", "coins", "hubble_deep_field", "immunohistochemistry", "cell", "camera",
    )  # fmt: skip
    out = []
    for name in names:
        try:
            arr = getattr(skd, name)()
        except Exception:  # a texture missing from this scikit-image build is not fatal
            logger.debug("scikit-image texture %s unavailable", name)
            continue
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        out.append(np.ascontiguousarray(arr[..., :3]).astype(np.uint8))
    return tuple(out)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a random ``cells x cells`` grid upsampled bicubically."""
    grid = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray((grid * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _random_rgb(rng: np.random.Generator, lo: float = 0.15, hi: float = 0.9) -> np.ndarray:
    return rng.uniform(lo, hi, size=3).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A class-independent background, float32 RGB in [0, 1], shape (size, size, 3)."""
    textures = _textures()
    kind = rng.integers(0, 5) if textures else rng.integers(1, 5)
    if kind == 0:  # crop of a real texture, random scale and tint
        tex = textures[rng.integers(0, len(textures))]
        h, w = tex.shape[:2]
        crop = int(rng.uniform(0.25, 0.9) * min(h, w))
        y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        patch = Image.fromarray(tex[y : y + crop, x : x + crop]).resize(
            (size, size), Image.BILINEAR
        )
        bg = np.asarray(patch, dtype=np.float32) / 255.0
        if rng.random() < 0.5:  # tint grey or colour textures toward a random hue
            bg = bg * (0.5 + 0.5 * _random_rgb(rng, 0.3, 1.0))
    elif kind == 1:  # sky-like vertical gradient
        top, bottom = _random_rgb(rng), _random_rgb(rng)
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
        bg = np.broadcast_to(top * (1 - t) + bottom * t, (size, size, 3)).copy()
    elif kind == 2:  # horizon: sky over ground with a noisy edge
        sky, ground = _random_rgb(rng, 0.4, 0.95), _random_rgb(rng, 0.1, 0.6)
        horizon = rng.uniform(0.35, 0.8) * size
        edge = horizon + (_smooth_noise(rng, size, 4)[0] - 0.5) * size * 0.2
        rows = np.arange(size, dtype=np.float32)[:, None]
        below = (rows > edge[None, :]).astype(np.float32)[..., None]
        bg = sky * (1 - below) + ground * below
        bg = bg * (0.85 + 0.3 * _smooth_noise(rng, size, 16)[..., None])
    elif kind == 3:  # foliage-like blotches of two colours
        a, b = _random_rgb(rng), _random_rgb(rng)
        n = _smooth_noise(rng, size, int(rng.integers(3, 9)))[..., None]
        bg = a * n + b * (1 - n)
    else:  # tiles / checkerboard
        a, b = _random_rgb(rng), _random_rgb(rng)
        period = int(rng.integers(6, 20))
        yy, xx = np.mgrid[0:size, 0:size]
        board = (((yy // period) + (xx // period)) % 2).astype(np.float32)[..., None]
        bg = a * board + b * (1 - board)
    # Mute saturation a little so the backgrounds are varied but not cartoon-bright.
    grey = bg.mean(axis=-1, keepdims=True)
    bg = grey + (bg - grey) * rng.uniform(0.5, 0.9)
    return np.clip(bg, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- the bird


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in rgb)  # type: ignore[return-value]


def _bird_layer(attrs: BirdAttributes, rng: np.random.Generator) -> Image.Image:
    """Draw one bird facing right on a transparent RGBA canvas (supersampled 4x)."""
    s = 64 * _SUPER
    u = s / 64.0  # one unit = one pixel of a 64-px bird canvas
    layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    body, head = COLORS[attrs.body], COLORS[attrs.head]
    dark = (60, 60, 60, 255)
    # Small per-image proportion jitter keeps the class from being one fixed glyph.
    bw = rng.uniform(0.9, 1.1)
    tail_len = rng.uniform(0.85, 1.15)
    body_box = [16 * u, 24 * u, (16 + 30 * bw) * u, 42 * u]
    cx, cy = (body_box[0] + body_box[2]) / 2, (body_box[1] + body_box[3]) / 2
    # legs, tail, body, wing, head, beak, eye
    for lx in (cx - 3 * u, cx + 3 * u):
        d.line([(lx, cy + 7 * u), (lx - 1 * u, cy + 14 * u)], fill=dark, width=int(1.2 * u))
    tail_tip = body_box[0] - 12 * u * tail_len
    d.polygon(
        [(body_box[0] + 4 * u, cy - 2 * u), (tail_tip, cy - 7 * u), (tail_tip, cy + 3 * u)],
        fill=_shade(body, 0.75) + (255,),
    )
    d.ellipse(body_box, fill=body + (255,))
    # pattern, clipped to the body ellipse
    if attrs.pattern != "plain":
        pat = Image.new("RGBA", (s, s), (0, 0, 0, 0))
        pd = ImageDraw.Draw(pat)
        if attrs.pattern == "striped":
            stripe = (20, 20, 20, 255)
            x = body_box[0] + rng.uniform(2, 4) * u
            while x < body_box[2]:
                pd.rectangle([x, body_box[1], x + STRIPE_WIDTH * u, body_box[3]], fill=stripe)
                x += STRIPE_PERIOD * u
        else:
            spot = (250, 250, 250, 255)
            for _ in range(int(rng.integers(6, 9))):
                px = rng.uniform(body_box[0] + 3 * u, body_box[2] - 3 * u)
                py = rng.uniform(body_box[1] + 3 * u, body_box[3] - 3 * u)
                r = rng.uniform(1.6, 2.4) * u
                pd.ellipse([px - r, py - r, px + r, py + r], fill=spot)
        clip = Image.new("L", (s, s), 0)
        ImageDraw.Draw(clip).ellipse(body_box, fill=255)
        pat.putalpha(Image.fromarray(np.minimum(np.asarray(pat)[..., 3], np.asarray(clip))))
        layer.alpha_composite(pat)
        d = ImageDraw.Draw(layer)
    d.ellipse(
        [cx - 9 * u, cy - 4 * u, cx + 5 * u, cy + 4 * u],
        outline=_shade(body, 0.6) + (255,),
        width=int(1.0 * u),
    )
    hx, hy, hr = body_box[2] - 3 * u, body_box[1] - 1 * u, 7.5 * u
    d.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=head + (255,))
    d.polygon(
        [(hx + hr - 1 * u, hy - 2.5 * u), (hx + hr + 7 * u, hy), (hx + hr - 1 * u, hy + 2.5 * u)],
        fill=(235, 160, 40, 255),
    )
    eye_fill = (250, 250, 250, 255) if attrs.head == "black" else (15, 15, 15, 255)
    er = 1.6 * u
    d.ellipse([hx + 2 * u - er, hy - 2 * u - er, hx + 2 * u + er, hy - 2 * u + er], fill=eye_fill)
    return layer


def _compose(
    attrs: BirdAttributes, rng: np.random.Generator, size: int
) -> tuple[Image.Image, Image.Image]:
    """Render one image: a bird on a random background. Returns (RGB image, L mask)."""
    bg = _background(rng, size)
    layer = _bird_layer(attrs, rng)
    layer = layer.crop(layer.getbbox())
    if rng.random() < 0.5:
        layer = layer.transpose(Image.FLIP_LEFT_RIGHT)
    layer = layer.rotate(rng.uniform(-15, 15), resample=Image.BICUBIC, expand=True)
    # Bird width as a fraction of the image side: 0.5-0.85 (always fully inside).
    width = int(round(rng.uniform(0.5, 0.85) * size))
    height = max(1, int(round(layer.height * width / layer.width)))
    if height > size - 2:
        width = int(width * (size - 2) / height)
        height = size - 2
    layer = layer.resize((width, height), Image.LANCZOS)
    x = int(rng.integers(0, size - width + 1))
    y = int(rng.integers(0, size - height + 1))
    canvas = Image.fromarray((bg * 255).astype(np.uint8)).convert("RGBA")
    placed = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    placed.paste(layer, (x, y))
    canvas.alpha_composite(placed)
    mask = placed.getchannel("A").point(lambda a: 255 if a >= 128 else 0)
    image = canvas.convert("RGB")
    if rng.random() < 0.3:  # mild camera blur on some shots
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.7))))
    return image, mask


def _rng(seed: int, split: str, a: int, b: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_IDS[split], a, b])


def render_demo_image(
    class_name: str, index: int, *, split: str = "train", seed: int = 0, size: int = 64
) -> tuple[Image.Image, Image.Image]:
    """Render demo image ``index`` of ``class_name`` in ``split`` (pure function of its args).

    Returns ``(image, mask)``: an RGB image ``size x size`` and an ``L`` mask (255 = bird).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    attrs = DEMO_CLASSES.get(class_name)
    if attrs is None:
        raise ValueError(f"unknown demo class {class_name!r}; known: {', '.join(DEMO_CLASSES)}")
    cls = list(DEMO_CLASSES).index(class_name)
    return _compose(attrs, _rng(seed, split, cls, index), size)


def render_caption_sample(
    index: int, *, seed: int = 0, size: int = 64
) -> tuple[Image.Image, Image.Image, str]:
    """Sample ``index`` of the captioned pretraining corpus: ``(image, mask, caption)``.

    Attribute combinations are drawn uniformly from :func:`all_attribute_combinations`
    (96 combinations, a superset of the 12 classes); the caption uses a random template
    and never a class name. A pure function of ``(index, seed, size)``.
    """
    rng = _rng(seed, "corpus", index, 0)
    combos = all_attribute_combinations()
    attrs = combos[int(rng.integers(0, len(combos)))]
    caption = attrs.describe(int(rng.integers(0, len(CAPTION_TEMPLATES))))
    image, mask = _compose(attrs, rng, size)
    return image, mask, caption


# --------------------------------------------------------------------------- on disk


@dataclass(frozen=True)
class DemoConfig:
    """How the demo dataset is made. Every field changes the cache key."""

    seed: int = 0
    train_per_class: int = 60  # images per class in the train split, >= 1
    test_per_class: int = 30  # images per class in the test split, >= 1
    size: int = 64  # image side in pixels, >= 32

    def key(self) -> str:
        return (
            f"demo-v{DEMO_VERSION}-s{self.seed}-n{self.train_per_class}"
            f"x{self.test_per_class}-{self.size}px"
        )


def write_demo(root: str | os.PathLike, config: DemoConfig = DemoConfig()) -> Path:
    """Write the demo dataset under ``root`` (once; reused when already complete).

    Layout (a folder spec with given splits, see :mod:`diffmix.data.folder`)::

        <root>/<key>/train/<class>/<class>_0000.png      images
        <root>/<key>/test/<class>/...
        <root>/<key>/masks/{train,test}/<class>/...      same names, 255 = foreground
        <root>/<key>/classes.json                        class -> plain-word prompt
        <root>/<key>/demo.json                           generator version and config

    The folder is built in a temporary sibling and renamed into place, so a crash never
    leaves a half-written demo behind. Returns the dataset folder.
    """
    if config.train_per_class < 1 or config.test_per_class < 1:
        raise ValueError(f"demo needs >= 1 image per class and split, got {config}")
    if config.size < 32:
        raise ValueError(f"demo image size must be >= 32 px, got {config.size}")
    root = Path(root)
    final = root / config.key()
    if (final / "demo.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{config.key()}-", dir=root))
    logger.info("writing demo dataset %s", final)
    try:
        for split, n in (("train", config.train_per_class), ("test", config.test_per_class)):
            for name in DEMO_CLASSES:
                (tmp / split / name).mkdir(parents=True)
                (tmp / "masks" / split / name).mkdir(parents=True)
                for i in range(n):
                    image, mask = render_demo_image(
                        name, i, split=split, seed=config.seed, size=config.size
                    )
                    fname = f"{name}_{i:04d}.png"
                    image.save(tmp / split / name / fname)
                    mask.save(tmp / "masks" / split / name / fname)
        prompts = {name: class_prompt(name) for name in DEMO_CLASSES}
        (tmp / "classes.json").write_text(json.dumps(prompts, indent=2) + "\n")
        meta = {"version": DEMO_VERSION, "superclass": SUPERCLASS, **config.__dict__}
        (tmp / "demo.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            tmp.rename(final)
        except OSError:  # another process finished first: keep theirs
            if not (final / "demo.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
