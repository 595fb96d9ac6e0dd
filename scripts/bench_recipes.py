"""Test accuracy of recipes on real data under one training budget, through train.py itself.

Each (model, recipe) pair is one ``python train.py`` run in ``OUT/<model>-<recipe>/``; a run whose
metrics.json exists is skipped, so an interrupted benchmark resumes. Then a markdown table of test
accuracy (best-on-validation checkpoint), best validation accuracy, gap to fp32, and the export check (agreement, bytes) is
written to ``OUT/table.md`` and printed.

    python scripts/bench_recipes.py --data-root /tmp/cifar10 --epochs 3 \\
        --runs resnet20:fp32,bnn,bwn,twn,admm_ternary,qat_uint8,torch_ao_qat,linear,log,tanh,int vgg_small:fp32,bnn

Copies started side by side on the same OUT share the work (a lock file per run). A named variant
is a run with its own overrides, listed among the recipes (``{out}`` is replaced by OUT), e.g.
``--variant bnn_kd="quant=bnn distill.teacher={out}/resnet20-fp32/checkpoints/last.ckpt"
--runs resnet20:fp32,bnn,bnn_kd``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_variants(items: list[str], out: Path) -> dict[str, list[str]]:
    """``NAME=OVERRIDES`` items (shell-quoted overrides; ``{out}`` is the output folder) as NAME -> overrides."""
    variants = {}
    for item in items:
        name, sep, overrides = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--variant takes NAME=OVERRIDES, got {item!r}")
        variants[name] = shlex.split(overrides.replace("{out}", str(out)))
    return variants


def cells(m: dict, base: float | None) -> dict[str, str]:
    """One run's metrics.json as table cells (percentages; "-" where a value is absent)."""
    def pct(key):
        return f"{100 * m[key]:.2f}" if key in m else "-"

    return {"test": pct("test/acc"), "val_best": pct("val/acc_best"), "train_form": pct("val/acc_train_form"),
            "gap": f"{100 * (m['test/acc'] - base):+.2f}" if base is not None else "-",
            "agreement": f"{m['export/agreement']:.4f}" if "export/agreement" in m else "-",
            "bytes": f"{int(m['export/size_bytes']):,}" if "export/size_bytes" in m else "-"}


def write_table(out: Path, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="/tmp/cifar10")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--runs", nargs="+", default=["resnet20:fp32,bnn"],
                    help="MODEL:RECIPE,RECIPE,... groups")
    ap.add_argument("--out", default="/tmp/qat_bench_recipes")
    ap.add_argument("--extra", nargs="*", default=[], help="further overrides for every run")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                    help="a run named NAME with these overrides instead of quant=NAME")
    args = ap.parse_args()
    out = Path(args.out)
    variants = parse_variants(args.variant, out)
    rows = []
    for group in args.runs:
        model, recipes = group.split(":")
        for recipe in recipes.split(","):
            run_dir = out / f"{model}-{recipe}"
            metrics_file = run_dir / "metrics.json"
            lock = run_dir / ".bench_lock"
            if not metrics_file.exists():
                # Several copies of this script may share OUT (one per core): each run goes to one.
                run_dir.mkdir(parents=True, exist_ok=True)
                try:
                    os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    print(f".. {model} {recipe} is running elsewhere; skipped", flush=True)
                    continue
                cmd = [sys.executable, str(ROOT / "train.py"), *variants.get(recipe, [f"quant={recipe}"]),
                       f"model={model}", "data=cifar10",
                       f"data.root={args.data_root}", "data.download=false", f"trainer.max_epochs={args.epochs}",
                       "callbacks.progress_bar.refresh_rate=50", f"hydra.run.dir={run_dir}", *args.extra]
                print("$", " ".join(cmd[1:]), flush=True)
                t0 = time.time()
                proc = subprocess.run(cmd, cwd=ROOT)
                lock.unlink()
                if proc.returncode != 0:
                    print(f"!! {model} {recipe} failed (exit {proc.returncode}); see {run_dir}", flush=True)
                    continue
                print(f".. {model} {recipe}: {time.time() - t0:.0f} s", flush=True)
            metrics = json.loads(metrics_file.read_text())
            rows.append((model, recipe, metrics))
    base = {m: r[2]["test/acc"] for r in rows for m in [r[0]] if r[1] == "fp32"}
    lines = [f"Budget: {args.epochs} epochs per run, batch 128, the recipe's defaults; test accuracy of the "
             "best-on-validation checkpoint.", "",
             "| model | recipe | test acc % | best val acc % | gap to fp32 (points) | export agreement | export bytes |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for model, recipe, m in rows:
        c = cells(m, base.get(model))
        lines.append(f"| {model} | {recipe} | {c['test']} | {c['val_best']} | {c['gap']} | {c['agreement']} "
                     f"| {c['bytes']} |")
    write_table(out, lines)


if __name__ == "__main__":
    main()
