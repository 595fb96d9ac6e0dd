"""Native runtime benchmark (issue 9): the C kernels against PyTorch fp32 (channels_last) and
onnxruntime, side by side in one process, interleaved rounds, median images/s (or layers/s).

    python scripts/bench_runtime.py [--threads 1 2] [--batches 1 64] [--part layers networks]

* layers: one 3x3 convolution, stride 1, padding 1, C_in = C_out in {64, 128, 256, 512} on 32x32,
  16x16 and 8x8 maps: native binary (packed signs in, int32 accumulators out, and the fused
  threshold writing packed bits), native ternary weights x signs (the same, ``ternary_popcount``;
  weights a third each -1, 0, +1) and native 8-bit (uint8 codes in, requantized uint8 codes out)
  against ``F.conv2d`` fp32 on channels_last tensors;
* networks: bnn VGG-small (width 1.0), bnn ResNet-20, qat_uint8 ResNet-20, CIFAR-10 sized
  (3x32x32): ``qat.runtime`` (native) against PyTorch fp32 eager (channels_last) of the same
  architecture, and, for qat_uint8, onnxruntime on the export's QDQ model.onnx. Speed does not depend on
  the weights' values: the exports are of calibrated, untrained models (random BatchNorm statistics,
  observers calibrated on random batches: ``tests/export/models.deployed``). Each network's native
  output is checked against the reference runtime on the same batch before timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qat.export import export_model  # noqa: E402
from qat.models import resnet20, vgg_small  # noqa: E402
from qat.runtime import load  # noqa: E402
from qat.runtime.native import library as L  # noqa: E402
from qat.runtime.native.ops import parallel_rows, reuse  # noqa: E402
from qat.runtime.native.plan import CHUNK  # noqa: E402
from tests.export.models import NORM, deployed  # noqa: E402


def timed(fn, min_seconds: float) -> float:
    """Calls per second of ``fn`` over at least ``min_seconds`` (one call at least)."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return n / dt


def side_by_side(fns: dict, rounds: int, min_seconds: float) -> dict:
    """Median calls/s of each function, measured in interleaved rounds (one warm-up call each)."""
    for f in fns.values():
        f()
    rates = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            rates[k].append(timed(f, min_seconds))
    return {k: statistics.median(v) for k, v in rates.items()}


# ------------------------------------------------------------------------------- layers
LAYER_KERNELS = ("fp32", "binary", "binary_bits", "ternary", "ternary_bits", "int8")


