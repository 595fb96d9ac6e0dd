"""``python -m qat.runtime EXPORT_DIR [data=cifar10 data.root=DIR ...] [--batch-size N]``

Evaluate an export folder on the test split of a data set and print its accuracy. Data options are
train.py's: ``data=<group>`` composes the group from ``configs/data``; without it the data config
stored in the export is used, with any ``data.key=value`` overrides. Images are normalised with the
export's own mean and std.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from qat.runtime.errors import FormatError
from qat.runtime.native.library import ISAS
from qat.runtime.program import Program


def datamodule(manifest: dict, overrides: list[str]):
    import hydra
    from omegaconf import OmegaConf

    for o in overrides:
        if "=" not in o or not (o.startswith("data.") or o.startswith("data=")):
            raise ValueError(f"'{o}' is not a data option (data=<group> or data.key=value)")
    if any(o.startswith("data=") for o in overrides):
        from qat.config import compose_config

        cfg = compose_config(overrides, output_dir=".")
        data_cfg = cfg.data
    else:
        stored = manifest.get("data", {}).get("config") or {}
        if not stored:
            raise ValueError("the export stores no data config; pass data=<group> (e.g. data=cifar10 "
                             "data.root=DIR)")
        data_cfg = OmegaConf.merge(OmegaConf.create(stored), OmegaConf.from_dotlist(
            [o[len("data."):] for o in overrides]))
    dm = hydra.utils.instantiate(data_cfg)
    dm.prepare_data()
    dm.setup("test")
    return dm


def evaluate(program: Program, dm, batch_size: int | None = None, limit: int | None = None) -> dict:
    """Top-1 accuracy of the export on ``dm``'s test split (uint8 images, the export's normalisation)."""
    want = program.input_shape[1:]
    got = [dm.in_channels, *dm.image_size]
    if list(want) != list(got):
        raise ValueError(f"the export takes {want} inputs but the data are {got}")
    if batch_size:
        dm.eval_batch_size = int(batch_size)
    correct = n = 0
    seconds = 0.0
    # The data module's test loader: in-memory tensors or files decoded per batch (data.in_memory=false).
    for images, labels in dm.test_dataloader():
        if limit is not None and n >= limit:
            break
        if limit is not None:
            images, labels = images[:limit - n], labels[:limit - n]
        x = program.preprocess(images)
        t0 = time.perf_counter()
        pred = program(x).argmax(1)
        seconds += time.perf_counter() - t0
        correct += int((pred == labels).sum())
        n += int(labels.numel())
    return {"n": n, "acc": correct / n, "images_per_s": n / seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qat.runtime", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export_dir")
    ap.add_argument("overrides", nargs="*", help="data=<group>, data.key=value")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="evaluate the first N test images only")
    ap.add_argument("--backend", default=None, choices=["native-avx2", "native-scalar", "reference"],
                    help="default: QAT_RUNTIME, else the native kernels when built")
    ap.add_argument("--isa", default=None, choices=list(ISAS),
                    help="path of the native kernel library (default: QAT_NATIVE_ISA, else the best this CPU runs)")
    args = ap.parse_args(argv)
    try:
        program = Program.load(args.export_dir, args.backend, args.isa)
        dm = datamodule(program.manifest, args.overrides)
        res = evaluate(program, dm, args.batch_size, args.limit)
    except (FormatError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    res["backend"], res["isa"] = program.backend, program.isa
    print(f"accuracy {res['acc']:.4f} on {res['n']} test images ({res['images_per_s']:.0f} images/s, "
          f"{torch.get_num_threads()} threads, backend {program.backend}, isa {program.isa})")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
