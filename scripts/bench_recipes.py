"""Test accuracy of recipes on real data under one training budget, through train.py itself.

Each (model, recipe) pair is one ``python train.py`` run in ``OUT/<model>-<recipe>/``; a run whose
metrics.json exists is skipped, so an interrupted benchmark resumes. Then a markdown table of test
accuracy (best-on-validation checkpoint), best validation accuracy, gap to fp32 and wall time is
written to ``OUT/table.md`` and printed.

    python scripts/bench_recipes.py --data-root /tmp/cifar10 --epochs 3 \\
        --runs resnet20:fp32,bnn,bwn,twn,admm_ternary,qat_uint8,torch_ao_qat,linear,log,tanh,int vgg_small:fp32,bnn
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="/tmp/cifar10")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--runs", nargs="+", default=["resnet20:fp32,bnn"],
                    help="MODEL:RECIPE,RECIPE,... groups")
    ap.add_argument("--out", default="/tmp/qat_bench_recipes")
    ap.add_argument("--extra", nargs="*", default=[], help="further overrides for every run")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for group in args.runs:
        model, recipes = group.split(":")
        for recipe in recipes.split(","):
            run_dir = out / f"{model}-{recipe}"
            metrics_file = run_dir / "metrics.json"
            if not metrics_file.exists():
                cmd = [sys.executable, str(ROOT / "train.py"), f"quant={recipe}", f"model={model}", "data=cifar10",
                       f"data.root={args.data_root}", "data.download=false", f"trainer.max_epochs={args.epochs}",
                       "callbacks.progress_bar.refresh_rate=50", f"hydra.run.dir={run_dir}", *args.extra]
                print("$", " ".join(cmd[1:]), flush=True)
                t0 = time.time()
                proc = subprocess.run(cmd, cwd=ROOT)
                if proc.returncode != 0:
                    print(f"!! {model} {recipe} failed (exit {proc.returncode}); see {run_dir}", flush=True)
                    continue
                (run_dir / "wall_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
            metrics = json.loads(metrics_file.read_text())
            wall = (run_dir / "wall_seconds.txt").read_text().strip() if (run_dir / "wall_seconds.txt").exists() else "?"
            rows.append((model, recipe, metrics, wall))
    base = {m: r[2]["test/acc"] for r in rows for m in [r[0]] if r[1] == "fp32"}
    lines = [f"Budget: {args.epochs} epochs per run, batch 128, the recipe's defaults; test accuracy of the "
             "best-on-validation checkpoint.", "",
             "| model | recipe | test acc | best val acc | gap to fp32 (points) | wall s |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for model, recipe, m, wall in rows:
        gap = f"{100 * (m['test/acc'] - base[model]):+.1f}" if model in base else "-"
        lines.append(f"| {model} | {recipe} | {100 * m['test/acc']:.2f} | {100 * m.get('val/acc_best', float('nan')):.2f}"
                     f" | {gap} | {wall} |")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
