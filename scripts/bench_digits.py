"""Recipes on real handwritten digits that ship inside scikit-learn (issue 11's acceptance data).

scikit-learn's ``load_digits`` (1,797 real 8x8 grey-level scans of handwritten digits, UCI) is written
once as an image folder (``train/<digit>/*.png``, ``test/<digit>/*.png``, a seeded stratified 80/20
split, upscaled to 32x32 with bilinear interpolation), then every run is ``python train.py
data=imagefolder data.root=...`` with ResNet-20 for the same budget. The table gives the test
accuracy of the deployed model (best-on-validation checkpoint, finalized), beside the best
validation accuracy and, for recipes whose deployed form differs (ADMM), the last validation
accuracy of the weights as they trained.

    pip install scikit-learn   # for this check only; not a dependency of qat
    python scripts/bench_digits.py --epochs 10 --recipes fp32 twn admm_ternary

A run whose metrics.json exists is reused, so an interrupted benchmark resumes. Named variants take
overrides: ``--variant bnn_kd="quant=bnn distill.teacher={out}/fp32/checkpoints/last.ckpt"``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench_recipes import cells, parse_variants, write_table  # scripts/ is on the path when a script runs

ROOT = Path(__file__).resolve().parents[1]


def write_digits(root: Path, size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> Path:
    """The digits as an image folder; written once (a ``.complete`` marker guards half-written folders)."""
    if (root / ".complete").exists():
        return root
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(idx, test_size=test_fraction, random_state=seed,
                                           stratify=digits.target)
    for split, ids in (("train", train_idx), ("test", test_idx)):
        for i in ids:
            # Pixel values are 0..16: scale to 0..255, upscale like any small scan.
            img = Image.fromarray((digits.images[i] * (255 / 16)).round().astype(np.uint8), mode="L")
            out = root / split / str(digits.target[i]) / f"{i:04d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            img.resize((size, size), Image.BILINEAR).save(out)
    (root / ".complete").write_text("")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--recipes", nargs="+", default=["fp32", "twn", "admm_ternary"])
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                    help="a named run with its own overrides ({out} is replaced by --out)")
    ap.add_argument("--data", default="/tmp/qat_digits")
    ap.add_argument("--out", default="/tmp/qat_bench_digits")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--extra", nargs="*", default=[], help="further overrides for every run")
    args = ap.parse_args()
    data = write_digits(Path(args.data))
    out = Path(args.out)
    runs = {r: [f"quant={r}"] for r in args.recipes}
    runs.update(parse_variants(args.variant, out))
    rows = []
    for name, overrides in runs.items():
        run_dir = out / name
        metrics_file = run_dir / "metrics.json"
        if not metrics_file.exists():
            cmd = [sys.executable, str(ROOT / "train.py"), "data=imagefolder", f"data.root={data}", "model=resnet20",
                   f"trainer.max_epochs={args.epochs}", f"seed={args.seed}", "logger=csv",
                   "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={run_dir}", *overrides, *args.extra]
            print("$", " ".join(cmd[1:]), flush=True)
            t0 = time.time()
            proc = subprocess.run(cmd, cwd=ROOT)
            if proc.returncode != 0:
                print(f"!! {name} failed (exit {proc.returncode}); see {run_dir}", flush=True)
                continue
            print(f".. {name}: {time.time() - t0:.0f} s", flush=True)
        rows.append((name, json.loads(metrics_file.read_text())))
    base = next((m["test/acc"] for n, m in rows if n == "fp32"), None)
    lines = [f"ResNet-20, {args.epochs} epochs, seed {args.seed}, scikit-learn digits as a 32x32 image folder "
             f"(train 1,437 / test 360 images); test accuracy of the deployed best-on-validation model.", "",
             "| run | test acc % | gap to fp32 (points) | best val acc % | last val acc, train form % | export agreement |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, m in rows:
        c = cells(m, base)
        lines.append(f"| {name} | {c['test']} | {c['gap']} | {c['val_best']} | {c['train_form']} | {c['agreement']} |")
    write_table(out, lines)


if __name__ == "__main__":
    main()
