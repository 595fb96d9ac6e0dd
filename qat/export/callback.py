"""``ExportCallback``: after the test, export the tested model and verify the export against it.

On by default for quantized recipes (``configs/callbacks/default.yaml``, writing ``OUT/export``); a
no-op for ``quant=fp32``. At test end the model holds the tested checkpoint in its deployed form
(``recipe.finalize`` runs at test start), which is what is exported. The runtime (and onnxruntime for
qat_uint8) then runs the test split next to the fake-quant model, and ``extra_metrics`` (merged into
metrics.json by ``qat.experiment``) gets ``export/acc``, ``export/agreement``, ``export/size_bytes``,
``export/compression`` and friends. An export that fails is logged with its error and recorded as
``export/failed: 1.0``; the run's other results are kept.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytorch_lightning as pl
import torch

from qat.export.exporter import ONNX, export_model, is_quantized, plain_copy
from qat.export.verify import compare, test_batches, write_report

log = logging.getLogger(__name__)


def _limit(trainer: pl.Trainer, datamodule) -> int | None:
    """The number of test batches the trainer's test used, so export/acc compares with test/acc."""
    lim = getattr(trainer, "limit_test_batches", None)
    if lim is None or (isinstance(lim, float) and lim >= 1.0):
        return None
    if isinstance(lim, int):
        return lim
    return max(1, int(math.floor(lim * len(datamodule.test_dataloader()))))


class ExportCallback(pl.Callback):
    def __init__(self, output_dir: str, enabled: bool = True, verify: bool = True,
                 ternary_packing: str = "bits", onnx: bool | None = None):
        if ternary_packing not in ("bits", "trits"):
            raise ValueError(f"export ternary_packing must be 'bits' or 'trits', got {ternary_packing!r}")
        self.output_dir = Path(output_dir)
        self.enabled = bool(enabled)
        self.verify = bool(verify)
        self.ternary_packing = ternary_packing
        self.onnx = onnx
        self.extra_metrics: dict[str, float] = {}
        self.result = None

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled or not trainer.is_global_zero:
            return
        try:
            with torch.inference_mode(False), torch.no_grad():  # Lightning tests in inference mode
                self._export(trainer, pl_module)
        except Exception:  # noqa: BLE001 - a failed export must not lose the run's other metrics
            log.exception("export to %s failed; the training results are kept, see the error above",
                          self.output_dir)
            self.extra_metrics = {"export/failed": 1.0}

    def _export(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        recipe = getattr(pl_module, "recipe", None)
        model = pl_module.model
        if recipe is None or not getattr(recipe, "quantized", False) or not is_quantized(model):
            log.info("export skipped: the recipe is not quantized (quant=fp32) or not qat's own "
                     "(exportable=%s)", getattr(recipe, "exportable", True))
            return
        dm = trainer.datamodule
        if dm is None or getattr(dm, "preprocess", None) is None:
            log.warning("export skipped: the run has no qat data module (its normalisation is needed)")
            return
        meta = getattr(pl_module, "meta", {})
        data = meta.get("data", {})
        shape = (int(data.get("in_channels", dm.in_channels)),) + tuple(
            int(s) for s in data.get("image_size", dm.image_size))
        res = export_model(model, self.output_dir, input_shape=shape,
                           normalization={"mean": list(dm.mean), "std": list(dm.std)}, recipe=recipe,
                           meta=meta, ternary_packing=self.ternary_packing, onnx=self.onnx)
        self.result = res
        metrics = {"export/size_bytes": float(res.size_bytes), "export/compression": float(res.compression)}
        if self.verify:
            fq = res_model = plain_copy(model)
            limit = _limit(trainer, dm)
            program = res.program()
            report = {"runtime": {**compare(fq, program, test_batches(dm, limit)), "backend": program.backend}}
            metrics.update({"export/acc": report["runtime"]["acc"],
                            "export/agreement": report["runtime"]["agreement"],
                            "export/max_logit_diff": report["runtime"]["max_abs_logit_diff"]})
            if res.onnx is not None:
                from qat.export.onnx_export import run, session

                sess = session(res.folder / ONNX)
                report["onnx"] = compare(res_model, lambda x: run(sess, x), test_batches(dm, limit))
                metrics.update({"export/onnx_acc": report["onnx"]["acc"],
                                "export/onnx_agreement": report["onnx"]["agreement"]})
            write_report(res.folder, report)
            log.info("export verified on %d test images (runtime backend %s): agreement %.4f, runtime acc "
                     "%.4f (model %.4f)", report["runtime"]["n"], program.backend, report["runtime"]["agreement"],
                     report["runtime"]["acc"], report["runtime"]["model_acc"])
        self.extra_metrics = metrics

