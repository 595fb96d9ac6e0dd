"""Where an export's codes leave the model's: a checkpoint and its export folder, on test images.

Prints (1) every integer layer run alone on the codes of the model's own input value
(``layers_alone`` of tests/export/test_torchvision.py): requantized codes unlike the model's, and the
largest relative error of a dequantized output; (2) the whole network: at each quantize op, how many
of the runtime's codes differ from the model's quantization of its own value (earlier flips compound).

    python scripts/code_flips.py OUT/checkpoints/epoch_000.ckpt OUT/export --data-root /tmp/cifar10 --images 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qat.data.cifar10 import CIFAR10DataModule  # noqa: E402
from qat.export.checkpoint import load_checkpoint  # noqa: E402
from qat.export.verify import test_batches  # noqa: E402
from qat.quant.layers import exact_accumulation  # noqa: E402
from qat.runtime import load  # noqa: E402
from qat.runtime.quantize import quantize  # noqa: E402
from tests.export.test_torchvision import layers_alone, model_values  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("export")
    ap.add_argument("--data-root", default="data/cifar10")
    ap.add_argument("--images", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_checkpoint(args.checkpoint).model.eval()
    program = load(args.export)
    dm = CIFAR10DataModule(args.data_root, download=False, eval_batch_size=args.images)
    dm.prepare_data()
    dm.setup("test")
    x, _ = next(iter(test_batches(dm, limit=1)))
    with exact_accumulation():  # the reference export verification uses
        values = model_values(model, x)
    flips, errors = layers_alone(program, values)
    print(f"layers alone: {len(flips)} requantizing layers, {sum(f for f, _ in flips):,} of "
          f"{sum(n for _, n in flips):,} codes unlike the model's (at most {max((f for f, _ in flips), default=0)} "
          f"in a layer); {len(errors)} dequantized outputs, largest relative error {max(errors, default=0):.2g}")
    env = program.run(x, keep=True)
    print("whole network, at each quantize op: value, codes unlike the model's, share")
    for op in program.manifest["ops"]:
        src = op["inputs"][0]
        if op["op"] == "quantize" and src in values:
            n = int((quantize(values[src], op["quant"]) != env[op["outputs"][0]]).sum())
            print(f"  {src:30s} {n:8,d}  {n / env[op['outputs'][0]].numel():.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
