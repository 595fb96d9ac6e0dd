"""Training-step time of every recipe against fp32, and of torch.ao's eager-mode QAT.

One process, models built once, then rounds in which every variant runs ``--steps`` timed steps
(forward, backward, optimizer step and the recipe's hooks) in turn, so that noise on a shared
machine hits all alike. Reports the median over rounds of ms/step and the ratio to fp32.

    python scripts/bench_step.py --model resnet20 --batch-size 128 --steps 10 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hydra  # noqa: E402

from qat.config import compose_config  # noqa: E402

RECIPES = ["fp32", "bnn", "bwn", "twn", "admm_ternary", "qat_uint8", "linear", "log", "tanh", "int"]


def build(recipe: str, model: str):
    cfg = compose_config([f"quant={recipe}", f"model={model}"], output_dir="/tmp/qat_bench_step")
    net = hydra.utils.instantiate(cfg.model)(num_classes=10, in_channels=3, image_size=(32, 32))
    rec = hydra.utils.instantiate(cfg.quant)
    return rec.prepare(net), rec


def time_steps(net, recipe, opt, x, y, steps: int, start: int) -> float:
    t0 = time.perf_counter()
    for i in range(steps):
        loss = F.cross_entropy(net(x), y)
        p = recipe.penalty(net)
        if p is not None:
            loss = loss + p
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recipe.after_optimizer_step(net, start + i + 1)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--no-torch-ao", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))
    variants = {}
    for r in args.recipes.split(","):
        net, rec = build(r, args.model)
        variants[r] = (net, rec)
    if not args.no_torch_ao:
        variants["torch.ao eager QAT (torch_ao_qat)"] = build("torch_ao_qat", args.model)
    state = {}
    for name, (net, rec) in variants.items():
        net.train()
        rec.on_train_start(net, total_steps=10**6)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        time_steps(net, rec, opt, x, y, 2, 0)  # warm-up: allocator, observers' first batch
        state[name] = (net, rec, opt, [])
    for r in range(args.rounds):
        for name, (net, rec, opt, times) in state.items():
            times.append(time_steps(net, rec, opt, x, y, args.steps, 2 + r * args.steps))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    base = statistics.median(state["fp32"][3]) if "fp32" in state else None
    print(f"\n{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} rounds x {args.steps} steps")
    print("\n| recipe | ms/step | ratio to fp32 |")
    print("| --- | ---: | ---: |")
    for name, (_, _, _, times) in state.items():
        t = statistics.median(times)
        ratio = f"{t / base:.2f}" if base else "-"
        print(f"| {name} | {t * 1e3:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
