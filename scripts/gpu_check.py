"""The GPU check: GPU-only tests, then short CIFAR-10 ResNet-20 runs of fp32, bnn and qat_uint8 with
``trainer=gpu``; prints step time and accuracy and writes one JSON summary. Under 8 minutes on one
modern NVIDIA GPU. Run it through ``scripts/gpu_check.sh`` (same arguments).

    scripts/gpu_check.sh --data-root /tmp/cifar10 --out gpu_check      # on a GPU machine
    scripts/gpu_check.sh --dry-run --out /tmp/gpu_check                # anywhere: CPU, synthetic data

``--dry-run`` checks the script itself on a CPU: the GPU tests are only collected, and the runs use
``trainer=default`` on a small synthetic set for a few steps; the summary has the same fields.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPES = ("fp32", "bnn", "qat_uint8")


def gpu_tests(dry_run: bool, log: Path) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"]
    if dry_run:
        cmd.append("--collect-only")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    tail = [line for line in proc.stdout.strip().splitlines() if line.strip()][-1:] or [""]
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "summary": tail[0],
            "seconds": round(time.perf_counter() - t0, 1), "log": str(log)}


def run_overrides(recipe: str, dry_run: bool, data_root: str | None, epochs: int) -> list[str]:
    common = [f"quant={recipe}", "model=resnet20", "logger=csv", "callbacks.progress_bar.refresh_rate=0",
              "+callbacks.step_timer._target_=qat.callbacks.timing.StepTimer", "+callbacks.step_timer.warmup=5"]
    if dry_run:
        return [*common[:-1], "+callbacks.step_timer.warmup=2", "trainer=default", "data=synthetic",
                "data.image_size=8", "data.n_train=128", "data.n_val=32", "data.n_test=64", "data.batch_size=32",
                "model.width=4", "trainer.max_epochs=1", "+trainer.limit_train_batches=4"]
    return [*common, "trainer=gpu", "data=cifar10", f"data.root={data_root}", "data.download=false",
            "data.pin_memory=true", f"trainer.max_epochs={epochs}"]


def train_run(recipe: str, out: Path, dry_run: bool, data_root: str | None, epochs: int) -> dict:
    from qat.config import compose_config
    from qat.experiment import train

    overrides = run_overrides(recipe, dry_run, data_root, epochs)
    t0 = time.perf_counter()
    res = train(compose_config(overrides, output_dir=out / recipe))
    m = res.metrics
    dm = res.datamodule
    step_s = m.get("perf/train_step_s")
    row = {"recipe": recipe, "overrides": overrides, "seconds": round(time.perf_counter() - t0, 1),
           "step_ms": round(step_s * 1e3, 2) if step_s else None,
           "images_per_s": round(dm.batch_size / step_s) if step_s else None,
           "test_acc": m.get("test/acc"), "export_agreement": m.get("export/agreement"),
           "device": str(res.trainer.strategy.root_device), "precision": str(res.trainer.precision)}
    print(f"{recipe:10s} step {row['step_ms']} ms ({row['images_per_s']} images/s), test acc {row['test_acc']:.4f}, "
          f"export agreement {row['export_agreement']}, {row['seconds']} s", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="check the script on a CPU (no GPU needed)")
    ap.add_argument("--out", default="gpu_check", help="folder for the runs, logs and summary.json")
    ap.add_argument("--data-root", default=None, help="CIFAR-10 copy (data.root); needed without --dry-run")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of each CIFAR-10 run")
    args = ap.parse_args(argv)
    import torch

    if not args.dry_run:
        if not torch.cuda.is_available():
            print("error: no CUDA GPU visible (torch.cuda.is_available() is False); use --dry-run on a CPU",
                  file=sys.stderr)
            return 2
        if not args.data_root:
            print("error: --data-root DIR (a CIFAR-10 copy) is needed without --dry-run", file=sys.stderr)
            return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary = {"dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
               "torch": torch.__version__, "python": platform.python_version(),
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    summary["gpu_tests"] = gpu_tests(args.dry_run, out / "pytest_gpu.log")
    print(f"pytest -m gpu: {summary['gpu_tests']['summary']} (exit {summary['gpu_tests']['returncode']})", flush=True)
    summary["runs"] = [train_run(r, out, args.dry_run, args.data_root, args.epochs) for r in RECIPES]
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    ok = summary["gpu_tests"]["returncode"] == 0 and all(
        r["test_acc"] is not None and (r["recipe"] == "fp32" or r["export_agreement"] is not None)
        for r in summary["runs"])
    summary["ok"] = ok
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {out / 'summary.json'} ({'ok' if ok else 'FAILED'}, {summary['seconds']} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
