"""Can a prepared torchvision network fit one batch? Adam on a single batch of noise images with random
labels (CIFAR-sized, ``small_input``), printing loss and training accuracy: a float network memorises
it in a few steps; a recipe that cannot is not learning, whatever the data.

    python scripts/overfit_probe.py --model mobilenet_v2 --recipe bnn --steps 60
    python scripts/overfit_probe.py --model mobilenet_v2 --recipe bnn --option first=fp32 --option last=fp32
    python scripts/overfit_probe.py --model mobilenet_v2 --recipe fp32 --steps 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import qat  # noqa: E402
from qat.models.torchvision import torchvision_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--recipe", default="bnn")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe option (true/false, numbers and strings)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torchvision_model(args.model, 10, small_input=True)
    recipe = None
    if args.recipe != "fp32":
        opts = {}
        for o in args.option:
            k, v = o.split("=", 1)
            opts[k] = {"true": True, "false": False}.get(v.lower(), v)
        recipe = qat.recipe(args.recipe, **opts)
        model = recipe.prepare(model)
        recipe.on_train_start(model, total_steps=args.steps)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    for step in range(1, args.steps + 1):
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y)
        penalty = recipe.penalty(model) if recipe is not None else None
        total = loss + penalty if penalty is not None else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if recipe is not None:
            recipe.after_optimizer_step(model, step)
        if step == 1 or step % 10 == 0 or step == args.steps:
            acc = float((out.argmax(1) == y).float().mean())
            print(f"step {step:4d}  loss {loss.item():.3f}  train acc {acc:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
