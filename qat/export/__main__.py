"""``python -m qat.export CKPT OUT_DIR [--verify] [--ternary-packing trits] [data.root=DIR ...]``

Export any qat checkpoint to an export folder. ``--verify`` runs the runtime and the fake-quant model
on the test split of the checkpoint's data set (``data.*`` overrides as in train.py, e.g.
``data.root=/tmp/cifar10 data.download=false``) and writes ``verification.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from qat.export.checkpoint import load_checkpoint
from qat.export.errors import ExportError
from qat.export.exporter import ONNX, export_model
from qat.runtime.errors import FormatError


def build_datamodule(data_config: dict, overrides: list[str]):
    """The data module of a stored data config, with ``data.key=value`` overrides applied."""
    import hydra
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"data": dict(data_config)})
    for o in overrides:
        if "=" not in o or not o.startswith("data."):
            raise ExportError(f"override '{o}' is not of the form data.key=value")
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("test")
    return dm


def normalization(restored, overrides: list[str], datamodule=None) -> dict:
    """Mean and std of the model's input: stored in the checkpoint or the data config, a data module's
    fixed default (CIFAR-10), or computed from the training data (which then must be available)."""
    import hydra
    from omegaconf import OmegaConf

    data, cfg = restored.data, restored.config.get("data", {})
    if data.get("mean") is not None and data.get("std") is not None:
        return {"mean": list(data["mean"]), "std": list(data["std"])}
    if datamodule is None:
        merged = OmegaConf.merge(OmegaConf.create({"data": dict(cfg)}), OmegaConf.from_dotlist(list(overrides)))
        if merged.data.get("mean") is not None and merged.data.get("std") is not None:
            return {"mean": list(merged.data.mean), "std": list(merged.data.std)}
        try:  # a fixed default needs no data (CIFAR-10's constants)
            mean, std = hydra.utils.instantiate(merged.data).default_mean_std(None)
            return {"mean": list(mean), "std": list(std)}
        except Exception:  # noqa: BLE001 - statistics of the training split: load the data below
            pass
        datamodule = build_datamodule(cfg, overrides)
    return {"mean": list(datamodule.mean), "std": list(datamodule.std)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qat.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("out_dir")
    ap.add_argument("--verify", action="store_true", help="check the export against the model on the "
                    "test split (needs the data set)")
    ap.add_argument("--ternary-packing", choices=("bits", "trits"), default="bits",
                    help="ternary weights as 2-bit fields (default) or base-3, 5 per byte")
    ap.add_argument("--onnx", dest="onnx", action="store_true", default=None,
                    help="also write model.onnx (default: for qat_uint8)")
    ap.add_argument("--no-onnx", dest="onnx", action="store_false")
    ap.add_argument("--onnx-form", choices=("exact", "qdq"), default="exact",
                    help="model.onnx as the runtime's exact integers (default) or the QDQ layout onnxruntime "
                    "fuses into QLinearConv (faster, further from the model)")
    ap.add_argument("overrides", nargs="*", help="data.key=value overrides for --verify / normalisation")
    args = ap.parse_intermixed_args(argv)  # options may follow the overrides
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        restored = load_checkpoint(args.checkpoint)
        if not getattr(restored.recipe, "quantized", False):
            raise ExportError(f"{args.checkpoint} was trained with quant=fp32: there are no integer "
                              "weights to export; export a checkpoint of a quantized recipe")
        if not getattr(restored.recipe, "exportable", True):
            raise ExportError(f"{args.checkpoint} was trained with quant={restored.recipe.name}, whose "
                              "modules qat's export does not read (use that framework's own conversion)")
        dm = build_datamodule(restored.config.get("data", {}), args.overrides) if args.verify else None
        res = export_model(restored.model, args.out_dir, input_shape=restored.input_shape,
                           normalization=normalization(restored, args.overrides, dm),
                           recipe=restored.recipe, meta=restored.meta,
                           ternary_packing=args.ternary_packing, onnx=args.onnx,
                           onnx_form=args.onnx_form)
        print(f"exported {args.checkpoint} -> {res.folder}: {res.size_bytes:,} bytes, "
              f"{res.compression:.1f}x smaller than fp32 ({res.fp32_bytes:,} bytes)")
        if args.verify:
            from qat.export.verify import compare_many, test_batches, write_report

            predictors = {"runtime": res.program()}
            if res.onnx is not None:
                from qat.export.onnx_export import run, session

                sess = session(res.folder / ONNX)
                predictors["onnx"] = lambda x: run(sess, x)
            report = compare_many(restored.model, predictors, test_batches(dm))
            write_report(res.folder, report)
            for k, r in report.items():
                print(f"{k}: agreement {r['agreement']:.4f} on {r['n']} test images (with the model's float32 "
                      f"evaluation {r['agreement_float32']:.4f}), accuracy {r['acc']:.4f} (model {r['model_acc']:.4f})")
            print(json.dumps({k: {kk: v for kk, v in r.items() if kk != "examples"}
                              for k, r in report.items()}))
    except (ExportError, FormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
