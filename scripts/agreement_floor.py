"""How far an export can agree with the fake-quant model: the model against itself and the export.

On the test split of a checkpoint's data, top-1 agreement between
* the model's float32 evaluation, contiguous and channels_last (two float32 rounding orders of one
  model: the floor no export can be held to), and its exact-accumulation evaluation
  (``qat.quant.layers.exact_accumulation``, the reference of export verification);
* the export (``qat.runtime``) and each of those three.

    python scripts/agreement_floor.py OUT/checkpoints/last.ckpt OUT/export --data-root /tmp/cifar10 --batches 8
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qat.data.cifar10 import CIFAR10DataModule  # noqa: E402
from qat.export.checkpoint import load_checkpoint  # noqa: E402
from qat.export.verify import test_batches  # noqa: E402
from qat.quant.layers import exact_accumulation  # noqa: E402
from qat.runtime import load  # noqa: E402


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("export")
    ap.add_argument("--data-root", default="data/cifar10")
    ap.add_argument("--batches", type=int, default=8, help="test batches of 256 images")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_checkpoint(args.checkpoint).model.eval()
    program = load(args.export)
    dm = CIFAR10DataModule(args.data_root, download=False, eval_batch_size=256)
    dm.prepare_data()
    dm.setup("test")
    names = ["float32", "float32 channels_last", "exact accumulation", "export"]
    same = {pair: 0 for pair in itertools.combinations(names, 2)}
    n = 0
    for x, _ in test_batches(dm, limit=args.batches):
        with exact_accumulation():
            exact = model(x)
        top = {"float32": model(x), "float32 channels_last": model(x.contiguous(memory_format=torch.channels_last)),
               "exact accumulation": exact, "export": program(x)}
        top = {k: v.argmax(1) for k, v in top.items()}
        n += len(x)
        for a, b in same:
            same[(a, b)] += int((top[a] == top[b]).sum())
    print(f"top-1 agreement on {n} test images ({program.backend})")
    for (a, b), k in same.items():
        print(f"  {a:24s} {b:24s} {k / n:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
