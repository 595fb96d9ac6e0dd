"""torchvision CNNs x recipes: export bytes, compression, agreement of the runtime with the model on
CIFAR-10 test images, and training-step time against fp32.

Per model and recipe: ``prepare``, ``--steps`` SGD steps on CIFAR-10 training batches (BatchNorm
statistics calibrated before and after, as in tests/export/test_torchvision.py), export, and the
runtime (onnxruntime too for qat_uint8) against the fake-quant model on ``--verify`` test images
drawn at random (seeded) from the whole test split. torchvision's full-width models, 32x32 input.
One JSON line per result is appended to ``--out`` as it is measured, so nothing is lost if the run
stops.

Step time (``--step-models``): the fp32 model and every recipe's prepared model, built once, run
``--step-rounds`` rounds of ``--timed-steps`` steps each in turn (forward, backward, SGD step, the
recipe's hooks), so that a shared machine's noise hits all alike; the median over rounds and its
ratio to fp32 are reported.

    python scripts/bench_matrix.py --data-root /tmp/cifar10 --out bench_matrix.jsonl
    python scripts/bench_matrix.py --report bench_matrix.jsonl   # the markdown tables
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qat.data.cifar10 import CIFAR10DataModule  # noqa: E402
from qat.export import export_model  # noqa: E402
from qat.export.verify import compare_many  # noqa: E402
from tests.export.torchvision_models import MATRIX_RECIPES, MODELS, build, train_step, trained  # noqa: E402


def data(root: str, steps: int, batch: int, verify: int, seed: int = 0):
    dm = CIFAR10DataModule(root, download=False, batch_size=batch)
    dm.setup("fit")
    dm.setup("test")
    g = torch.Generator().manual_seed(seed)
    tr = dm.train_set
    idx = torch.randperm(len(tr.labels), generator=g)[: (steps + 3) * batch].view(-1, batch)
    prep = dm.preprocess

    def batch_of(images, labels, train):
        return prep(images, train=train), labels

    train = [batch_of(tr.images[i], tr.labels[i], True) for i in idx[:steps]]
    calib = [batch_of(tr.images[i], tr.labels[i], False)[0] for i in idx[steps:]]
    te = dm.test_set
    tidx = torch.randperm(len(te.labels), generator=g)[:verify]
    test = [batch_of(te.images[c], te.labels[c], False) for c in tidx.split(100)]
    return train, calib, test, {"mean": list(dm.mean), "std": list(dm.std)}


def matrix(args, out) -> None:
    train, calib, test, norm = data(args.data_root, args.steps, args.batch_size, args.verify)
    for name in args.models.split(","):
        for recipe in args.recipes.split(","):
            torch.manual_seed(0)
            t0 = time.perf_counter()
            model, r = build(name, recipe, small=False)
            trained(model, r, train, calib)
            with tempfile.TemporaryDirectory() as tmp:
                res = export_model(model, Path(tmp) / "export", input_shape=(3, 32, 32), normalization=norm,
                                   recipe=r, onnx=recipe == "qat_uint8")
                predictors = {"runtime": res.program()}
                if res.onnx is not None:
                    from qat.export.onnx_export import run, session

                    sess = session(res.onnx, threads=torch.get_num_threads())
                    predictors["onnx"] = lambda x: run(sess, x)
                reps = compare_many(model, predictors, test)  # the model once per batch for both
                rep = reps["runtime"]
                row = {"kind": "export", "model": name, "recipe": recipe, "bytes": res.size_bytes,
                       "fp32_bytes": res.fp32_bytes, "compression": res.compression, "n": rep["n"],
                       "agreement": rep["agreement"], "model_acc": rep["model_acc"], "acc": rep["acc"],
                       "max_abs_logit_diff": rep["max_abs_logit_diff"],
                       "float_ops": sum(bool(op.get("float")) for op in res.manifest["ops"]),
                       "ops": len(res.manifest["ops"])}
                if "onnx" in reps:
                    row["onnx_agreement"] = reps["onnx"]["agreement"]
            row["seconds"] = time.perf_counter() - t0
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(row, file=sys.stderr, flush=True)


def step_times(args, out) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.batch_size,), generator=g)
    for name in args.step_models.split(","):
        state = {}
        for recipe in ("fp32",) + tuple(args.recipes.split(",")):
            torch.manual_seed(0)
            model, r = build(name, recipe, small=False)
            model.train()
            if r is not None:
                r.on_train_start(model, total_steps=10**6)
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            train_step(model, r, opt, x, y, 1)  # warm-up: allocator, observers' first batch
            state[recipe] = (model, r, opt, [])
        done = 1
        for _ in range(args.step_rounds):
            for recipe, (model, r, opt, times) in state.items():
                t0 = time.perf_counter()
                for i in range(args.timed_steps):
                    train_step(model, r, opt, x, y, done + i + 1)
                times.append((time.perf_counter() - t0) / args.timed_steps)
            done += args.timed_steps
        base = statistics.median(state["fp32"][3])
        for recipe, (_, _, _, times) in state.items():
            t = statistics.median(times)
            row = {"kind": "step", "model": name, "recipe": recipe, "ms_per_step": 1e3 * t, "ratio": t / base,
                   "batch": args.batch_size, "threads": torch.get_num_threads()}
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(row, file=sys.stderr, flush=True)


def report(path: str) -> str:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    ex = [r for r in rows if r["kind"] == "export"]
    lines = ["| model | recipe | export bytes | fp32 bytes | compression | agreement (n) | onnxruntime agreement "
             "| model acc | float ops / ops |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in ex:
        onnx = f"{r['onnx_agreement']:.4f}" if "onnx_agreement" in r else ""
        lines.append(f"| {r['model']} | {r['recipe']} | {r['bytes']:,} | {r['fp32_bytes']:,} | "
                     f"{r['compression']:.1f}x | {r['agreement']:.4f} ({r['n']}) | {onnx} | {r['model_acc']:.3f} | "
                     f"{r['float_ops']} / {r['ops']} |")
    st = [r for r in rows if r["kind"] == "step"]
    if st:
        lines += ["", "| model | recipe | ms/step | ratio to fp32 |", "| --- | --- | ---: | ---: |"]
        lines += [f"| {r['model']} | {r['recipe']} | {r['ms_per_step']:.0f} | {r['ratio']:.2f} |" for r in st]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="data/cifar10")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--recipes", default=",".join(MATRIX_RECIPES))
    ap.add_argument("--steps", type=int, default=20, help="training steps before export")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--verify", type=int, default=500, help="test images for agreement")
    ap.add_argument("--step-models", default="mobilenet_v2,resnet18")
    ap.add_argument("--step-rounds", type=int, default=3)
    ap.add_argument("--timed-steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-matrix", action="store_true")
    ap.add_argument("--skip-steps", action="store_true")
    ap.add_argument("--out", default="bench_matrix.jsonl")
    ap.add_argument("--report", metavar="JSONL", help="print the tables of a finished run and exit")
    args = ap.parse_args()
    if args.report:
        print(report(args.report))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    with open(args.out, "a") as out:
        if not args.skip_steps:
            step_times(args, out)
        if not args.skip_matrix:
            matrix(args, out)
    print(report(args.out))


if __name__ == "__main__":
    main()
