"""Framework overhead: train.py's Lightning training step against a plain PyTorch loop.

Same model, batch size, data and preprocessing (the data module's loader and ``BatchPreprocess``),
same optimizer and schedule; the two are timed in alternating rounds in one process so that noise on
this shared machine hits both alike. Prints a markdown table.

    python scripts/bench_overhead.py --data-root /tmp/cifar10 --steps 40 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qat.callbacks.timing import StepTimer  # noqa: E402
from qat.experiment import build_module  # noqa: E402
from qat.config import compose_config as compose_cfg  # noqa: E402


def lightning_round(cfg, dm, steps: int, warmup: int, out: Path) -> float:
    module = build_module(cfg, dm)
    timer = StepTimer(warmup)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=out / "ckpt", monitor=None, save_last=False)
    logger = pl.loggers.TensorBoardLogger(save_dir=str(out / "tb"), name="", version="")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps + warmup, limit_val_batches=0,
                         callbacks=[timer, ckpt, pl.callbacks.LearningRateMonitor("step"),
                                    pl.callbacks.TQDMProgressBar(refresh_rate=10)],
                         logger=logger, log_every_n_steps=50, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return timer.seconds_per_step()


def plain_round(cfg, dm, steps: int, warmup: int) -> float:
    module = build_module(cfg, dm)  # same model, recipe and optimizer factories
    model, recipe = module.model, module.recipe
    model.train()
    optimizer = module.optimizer_factory(params=model.parameters())
    scheduler = module.scheduler_factory(optimizer, total_steps=steps + warmup)
    recipe.on_train_start(model, total_steps=steps + warmup)  # as Lightning's run does
    pre = dm.preprocess
    it = iter(dm.train_dataloader())
    t0 = None
    for i in range(steps + warmup):
        if i == warmup:
            t0 = time.perf_counter()
        x, y = next(it)
        x = pre(x, train=True)
        loss = F.cross_entropy(model(x), y)
        penalty = recipe.penalty(model)
        if penalty is not None:
            loss = loss + penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        recipe.after_optimizer_step(model, i + 1)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="/tmp/cifar10")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--quant", default="fp32")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="/tmp/qat_bench_overhead")
    args = ap.parse_args()

    out = Path(args.out)
    cfg = compose_cfg([f"data.root={args.data_root}", "data.download=false", f"model={args.model}",
                       f"quant={args.quant}", f"data.batch_size={args.batch_size}"], output_dir=out)
    dm = __import__("hydra").utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    plain, light = [], []
    for r in range(args.rounds):
        plain.append(plain_round(cfg, dm, args.steps, args.warmup))
        light.append(lightning_round(cfg, dm, args.steps, args.warmup, out / f"r{r}"))
        print(f"round {r}: plain {plain[-1] * 1e3:.1f} ms/step, lightning {light[-1] * 1e3:.1f} ms/step",
              file=sys.stderr)
    p, l_ = statistics.median(plain), statistics.median(light)
    print(f"\n| {args.model} {args.quant} batch {args.batch_size} | ms/step | images/s |")
    print("| --- | ---: | ---: |")
    print(f"| plain PyTorch loop | {p * 1e3:.1f} | {args.batch_size / p:.0f} |")
    print(f"| train.py (Lightning) | {l_ * 1e3:.1f} | {args.batch_size / l_:.0f} |")
    print(f"| overhead | {100 * (l_ / p - 1):+.1f}% | |")


if __name__ == "__main__":
    main()
