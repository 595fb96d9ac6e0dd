"""qat's recipes side by side with the peer libraries' implementations of the same methods.

One training loop, one model (the float ResNet-20 built once per run from the same seed, so every
implementation starts from the same weights), one data pipeline (qat's data module and
preprocessing, the same shuffle and augmentation seeds), one optimizer and schedule (the qat
recipe's config), one budget:

=================  ===============================================================================
method             implementations
=================  ===============================================================================
bnn                qat ``bnn``; Brevitas binary weights and activations
bwn                qat ``bwn``; Brevitas binary weights, per-channel mean-abs scale
twn                qat ``twn``; Brevitas 2-bit narrow-range weights, mean-abs scale
admm_ternary       qat ``admm_ternary``; (the Brevitas 2-bit run of ``twn`` is its peer)
qat_uint8          qat ``qat_uint8``; torch.ao eager-mode QAT (qat's ``torch_ao_qat`` recipe);
                   Brevitas int8 weights (per channel) and uint8 inputs
=================  ===============================================================================

Test accuracy is of the model after the last epoch, in its deployed form (the recipe's
``finalize``: ADMM's projection). Each finished run appends one JSON line to ``OUT/results.jsonl``
(a run already there is skipped, so an interrupted benchmark resumes); ``--report`` prints the
markdown table. Step time: before the runs of a method, its implementations are timed in interleaved
rounds in this process (median ms per training step, and the ratio to qat's).

    pip install -e ".[peers]"
    nice -n 10 python scripts/bench_peers.py --data-root /tmp/cifar10 --epochs 5 \\
        --methods bnn qat_uint8 twn admm_ternary bwn
    python scripts/bench_peers.py --report
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qat.config import compose_config  # noqa: E402
from qat.experiment import build_model  # noqa: E402
from qat.quant.recipe import Recipe  # noqa: E402

#: method -> [(implementation, qat recipe whose config gives the optimizer and layer policy, peer,
#: overrides of the recipe)]
METHODS = {
    "bnn": [("qat bnn", "bnn", None, ()), ("Brevitas binary", "bnn", "bnn", ())],
    "bwn": [("qat bwn", "bwn", None, ()), ("Brevitas binary weights, mean-abs scale", "bwn", "bwn", ())],
    "twn": [("qat twn", "twn", None, ()), ("Brevitas 2-bit weights, mean-abs scale", "twn", "ternary", ())],
    "admm_ternary": [("qat admm_ternary", "admm_ternary", None, ()),
                     ("Brevitas 2-bit weights, mean-abs scale", "twn", "ternary", ())],
    "qat_uint8": [("qat qat_uint8", "qat_uint8", None, ()), ("torch.ao eager QAT", "torch_ao_qat", None, ()),
                  ("Brevitas int8 / uint8", "qat_uint8", "int8", ())],
    # not a peer comparison: qat's bnn options (issue 11 part 4) under the same loop and budget
    "bnn_options": [("qat bnn", "bnn", None, ()),
                    ("bnn, all options", "bnn", None, ("quant.bireal_shortcut=true", "quant.learnable_threshold=true",
                                                       "quant.rprelu=true", "quant.sign_grad=approx", "quant.scale=true")),
                    ("bnn + Bi-Real shortcut", "bnn", None, ("quant.bireal_shortcut=true",)),
                    ("bnn + Bi-Real + RSign + ApproxSign", "bnn", None, (
                        "quant.bireal_shortcut=true", "quant.learnable_threshold=true", "quant.sign_grad=approx")),
                    ("bnn + RSign", "bnn", None, ("quant.learnable_threshold=true",)),
                    ("bnn + ApproxSign", "bnn", None, ("quant.sign_grad=approx",)),
                    ("bnn + scale", "bnn", None, ("quant.scale=true",)),
                    ("bnn + RSign + RPReLU", "bnn", None, ("quant.learnable_threshold=true", "quant.rprelu=true"))],
}


def build(recipe_name: str, peer: str | None, overrides, dm, seed: int, out: Path):
    """``(cfg, model, recipe)``: the float ResNet-20 from ``seed``, quantized by qat or the peer."""
    cfg = compose_config([f"quant={recipe_name}", "model=resnet20", f"seed={seed}", *overrides], output_dir=out)
    torch.manual_seed(seed)
    model = build_model(cfg, dm)
    recipe = hydra.utils.instantiate(cfg.quant)
    if peer is None:
        return cfg, recipe.prepare(model), recipe
    from qat.peers.brevitas import brevitas_prepare

    return cfg, brevitas_prepare(model, peer, recipe.first, recipe.last, recipe.overrides), Recipe()


class Run:
    """One implementation under training: model, optimizer, schedule and recipe hooks."""

    def __init__(self, recipe_name, peer, overrides, dm, seed, total_steps, out):
        cfg, self.model, self.recipe = build(recipe_name, peer, overrides, dm, seed, out)
        self.opt = hydra.utils.instantiate(cfg.optimizer)(params=self.model.parameters())
        self.sched = hydra.utils.instantiate(cfg.scheduler)(self.opt, total_steps=total_steps)
        self.step = 0
        self.model.train()
        self.recipe.on_train_start(self.model, total_steps=total_steps)

    def train_step(self, x, y) -> float:
        loss = F.cross_entropy(self.model(x), y)
        penalty = self.recipe.penalty(self.model)
        if penalty is not None:
            loss = loss + penalty
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.step += 1
        self.recipe.after_optimizer_step(self.model, self.step)
        return float(loss.detach())

    @torch.no_grad()
    def accuracy(self, loader, pre) -> float:
        self.model.eval()
        right = n = 0
        for x, y in loader:
            right += int((self.model(pre(x, train=False)).argmax(1) == y).sum())
            n += len(y)
        self.model.train()
        return right / max(1, n)


def time_steps(impls, dm, seed, steps, rounds, out) -> list[float]:
    """Median seconds per training step of each implementation, timed in interleaved rounds."""
    pre = dm.preprocess
    x, y = next(iter(dm.train_dataloader()))
    x = pre(x, train=True, generator=torch.Generator().manual_seed(seed))
    runs = [Run(r, p, o, dm, seed, 10_000, out) for _, r, p, o in impls]
    times = [[] for _ in runs]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            run.train_step(x, y)  # warm-up (observers, Brevitas' first-call init)
            t0 = time.perf_counter()
            for _ in range(steps):
                run.train_step(x, y)
            times[i].append((time.perf_counter() - t0) / steps)
    return [statistics.median(t) for t in times]


def train(name, recipe_name, peer, overrides, dm, args, out) -> dict:
    loader = dm.train_dataloader()
    per_epoch = len(loader) if args.limit_batches is None else min(len(loader), args.limit_batches)
    total = per_epoch * args.epochs
    run = Run(recipe_name, peer, overrides, dm, args.seed, total, out)
    gen = torch.Generator().manual_seed(args.seed)
    pre = dm.preprocess
    t_train, val = 0.0, []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        losses = []
        for i, (x, y) in enumerate(loader):
            if i >= per_epoch:
                break
            losses.append(run.train_step(pre(x, train=True, generator=gen), y))
            if not torch.isfinite(torch.tensor(losses[-1])):
                raise FloatingPointError(f"{name}: loss {losses[-1]} at step {run.step}")
        t_train += time.perf_counter() - t0
        if args.val:
            val.append(run.accuracy(dm.val_dataloader(), pre))
        print(f"  {name} epoch {epoch + 1}/{args.epochs}: loss {statistics.fmean(losses):.4f}, "
              + (f"val acc {100 * val[-1]:.2f} %, " if val else "")
              + f"{t_train / run.step * 1e3:.0f} ms/step", flush=True)
    run.recipe.finalize(run.model)
    return {"impl": name, "recipe": recipe_name, "peer": peer, "overrides": list(overrides),
            "epochs": args.epochs, "limit_batches": args.limit_batches, "steps": run.step,
            "seed": args.seed, "val_acc": val, "test_acc": run.accuracy(dm.test_dataloader(), pre),
            "train_ms_per_step": 1e3 * t_train / run.step, "date": time.strftime("%Y-%m-%d")}


def report(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    lines = ["| method | implementation | steps | test acc % | train ms/step | step time, side by side (ratio to qat) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        timing = (f"{r['timed_ms_per_step']:.0f} ms ({r['timed_ratio']:.2f})" if "timed_ms_per_step" in r else "-")
        lines.append(f"| {r['method']} | {r['impl']} | {r['steps']} | {100 * r['test_acc']:.2f} | "
                     f"{r['train_ms_per_step']:.0f} | {timing} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="/tmp/cifar10")
    ap.add_argument("--data", default="cifar10", help="qat data config (cifar10, imagefolder, synthetic)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--limit-batches", type=int, default=None, help="training batches per epoch (smoke tests)")
    ap.add_argument("--val", action="store_true", help="validation accuracy after every epoch")
    ap.add_argument("--time-steps", type=int, default=4)
    ap.add_argument("--time-rounds", type=int, default=3)
    ap.add_argument("--skip", nargs="+", default=[], metavar="IMPL",
                    help="implementations not to train or time (their names as in the table)")
    ap.add_argument("--out", default="/tmp/qat_bench_peers")
    ap.add_argument("--report", action="store_true", help="print the table of OUT/results.jsonl and exit")
    args = ap.parse_args()
    known = {i[0] for impls in METHODS.values() for i in impls}
    if unknown := sorted(set(args.skip) - known):
        ap.error(f"--skip: no implementation named {unknown}; known: {sorted(known)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    if args.report:
        print(report(results))
        return
    done = set()
    key = (args.epochs, args.limit_batches, args.seed)
    if results.exists():
        done = {(r["impl"], r["epochs"], r["limit_batches"], r["seed"])
                for r in map(json.loads, results.read_text().splitlines())}
    over = [f"data={args.data}", f"seed={args.seed}"]
    if args.data != "synthetic":
        over += [f"data.root={args.data_root}"] + (["data.download=false"] if args.data == "cifar10" else [])
    dm = hydra.utils.instantiate(compose_config(over, output_dir=out).data)
    dm.prepare_data()
    dm.setup("fit")
    for method in args.methods:
        chosen = [i for i in METHODS[method] if i[0] not in args.skip]
        impls = [i for i in chosen if (i[0], *key) not in done]
        if not impls:
            continue
        timed = time_steps(chosen, dm, args.seed, args.time_steps, args.time_rounds, out) \
            if args.time_steps > 0 else None
        for k, (name, recipe_name, peer, overrides) in enumerate(chosen):
            if (name, *key) in done:  # e.g. the 2-bit peer, shared by twn and admm_ternary
                continue
            print(f"== {method}: {name}", flush=True)
            row = {"method": method, **train(name, recipe_name, peer, overrides, dm, args, out)}
            if timed is not None:
                row.update(timed_ms_per_step=1e3 * timed[k], timed_ratio=timed[k] / timed[0])
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done.add((name, *key))
            print(f"   {name}: test acc {100 * row['test_acc']:.2f} %", flush=True)
    print(report(results))


if __name__ == "__main__":
    main()
