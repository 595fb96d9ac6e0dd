#!/usr/bin/env python
"""Data-pipeline benchmark on a CIFAR-10 copy: first decode, cached load, and loader throughput.

    mkdir -p /tmp/cifar10 && tar -xzf shared/datasets/cifar10-jpg.tar.gz -C /tmp/cifar10
    python scripts/bench_data.py --root /tmp/cifar10

Measures, and prints as a markdown table:
* first load: ``prepare_data() + setup()`` with an empty cache folder (scan, decode every image,
  write the cache), and the decode alone;
* cached load: the same with the cache written by the first load;
* throughput (images/s; median and best over ``--epochs`` full passes): the train loader alone; the
  train loader plus ``on_after_batch_transfer`` as in training (uint8 -> float, random crop + flip,
  normalise) on ``--device``; the validation loader plus its (eval) hook.

On a small shared CPU, ``--threads 1`` gives steadier numbers (no intra-op thread oversubscription).

By default the cache goes to a fresh temporary folder (deleted afterwards), so "first load" is a real
cold decode whatever earlier runs cached; ``--cache-dir`` keeps it somewhere instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from qat.data import CIFAR10DataModule  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load(root: str, cache_dir: str, batch_size: int, eval_batch_size: int) -> tuple[CIFAR10DataModule, float]:
    t0 = time.perf_counter()
    dm = CIFAR10DataModule(root, download=False, cache_dir=cache_dir, batch_size=batch_size,
                           eval_batch_size=eval_batch_size, progress=False)
    dm.prepare_data()
    dm.setup("fit")
    return dm, time.perf_counter() - t0


def throughput(dm: CIFAR10DataModule, loader_fn, device: torch.device, hook: bool, training: bool,
               epochs: int) -> tuple[float, float]:
    """(median, best) images/s over ``epochs`` full passes of ``loader_fn()``."""
    dm.trainer = SimpleNamespace(training=training, global_rank=0) if hook else None
    # one warm-up batch (allocator, first-call overheads)
    x, y = next(iter(loader_fn()))
    if hook:
        dm.on_after_batch_transfer((x.to(device), y.to(device)), 0)
    rates = []
    for _ in range(epochs):
        n = 0
        _sync(device)
        t0 = time.perf_counter()
        for x, y in loader_fn():
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if hook:
                x, y = dm.on_after_batch_transfer((x, y), 0)
            n += x.shape[0]
        _sync(device)
        rates.append(n / (time.perf_counter() - t0))
    dm.trainer = None
    return statistics.median(rates), max(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/cifar10", help="CIFAR-10 copy (any layout CIFAR10DataModule accepts)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--eval-batch-size", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=3,
                    help="epochs per throughput measurement (median and best reported)")
    ap.add_argument("--device", default="cpu", help="where on_after_batch_transfer runs (cpu, cuda)")
    ap.add_argument("--cache-dir", default=None, help="keep the cache here (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    tmp = None
    cache_dir = args.cache_dir
    if cache_dir is None:
        tmp = cache_dir = tempfile.mkdtemp(prefix="qat-bench-cache-")
    elif any(Path(cache_dir).glob("cifar10-*.pt")):
        print(f"note: {cache_dir} already holds a cache: 'first load' will not be a cold decode", file=sys.stderr)
    try:
        dm_cold, t_cold = load(args.root, cache_dir, args.batch_size, args.eval_batch_size)
        decode_s = dm_cold.info.get("decode_seconds")
        del dm_cold
        dm, t_cached = load(args.root, cache_dir, args.batch_size, args.eval_batch_size)
        from_cache = dm.info.get("from_cache")
        train_loader = throughput(dm, dm.train_dataloader, device, hook=False, training=True, epochs=args.epochs)
        train_hook = throughput(dm, dm.train_dataloader, device, hook=True, training=True, epochs=args.epochs)
        val_hook = throughput(dm, dm.val_dataloader, device, hook=True, training=False, epochs=args.epochs)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nCIFAR-10 data pipeline: root={dm.info.get('root')} layout={dm.info.get('layout')}; "
          f"train/val/test = {len(dm.train_set)}/{len(dm.val_set)}/{len(dm.test_set)}; "
          f"batch {args.batch_size} (eval {args.eval_batch_size}); hook on {device}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}\n")
    print("| measurement | value |")
    print("|---|---|")
    print(f"| first load, cold (scan + decode + cache write), s | {t_cold:.2f} |")
    print(f"| of which decode, s | {decode_s:.2f} |" if decode_s is not None
          else "| of which decode, s | n/a (pickle layout) |")
    print(f"| cached load (from_cache={from_cache}), s | {t_cached:.2f} |")
    for name, (med, best) in (("train loader alone", train_loader),
                              ("train loader + on_after_batch_transfer (crop+flip+normalise)", train_hook),
                              ("val loader + on_after_batch_transfer (normalise)", val_hook)):
        print(f"| {name}, img/s (median / best of {args.epochs} epochs) | {med:,.0f} / {best:,.0f} |")

if __name__ == "__main__":
    main()
