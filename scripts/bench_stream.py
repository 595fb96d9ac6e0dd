"""Streaming image-folder pipeline (data.in_memory=false) in images/s at 224 px.

Reads, decodes (torchvision.io.decode_jpeg) and transforms (RandomResizedCrop + flip for training,
Resize 256 + CenterCrop 224 for evaluation, on uint8) ImageNet-sized JPEGs through the data module's
own loaders, with 0 workers (one core, one thread: the per-core rate) and with ``--workers``
processes. Without ``--root`` it writes ``--n`` smooth random 500x375 JPEGs (quality 90, the size
of a typical ImageNet photo) into a temporary folder.

    python scripts/bench_stream.py --workers 2 --n 512 --epochs 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qat.data import ImageFolderDataModule  # noqa: E402


def write_folder(root: Path, n: int, classes: int = 8, size=(500, 375)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    for i in range(n):
        split = "test" if (i // classes) % 8 == 0 else "train"
        d = root / split / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3)).astype(np.float32)
        img = np.kron(coarse, np.ones((25, 25, 1), np.float32))[:h, :w]
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"{i:05d}.jpg", quality=90)


def rate(loader, epochs: int, clock=time.perf_counter) -> float:
    n, t0 = 0, clock()
    for e in range(epochs):
        loader.sampler.set_epoch(e)
        for x, _ in loader:
            n += x.shape[0]
    return n / (clock() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    tmp = None
    root = args.root
    if root is None:
        tmp = tempfile.TemporaryDirectory()
        root = tmp.name
        write_folder(Path(root), args.n)
    torch.set_num_threads(1)
    kw = dict(in_memory=False, image_size=224, batch_size=args.batch_size, eval_batch_size=args.batch_size,
              val_fraction=0.0, mean=[0.5] * 3, std=[0.25] * 3)
    dm0 = ImageFolderDataModule(root, num_workers=0, **kw)
    dmw = ImageFolderDataModule(root, num_workers=args.workers, **kw)
    dm0.setup()
    dmw.setup()
    rate(dmw.train_dataloader(), 1)  # start the persistent workers
    # With 0 workers everything runs in this process on one thread: images per CPU-second is the rate
    # of one core, whatever else the machine runs; wall-clock rates depend on the machine's load.
    res = {"train, 0 workers, per CPU-second (one core)": rate(dm0.train_dataloader(), args.epochs, time.process_time),
           "eval, 0 workers, per CPU-second (one core)": rate(dm0.test_dataloader(), args.epochs, time.process_time),
           "train, 0 workers (1 core)": rate(dm0.train_dataloader(), args.epochs),
           f"train, {args.workers} workers": rate(dmw.train_dataloader(), args.epochs),
           "eval, 0 workers (1 core)": rate(dm0.test_dataloader(), args.epochs),
           f"eval, {args.workers} workers": rate(dmw.test_dataloader(), args.epochs)}
    print(f"\n{len(dm0.train_set)} train / {len(dm0.test_set)} test JPEGs under {root}, 224 px, batch "
          f"{args.batch_size}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("\n| loader | images/s (wall clock unless per CPU-second) |\n| --- | ---: |")
    for k, v in res.items():
        print(f"| {k} | {v:.0f} |")
    per_core = res["train, 0 workers, per CPU-second (one core)"]
    print(f"\ncores per GPU = GPU images/s / {per_core:.0f} (training, per core)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
