"""Export benchmark: per recipe, export size and compression, agreement with the fake-quant model and
runtime accuracy on the full test split, and images/s of the reference runtime next to PyTorch fp32
inference of the same architecture at batch 1 and batch 256, all in one process on this CPU.

    python scripts/bench_export.py RUN_DIR [RUN_DIR ...] --data-root /tmp/cifar10 [--out table.md]

Each RUN_DIR is a training output folder (``python train.py quant=X ... hydra.run.dir=RUN_DIR``); its
best checkpoint (else ``last.ckpt``) is exported again from the file alone into ``RUN_DIR/bench_export``.
The fp32 column runs the float model built from the same model config (random weights: speed does
not depend on them). qat_uint8 also reports onnxruntime on its ``model.onnx``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qat.export.__main__ import build_datamodule, normalization  # noqa: E402
from qat.export.checkpoint import load_checkpoint  # noqa: E402
from qat.export.exporter import ONNX, export_model  # noqa: E402
from qat.export.verify import compare_many  # noqa: E402


def best_checkpoint(run: Path) -> Path:
    ckpts = sorted(p for p in (run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
    if ckpts:
        return ckpts[-1]
    last = run / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise FileNotFoundError(f"no checkpoint in {run / 'checkpoints'}")
    return last


def images_per_s(fn, x: torch.Tensor, batch: int, min_seconds: float, max_images: int) -> float:
    """Throughput of ``fn`` on batches of ``batch`` images drawn from ``x`` (one warm-up batch)."""
    with torch.no_grad():
        fn(x[:batch])
        done, t0 = 0, time.perf_counter()
        while True:
            s = (done % (x.shape[0] - batch + 1))
            fn(x[s:s + batch])
            done += batch
            elapsed = time.perf_counter() - t0
            if (elapsed >= min_seconds and done >= batch) or done >= max_images:
                return done / elapsed


def float_model(restored) -> torch.nn.Module:
    import hydra

    d = restored.data
    factory = hydra.utils.instantiate(restored.config["model"])
    return factory(num_classes=int(d["num_classes"]), in_channels=int(d["in_channels"]),
                   image_size=tuple(int(s) for s in d["image_size"])).eval()


def bench(run: Path, data_overrides: list[str], args) -> dict:
    ckpt = best_checkpoint(run)
    restored = load_checkpoint(ckpt)
    recipe = restored.recipe.name
    dm = build_datamodule(restored.config["data"], data_overrides)
    res = export_model(restored.model, run / "bench_export", input_shape=restored.input_shape,
                       normalization=normalization(restored, data_overrides, dm), recipe=restored.recipe,
                       meta=restored.meta)
    program = res.program()
    images, labels = dm.test_set.images, dm.test_set.labels
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    x_all = program.preprocess(images)
    bs = 256

    def batches():
        for s in range(0, x_all.shape[0], bs):
            yield x_all[s:s + bs], labels[s:s + bs]

    row = {"recipe": recipe, "checkpoint": str(ckpt), "size_bytes": res.size_bytes,
           "fp32_bytes": res.fp32_bytes, "compression": res.compression}
    predictors = {"runtime": program}
    if res.onnx is not None:
        from qat.export.onnx_export import run as ort_run, session

        sess = session(res.folder / ONNX, threads=torch.get_num_threads())
        predictors["onnx"] = lambda t: ort_run(sess, t)
    reps = compare_many(restored.model, predictors, batches())  # the model once per batch for both
    rep = reps["runtime"]
    row.update({"n": rep["n"], "agreement": rep["agreement"], "runtime_acc": rep["acc"],
                "model_acc": rep["model_acc"], "disagreements": rep["disagreements"],
                "max_abs_logit_diff": rep["max_abs_logit_diff"]})
    fp32 = float_model(restored)
    x = x_all[: max(bs * 2, 64)]
    for b in (1, bs):
        row[f"runtime_ips_b{b}"] = images_per_s(program, x, b, args.seconds, 100_000)
        row[f"fp32_ips_b{b}"] = images_per_s(fp32, x, b, args.seconds, 100_000)
    if res.onnx is not None:
        orep = reps["onnx"]
        row.update({"onnx_agreement": orep["agreement"], "onnx_acc": orep["acc"]})
        for b in (1, bs):
            row[f"onnx_ips_b{b}"] = images_per_s(lambda t: ort_run(sess, t), x, b, args.seconds, 100_000)
    return row


def table(rows: list[dict], threads: int) -> str:
    head = ("| recipe | export bytes | fp32 bytes | compression | agreement (n) | runtime acc | model acc | "
            "runtime img/s b1 | fp32 img/s b1 | runtime img/s b256 | fp32 img/s b256 |")
    lines = [head, "| " + " | ".join(["---"] + ["---:"] * 10) + " |"]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['size_bytes']:,} | {r['fp32_bytes']:,} | {r['compression']:.1f}x | "
            f"{r['agreement']:.4f} ({r['n']}) | {r['runtime_acc']:.4f} | {r['model_acc']:.4f} | "
            f"{r['runtime_ips_b1']:,.0f} | {r['fp32_ips_b1']:,.0f} | {r['runtime_ips_b256']:,.0f} | "
            f"{r['fp32_ips_b256']:,.0f} |")
    onnx = [r for r in rows if "onnx_agreement" in r]
    if onnx:
        lines += ["", "| recipe | onnxruntime agreement | onnxruntime acc | onnxruntime img/s b1 | onnxruntime img/s b256 |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['recipe']} | {r['onnx_agreement']:.4f} | {r['onnx_acc']:.4f} | {r['onnx_ips_b1']:,.0f} | "
                  f"{r['onnx_ips_b256']:,.0f} |" for r in onnx]
    lines.append("")
    lines.append(f"torch {torch.__version__}, {threads} intra-op threads; images/s excludes data loading and "
                 "normalisation.")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data-root", default=None, help="data.root override (e.g. /tmp/cifar10)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timing per measurement")
    ap.add_argument("--limit", type=int, default=None, help="first N test images only (smoke runs)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    ap.add_argument("--json", type=Path, default=None, help="write the raw rows here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [f"data.root={args.data_root}", "data.download=false"] if args.data_root else []
    rows = []
    for run in args.runs:
        row = bench(run, overrides, args)
        print(json.dumps(row), flush=True)
        rows.append(row)
    md = table(rows, torch.get_num_threads())
    print(md)
    if args.out:
        args.out.write_text(md)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