def layer_case(c: int, size: int, batch: int, isa: str, rounds: int, secs: float, parts=LAYER_KERNELS) -> dict:
    lib = L.load_library()
    g = torch.Generator().manual_seed(c * 1000 + size)
    x = torch.randn(batch, c, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, c, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    geom = L.ConvGeom(batch, size, size, c, c, 3, 3, 1, 1, 1, 1, 1, 1, size, size)
    rows = batch * size
    # binary operands
    cw = (c + 63) // 64
    xs = (torch.rand(batch, size, size, c, generator=g) < 0.5).to(torch.int8).mul(2).sub(1).contiguous()
    xb = torch.empty(batch, size, size, cw, dtype=torch.int64)
    L.check(lib.qat_pack_signs(L.ptr(xs), batch * size * size, c, L.ptr(xb)), "pack")
    wcodes = (torch.rand(c, 3, 3, c, generator=g) < 0.5).to(torch.int8).mul(2).sub(1).contiguous()
    g1 = L.ConvGeom(1, size, size, c, c, 3, 3, 1, 1, 1, 1, 1, 1, size, size)
    wb = torch.zeros(int(lib.qat_binary_weight_words(g1)), dtype=torch.int64)
    L.check(lib.qat_binary_pack_weights(g1, L.ptr(wcodes), L.ptr(wb)), "pack w")
    tcodes = torch.randint(-1, 2, (c, 3, 3, c), generator=g, dtype=torch.int8)
    wt = torch.zeros(int(lib.qat_ternary_weight_words(g1)), dtype=torch.int64)
    L.check(lib.qat_ternary_pack_weights(g1, L.ptr(tcodes), L.ptr(wt)), "pack ternary w")
    tconv = getattr(lib, f"qat_ternary_conv2d_{isa}")
    acc = torch.empty(batch, size, size, c, dtype=torch.int32)
    bits = torch.empty(batch, size, size, cw, dtype=torch.int64)
    thr = torch.zeros(c, dtype=torch.int32)
    dr = torch.ones(c, dtype=torch.int8)
    bconv = getattr(lib, f"qat_binary_conv2d_{isa}")
    # 8-bit operands
    xu = torch.randint(0, 256, (batch, size, size, c), generator=g, dtype=torch.uint8)
    wi = torch.randint(-127, 128, (c, 3 * 3 * c), generator=g, dtype=torch.int32)
    if isa == "avx512":  # the VNNI kernel reads int8 weights
        wq = torch.zeros(int(lib.qat_int8_weight_bytes(g1)), dtype=torch.int8)
        L.check(lib.qat_int8_pack_weights(g1, L.ptr(wi), None, L.ptr(wq)), "pack int8 w")
        scratch_n, scratch_t = int(lib.qat_int8_conv_scratch_bytes(g1)), torch.uint8
    else:
        wq = torch.zeros(int(lib.qat_int_weight_elems(g1)), dtype=torch.int16)
        L.check(lib.qat_int_pack_weights(g1, L.ptr(wi), None, L.ptr(wq)), "pack int w")
        scratch_n, scratch_t = int(lib.qat_int_conv_scratch_elems(g1)), torch.int16
    keep = (torch.full((c,), 1 << 30, dtype=torch.int32), torch.full((c,), 40, dtype=torch.int8),
            torch.zeros(c, dtype=torch.int32), torch.zeros(c, dtype=torch.int8))
    rq = L.Requant(*(t.data_ptr() for t in keep), 0, 0, 255, L.U8)
    out8 = torch.empty(batch, size, size, c, dtype=torch.uint8)
    iconv = getattr(lib, f"qat_int_conv2d_{isa}")
    scratches = [torch.empty(scratch_n, dtype=scratch_t) for _ in range(8)]

    def binary_acc():
        parallel_rows(lambda a, b: L.check(bconv(geom, L.ptr(xb), L.ptr(wb), L.ptr(acc), None, None, None, a, b),
                                           "b"), rows)

    def binary_bits():
        parallel_rows(lambda a, b: L.check(bconv(geom, L.ptr(xb), L.ptr(wb), None, L.ptr(thr), L.ptr(dr),
                                                 L.ptr(bits), a, b), "b"), rows)

    def ternary_acc():
        parallel_rows(lambda a, b: L.check(tconv(geom, L.ptr(xb), L.ptr(wt), L.ptr(acc), None, None, None, a, b),
                                           "t"), rows)

    def ternary_bits():
        parallel_rows(lambda a, b: L.check(tconv(geom, L.ptr(xb), L.ptr(wt), None, L.ptr(thr), L.ptr(dr),
                                                 L.ptr(bits), a, b), "t"), rows)

    def int8():
        def part(a, b):
            s = scratches[a * 8 // max(rows, 1)]
            L.check(iconv(geom, L.ptr(xu), L.U8, 0, L.ptr(wq), L.ptr(s), None, rq, L.ptr(out8), a, b), "i")
        parallel_rows(part, rows)

    def fp32():
        F.conv2d(x, w, None, 1, 1)

    fns = {"fp32": fp32, "binary": binary_acc, "binary_bits": binary_bits, "ternary": ternary_acc,
           "ternary_bits": ternary_bits, "int8": int8}
    r = side_by_side({k: fns[k] for k in parts}, rounds, secs)
    return {"c": c, "size": size, "batch": batch, **{f"{k}_per_s": v for k, v in r.items()},
            "macs": batch * size * size * c * c * 9}


# ------------------------------------------------------------------------------- networks
NETWORKS = {
    "bnn VGG-small (width 1.0)": ("bnn", lambda: vgg_small(10, 3, (32, 32), width=1.0)),
    "bnn ResNet-20": ("bnn", lambda: resnet20(10, 3, (32, 32))),
    "qat_uint8 ResNet-20": ("qat_uint8", lambda: resnet20(10, 3, (32, 32))),
}


def network_case(name: str, folder: Path, batches, rounds: int, secs: float, isa: str,
                 reference: bool = False) -> list[dict]:
    recipe, build = NETWORKS[name]
    m, r = deployed("", recipe, net=build(), shape=(3, 32, 32))
    res = export_model(m, folder, input_shape=(3, 32, 32), normalization=NORM, recipe=r,
                       onnx=recipe == "qat_uint8", onnx_form="qdq")  # onnxruntime's fastest form
    native, ref = load(res.folder, isa=isa), load(res.folder, backend="reference")
    fp32 = build().eval().to(memory_format=torch.channels_last)
    x_all = torch.randn(max(batches), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    same = bool(torch.equal(native(x_all), ref(x_all)))
    sess = None
    if recipe == "qat_uint8":
        from qat.export.onnx_export import run as ort_run, session
        sess = session(res.folder / "model.onnx", threads=torch.get_num_threads())
    rows = []
    for b in batches:
        x = x_all[:b].contiguous()
        xcl = x.contiguous(memory_format=torch.channels_last)
        fns = {"native": lambda: native(x)}
        if reference:
            fns["reference"] = lambda: ref(x)
        with torch.no_grad():
            fns["fp32"] = lambda: fp32(xcl)
            if sess is not None:
                fns["onnxruntime"] = lambda: ort_run(sess, x)
            rates = side_by_side(fns, rounds, secs)
        rows.append({"network": name, "batch": b, "backend": native.backend, "isa": native.isa,
                     "native_equals_reference": same,
                     **{f"{k}_img_s": v * b for k, v in rates.items()}})
        if reference:
            rows[-1]["native_over_reference"] = rates["native"] / rates["reference"]
    return rows


def profile(name: str, folder: Path, batch: int, reps: int) -> dict:
    """Milliseconds per step kind of the native program's fused plan over the batch's chunks (the
    minimum of ``reps`` runs of each step, so that a step descheduled by other load does not
    count), and the whole call's."""
    recipe, build = NETWORKS[name]
    m, r = deployed("", recipe, net=build(), shape=(3, 32, 32))
    prog = load(export_model(m, folder, input_shape=(3, 32, 32), normalization=NORM, recipe=r, onnx=False).folder)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    steps = prog.native.plans[True]
    best = [float("inf")] * len(steps)
    whole = float("inf")
    with torch.no_grad():
        for _ in range(reps):
            spent = [0.0] * len(steps)
            for c0 in range(0, batch, CHUNK):  # as the program runs a batch: in chunks, reusing buffers
                env = {prog.input_name: x[c0:c0 + CHUNK]}
                with reuse():
                    for i, (s, free) in enumerate(zip(steps, prog.native.free)):
                        t = time.perf_counter()
                        s.run(env)
                        spent[i] += time.perf_counter() - t
                        for name in free:
                            env.pop(name, None)
            best = [min(b, t) for b, t in zip(best, spent)]
            t = time.perf_counter()
            prog(x)
            whole = min(whole, time.perf_counter() - t)
    kinds: dict = {}
    for s, t in zip(steps, best):
        kind = type(s).__name__ + (f" {s.op.spec['op']}" if hasattr(s, "op") else "") + (
            f" c_in={s.in_chw[0]}" if hasattr(s, "in_chw") else "")
        kinds[kind] = kinds.get(kind, 0.0) + 1e3 * t
    return {"network": name, "batch": batch, "isa": prog.isa, "whole_ms": 1e3 * whole, "sum_of_steps_ms": 1e3 * sum(best),
            "steps_ms": dict(sorted(kinds.items(), key=lambda kv: -kv[1]))}


def markdown(results: list[dict]) -> str:
    """The tables of BENCHMARKS.md from the JSON rows of one or more runs."""
    out = []
    layers = [r for r in results if r["part"] == "layer"]
    if layers:
        old = [r for r in layers if "int8_per_s" in r]
        out += ["| isa | threads | C | map | batch | fp32 conv/s | binary/s | speedup | binary+threshold/s | speedup | "
                "8-bit/s | speedup |", "| --- | " + " | ".join(["---:"] * 11) + " |"] if old else []
        for r in old:
            out.append(f"| {r.get('isa', '-')} | {r['threads']} | {r['c']} | {r['size']}x{r['size']} | {r['batch']} | {r['fp32_per_s']:,.1f} | "
                       f"{r['binary_per_s']:,.1f} | {r['binary_speedup']:.2f}x | {r['binary_bits_per_s']:,.1f} | "
                       f"{r['binary_bits_speedup']:.2f}x | {r['int8_per_s']:,.1f} | {r['int8_speedup']:.2f}x |")
        out.append("")
    tern = [r for r in layers if "ternary_per_s" in r]
    if tern:
        out += ["| isa | threads | C | map | batch | fp32 conv/s | binary/s | ternary/s | ternary / fp32 | "
                "ternary / binary | binary+threshold/s | ternary+threshold/s | ternary+threshold / fp32 |",
                "| --- | " + " | ".join(["---:"] * 12) + " |"]
        for r in tern:
            out.append(f"| {r.get('isa', '-')} | {r['threads']} | {r['c']} | {r['size']}x{r['size']} | {r['batch']} | "
                       f"{r['fp32_per_s']:,.1f} | {r['binary_per_s']:,.1f} | {r['ternary_per_s']:,.1f} | "
                       f"{r['ternary_per_s'] / r['fp32_per_s']:.2f}x | {r['ternary_per_s'] / r['binary_per_s']:.2f}x | "
                       + " | ".join(f"{r[k]:,.1f}" if k in r else "-" for k in ("binary_bits_per_s", "ternary_bits_per_s"))
                       + (f" | {r['ternary_bits_per_s'] / r['fp32_per_s']:.2f}x |" if "ternary_bits_per_s" in r else " | - |"))
        out.append("")
    nets = [r for r in results if r["part"] == "network"]
    if nets:
        out += ["| network | isa | threads | batch | native img/s | fp32 img/s | native / fp32 | onnxruntime img/s | "
                "native / onnxruntime | native == reference |", "| --- | --- | " + " | ".join(["---:"] * 8) + " |"]
        for r in nets:
            ort = r.get("onnxruntime_img_s")
            out.append(f"| {r['network']} | {r.get('isa', '-')} | {r['threads']} | {r['batch']} | {r['native_img_s']:,.0f} | "
                       f"{r['fp32_img_s']:,.0f} | {r['native_img_s'] / r['fp32_img_s']:.2f}x | "
                       + (f"{ort:,.0f} | {r['native_img_s'] / ort:.2f}x" if ort else "- | -")
                       + f" | {r['native_equals_reference']} |")
        groups: dict = {}
        for r in nets:
            groups.setdefault((r["network"], r["threads"], r["batch"]), []).append(r)
        if any(len(g) > 1 for g in groups.values()):  # several runs (processes): median and range
            def spread(vals):
                return f"{statistics.median(vals):.2f}x ({min(vals):.2f} to {max(vals):.2f})"

            out += ["", "| network | threads | batch | runs | native / fp32: median (range) | "
                    "native / onnxruntime: median (range) | native img/s (median) | fp32 img/s (median) |",
                    "| --- | " + " | ".join(["---:"] * 7) + " |"]
            for (name, t, b), g in groups.items():
                ort = [r["native_img_s"] / r["onnxruntime_img_s"] for r in g if r.get("onnxruntime_img_s")]
                out.append(f"| {name} | {t} | {b} | {len(g)} | "
                           f"{spread([r['native_img_s'] / r['fp32_img_s'] for r in g])} | "
                           f"{spread(ort) if ort else '-'} | {statistics.median(r['native_img_s'] for r in g):,.0f} | "
                           f"{statistics.median(r['fp32_img_s'] for r in g):,.0f} |")
        ref = [r for r in nets if "reference_img_s" in r]
        if ref:
            out += ["", "| network | threads | batch | native img/s | reference img/s | native / reference |",
                    "| --- | ---: | ---: | ---: | ---: | ---: |"]
            out += [f"| {r['network']} | {r['threads']} | {r['batch']} | {r['native_img_s']:,.0f} | "
                    f"{r['reference_img_s']:,.1f} | {r['native_over_reference']:.1f}x |" for r in ref]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--channels", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 16, 8])
    ap.add_argument("--part", nargs="+", default=["layers", "networks"], choices=["layers", "networks"])
    ap.add_argument("--max-gmacs", type=float, default=40.0,
                    help="skip layer cases above this many GMACs per call (C=512 on 32x32 at batch 64: 154)")
    ap.add_argument("--kernels", nargs="+", default=list(LAYER_KERNELS), choices=LAYER_KERNELS,
                    help="layers: the kernels to time (fp32 and binary always run: the ratios need them)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=0.3, help="minimum time per measurement")
    ap.add_argument("--isa", default=L.default_isa(), choices=L.ISAS)
    ap.add_argument("--reference", action="store_true", help="networks: also time the Python reference runtime")
    ap.add_argument("--profile", default=None, choices=list(NETWORKS),
                    help="print where the native runtime spends its time on this network (per step kind) and exit")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, nargs="+", default=None,
                    help="print the tables of these --json files and exit")
    args = ap.parse_args()
    if args.markdown:
        print(markdown([r for p in args.markdown for r in json.loads(p.read_text())]), end="")
        return 0
    results = []
    if args.profile:
        torch.set_num_threads(args.threads[0])
        with tempfile.TemporaryDirectory() as tmp:
            for b in args.batches:
                print(json.dumps(profile(args.profile, Path(tmp) / f"p{b}", b, reps=15), indent=1))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for t in args.threads:
            torch.set_num_threads(t)
            if "layers" in args.part:
                for c in args.channels:
                    for s in args.sizes:
                        for b in args.batches:
                            if b * s * s * c * c * 9 > args.max_gmacs * 1e9:
                                print(f"skipped: C={c} {s}x{s} batch {b} (--max-gmacs)", flush=True)
                                continue
                            row = {"part": "layer", "threads": t, "isa": args.isa,
                                   **layer_case(c, s, b, args.isa, args.rounds, args.seconds,
                                                [k for k in LAYER_KERNELS if k in {"fp32", "binary", *args.kernels}])}
                            for k in LAYER_KERNELS[1:]:
                                if f"{k}_per_s" in row:
                                    row[f"{k}_speedup"] = row[f"{k}_per_s"] / row["fp32_per_s"]
                            print(json.dumps(row), flush=True)
                            results.append(row)
            if "networks" in args.part:
                for i, name in enumerate(NETWORKS):
                    for row in network_case(name, Path(tmp) / f"net{t}_{i}", args.batches, args.rounds,
                                            args.seconds, args.isa, args.reference):
                        row.update(part="network", threads=t)
                        print(json.dumps(row), flush=True)
                        results.append(row)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
