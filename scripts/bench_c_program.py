"""Standalone C program benchmark: for each export, generate the program (``python -m qat.export.c``),
build its example with gcc, classify the whole test split with it, and report agreement with the
Python runtime, images/s (processor time, one thread, batch 1, interleaved rounds) of the program as
shipped (gcc -std=c99 -O2, scalar kernels) and built with -O3 -march=native, next to the runtime
(native backend) and PyTorch fp32 eager of the same architecture (channels_last), flash and RAM
bytes, and Cortex-M4 object sizes (``arm-none-eabi-size``, when the cross compiler is installed).

    python scripts/bench_c_program.py EXPORT_DIR [EXPORT_DIR ...] --data-root /tmp/cifar10 \
        [--work /tmp/bench_c] [--speed-images 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qat.export.c import generate  # noqa: E402
from qat.export.c.toolchain import build_example, cortex_m4_sizes  # noqa: E402
from qat.runtime import load  # noqa: E402
from qat.runtime.__main__ import datamodule  # noqa: E402


def classify(binary: Path, images: torch.Tensor, raw: Path) -> tuple[np.ndarray, float]:
    """Classes from the program, and the seconds of processor time inside qat_predict."""
    raw.write_bytes(images.numpy().tobytes())
    res = subprocess.run([str(binary), "-q", str(raw)], capture_output=True, text=True, check=True)
    n, us = (int(v) for v in res.stderr.split()[1::2])
    assert n == images.shape[0]
    return np.array([int(v) for v in res.stdout.split()]), us / 1e6


def seconds_batch1(fn, images: torch.Tensor) -> float:
    """Processor time of ``fn`` on each image in turn: the clock the C example reads (clock())."""
    with torch.no_grad():
        t0 = time.process_time()
        for i in range(images.shape[0]):
            fn(images[i:i + 1])
        return time.process_time() - t0


def speeds(binaries: dict[str, Path], raw: Path, runtime, fp32, images: torch.Tensor,
           rounds: int = 5) -> dict[str, float]:
    """images/s (processor time), batch 1, one thread, in interleaved rounds."""
    total = {**{k: 0.0 for k in binaries}, "runtime": 0.0, "fp32": 0.0}
    with torch.no_grad():
        runtime(images[:2])
        fp32(images[:2])
    for chunk in images.chunk(rounds):
        for k, binary in binaries.items():
            total[k] += classify(binary, chunk, raw)[1]
        total["runtime"] += seconds_batch1(runtime, chunk)
        total["fp32"] += seconds_batch1(fp32, chunk)
    return {k: images.shape[0] / v for k, v in total.items()}


def fp32_model(manifest: dict) -> torch.nn.Module:
    import hydra

    _, c, h, w = manifest["input"]["shape"]
    build = hydra.utils.instantiate(manifest["model"])
    return build(int(manifest["data"]["num_classes"]), int(c), (int(h), int(w))).eval().to(
        memory_format=torch.channels_last)


def bench(export: Path, args) -> dict:
    name = export.resolve().parent.name if export.name == "export" else export.name  # RUN_DIR/export
    work = args.work / name
    folder, plan = generate(export, work / "program")
    binary = build_example(folder, work / "classify")  # -std=c99 -O2: the portable program as shipped
    tuned = build_example(folder, work / "classify_native", extra=("-O3", "-march=native"))
    program = load(export)
    dm = datamodule(program.manifest, [f"data.root={args.data_root}", "data.download=false"])
    images, labels = dm.test_set.images, dm.test_set.labels
    c_cls, _ = classify(binary, images, work / "test.raw")
    with torch.no_grad():
        rt_cls = torch.cat([program(program.preprocess(images[s:s + 500])).argmax(1)
                            for s in range(0, images.shape[0], 500)]).numpy()
    fp32 = fp32_model(program.manifest)
    speed = speeds({"c": binary, "c_native": tuned}, work / "speed.raw", lambda x: program(program.preprocess(x)),
                   lambda x: fp32(program.preprocess(x).contiguous(memory_format=torch.channels_last)),
                   images[:args.speed_images])
    row = {"export": name, "recipe": plan.recipe, "n": int(images.shape[0]),
           "agreement": float((c_cls == rt_cls).mean()), "disagreements": int((c_cls != rt_cls).sum()),
           "c_acc": float((c_cls == labels.numpy()).mean()), "runtime_acc": float((rt_cls == labels.numpy()).mean()),
           "c_img_s": speed["c"], "c_native_img_s": speed["c_native"], "runtime_img_s": speed["runtime"], "fp32_img_s": speed["fp32"],
           "backend": getattr(program, "backend", "reference"),
           "flash_bytes": plan.flash_bytes, "arena_bytes": plan.arena_bytes, "scratch_bytes": 2 * plan.scratch_elems,
           "score_frac_bits": plan.score_frac_bits}
    try:
        sizes = cortex_m4_sizes(folder)
        row["m4_flash"] = sizes["total"]["text"] + sizes["total"]["data"]
        row["m4_ram"] = sizes["total"]["data"] + sizes["total"]["bss"]
        row["m4_model_text"] = sizes["model"]["text"]
    except RuntimeError as err:
        print(f"no Cortex-M4 sizes: {err}", file=sys.stderr)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exports", nargs="+", type=Path)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_c_program"))
    ap.add_argument("--speed-images", type=int, default=1000, help="images timed one at a time")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [bench(e, args) for e in args.exports]
    print("| export | recipe | agreement with runtime (n) | C acc | C img/s -O2 | C img/s -O3 -march=native | "
          "runtime img/s | fp32 img/s | flash (consts) | RAM (arena + scratch) | Cortex-M4 flash | Cortex-M4 RAM |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['export']} | {r['recipe']} | {r['agreement']:.4f} ({r['n']}) | {r['c_acc']:.4f} | "
              f"{r['c_img_s']:,.0f} | {r['c_native_img_s']:,.0f} | {r['runtime_img_s']:,.0f} | {r['fp32_img_s']:,.0f} | "
              f"{r['flash_bytes']:,} | "
              f"{r['arena_bytes']:,} + {r['scratch_bytes']:,} | {r.get('m4_flash', 0):,} | {r.get('m4_ram', 0):,} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
