"""Benchmark: the classifier's decoded-once tensor cache vs a per-step PIL-decode loader.

    python benchmarks/train.py [--dataset demo] [--resolution 64] [--images 256] [--steps 20]
                               [--arch smallcnn] [--workers 0] [--device cpu] [--threads N]

Both sides produce augmented, normalised training batches of the same size and the same
augmentation family (random resized crop, area 0.35-1, + horizontal flip), in the same run:

- **cache** (``diffmix train``'s path, :class:`diffmix.classify.data.ImageStore`): every image
  decoded once into a uint8 tensor (n, 3, R, R) when the set fits ``--cache-mb``; a step
  gathers rows and augments the whole batch with one ``grid_sample``. The one-time decode is
  timed separately and not counted in the per-step rate. A smaller ``--cache-mb`` shows the
  streaming path (images beyond the budget decoded at every draw).
- **pil** (the usual ``torchvision.datasets.ImageFolder`` path): a ``DataLoader`` whose
  dataset opens, decodes, crops and resizes each image file every time it is drawn
  (``RandomResizedCrop`` + ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize``).

Each side is measured twice: the data path alone, and the data path plus a training step
(forward, backward, SGD) of ``--arch``. Rates are images per second after one warm-up batch.
On a busy CPU, small tensor ops pay for thread synchronisation (try ``--threads 1``).
The last stdout line is a JSON object: ``speedup`` = cache / pil images/s of the data path,
``train_speedup`` the same with the training step.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="demo", help="dataset spec (default: demo)")
    p.add_argument("--resolution", type=int, default=64, help="training side in px (default 64)")
    p.add_argument("--images", type=int, default=256, help="train images used (default 256)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed batches per measurement")
    p.add_argument("--arch", default="smallcnn", help="model of the training-step measurement")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the PIL side")
    p.add_argument("--device", default=None, help="cpu, cuda (default: best available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--cache-mb", type=float, default=2048,
                   help="decoded-image budget of the cache side (MB, default 2048 as diffmix "
                   "train); below the set's size the rest streams from disk")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    import torch
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms
    from torchvision.datasets.folder import pil_loader

    from diffmix.classify.data import CacheBudget, ImageStore, augment_batch, normalize
    from diffmix.classify.models import create_classifier, normalization
    from diffmix.data import load_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    res, bs = args.resolution, args.batch_size

    # 1. The images: the first --images of the train split, spread over the classes.
    ds = load_dataset(args.dataset, split="train")
    step = max(1, len(ds) // args.images)
    indices = list(range(0, len(ds), step))[: args.images]
    paths = [ds.items[i].path for i in indices]
    if any(p is None for p in paths):
        raise SystemExit("this benchmark needs a file-backed dataset (demo, folder or zip)")
    labels = torch.tensor([ds.items[i].label for i in indices])
    torch.manual_seed(0)
    model = create_classifier(args.arch, ds.num_classes, resolution=res).to(device)
    mean, std = normalization(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # 2. The cache side: decode once, then gather + augment on tensors.
    t0 = time.perf_counter()
    cache = ImageStore.for_dataset(ds, indices, res, CacheBudget(args.cache_mb))
    decode_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)

    def cache_batches(n: int):
        for _ in range(n):
            idx = torch.randint(0, len(cache), (bs,), generator=gen)
            x = augment_batch(normalize(cache.get(idx).to(device), mean, std), "resized_crop", gen)
            yield x, labels[idx].to(device)

    # 3. The PIL side: open + decode + crop/resize each image at every draw.
    tf = transforms.Compose([
        transforms.RandomResizedCrop(res, scale=(0.35, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])  # fmt: skip

    class Files(Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int):
            return tf(pil_loader(paths[i])), int(labels[i])

    loader = DataLoader(Files(), batch_size=bs, shuffle=True, num_workers=args.workers,
                        drop_last=True, persistent_workers=args.workers > 0)  # fmt: skip

    def pil_batches(n: int):
        done = 0
        while done < n:
            for x, y in loader:
                yield x.to(device), y.to(device)
                done += 1
                if done == n:
                    return

    # 4. Measure: one warm-up batch, then --steps timed batches per side and mode.
    def rate(batches, with_step: bool) -> float:
        it = batches(args.steps + 1)
        x, y = next(it)
        if with_step:
            train_step(x, y)
        sync()
        t = time.perf_counter()
        for x, y in it:
            if with_step:
                train_step(x, y)
        sync()
        return args.steps * bs / (time.perf_counter() - t)

    results = {}
    for mode, with_step in (("data", False), ("train", True)):
        results[mode] = {
            "cache": rate(cache_batches, with_step),
            "pil": rate(pil_batches, with_step),
        }

    print(f"{len(indices)} images of {args.dataset!r} at {res} px, batch {bs}, "
          f"{args.steps} timed batches, {args.arch} on {device} ({torch.get_num_threads()} threads), PIL workers {args.workers}")  # fmt: skip
    print(
        f"one-time decode into the cache: {decode_s:.2f} s ({len(indices) / decode_s:.0f} images/s)"
    )
    print(f"{'path':<22}{'cache img/s':>14}{'pil img/s':>14}{'ratio':>9}")
    for mode, r in results.items():
        label = "data only" if mode == "data" else f"data + {args.arch} step"
        print(f"{label:<22}{r['cache']:>14.0f}{r['pil']:>14.0f}{r['cache'] / r['pil']:>8.2f}x")
    summary = {
        "speedup": results["data"]["cache"] / results["data"]["pil"],
        "train_speedup": results["train"]["cache"] / results["train"]["pil"],
        "cache_images_per_s": results["data"]["cache"],
        "pil_images_per_s": results["data"]["pil"],
        "cache_train_images_per_s": results["train"]["cache"],
        "pil_train_images_per_s": results["train"]["pil"],
        "decode_once_s": decode_s,
        "images": len(indices),
        "resolution": res,
        "batch_size": bs,
        "arch": args.arch,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
