"""``ExportCallback``: after the test, export the tested model and verify the export against it.

On by default for quantized recipes (``configs/callbacks/default.yaml``, writing ``OUT/export``); a
no-op for ``quant=fp32``. At test end the model holds the tested checkpoint in its deployed form
(``recipe.finalize`` runs at test start), which is what is exported. The runtime (and onnxruntime for
qat_uint8) then runs the test split next to the fake-quant model, and ``extra_metrics`` (merged into
metrics.json by ``qat.experiment``) gets ``export/acc``, ``export/agreement``, ``export/size_bytes``,
``export/compression`` and friends. An export that fails is logged with its error and recorded as
``export/failed: 1.0``; the run's other results are kept.

With any LightningModule and data: the recipe and network come from a ``qat.QATCallback`` on the
trainer (or the module's ``recipe`` and ``model`` attributes, as in qat's ``Classifier``);
``input_shape=(C, H, W)`` and ``normalization={"mean": [...], "std": [...]}`` (what maps uint8 pixels
to the network's input) are needed unless the data module states them (qat's do). Missing, they are
an error at setup, before training. Verification then runs on the trainer's test loaders, whose
batches are ``(input, label)``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytorch_lightning as pl
import torch

from qat.export.exporter import ONNX, export_model, is_quantized, plain_copy
from qat.export.verify import compare_many, test_batches, write_report

log = logging.getLogger(__name__)


def _limit(trainer: pl.Trainer) -> int | None:
    """The number of test batches the trainer's test used, so export/acc compares with test/acc."""
    n = trainer.num_test_batches
    n = n[0] if isinstance(n, (list, tuple)) and n else n
    return int(n) if isinstance(n, (int, float)) and math.isfinite(n) else None


class ExportCallback(pl.Callback):
    def __init__(self, output_dir: str, enabled: bool = True, verify: bool = True,
                 ternary_packing: str = "bits", onnx: bool | None = None, onnx_form: str = "exact",
                 input_shape: tuple[int, int, int] | None = None, normalization: dict | None = None):
        if ternary_packing not in ("bits", "trits"):
            raise ValueError(f"export ternary_packing must be 'bits' or 'trits', got {ternary_packing!r}")
        if onnx_form not in ("exact", "qdq"):
            raise ValueError(f"export onnx_form must be 'exact' or 'qdq', got {onnx_form!r}")
        if input_shape is not None and (len(tuple(input_shape)) != 3 or min(int(v) for v in input_shape) < 1):
            raise ValueError(f"ExportCallback input_shape must be (C, H, W), got {input_shape!r}")
        if normalization is not None and ({"mean", "std"} - set(normalization)):
            raise ValueError(f"ExportCallback normalization needs 'mean' and 'std' lists, got {normalization!r}")
        self.input_shape = tuple(int(v) for v in input_shape) if input_shape is not None else None
        self.normalization = ({"mean": [float(v) for v in normalization["mean"]],
                               "std": [float(v) for v in normalization["std"]]} if normalization is not None else None)
        self.output_dir = Path(output_dir)
        self.enabled = bool(enabled)
        self.verify = bool(verify)
        self.ternary_packing = ternary_packing
        self.onnx = onnx
        self.onnx_form = onnx_form
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

    @staticmethod
    def recipe_and_network(trainer: pl.Trainer, pl_module: pl.LightningModule):
        """From a ``QATCallback`` on the trainer, else the module's ``recipe`` and ``model``."""
        from qat.callbacks.recipe_hooks import QATCallback

        for cb in getattr(trainer, "callbacks", ()):
            if isinstance(cb, QATCallback):
                return cb.recipe, cb.network(pl_module)
        return getattr(pl_module, "recipe", None), getattr(pl_module, "model", pl_module)

    def input_facts(self, trainer: pl.Trainer, pl_module: pl.LightningModule):
        """``(input_shape, normalization)``: given, else from the checkpoint's data facts and the data
        module; an error that says what to pass when neither has them."""
        dm = trainer.datamodule
        data = getattr(pl_module, "meta", {}).get("data", {})
        shape, norm = self.input_shape, self.normalization
        if shape is None:
            try:
                shape = (int(data.get("in_channels", dm.in_channels)),) + tuple(
                    int(s) for s in data.get("image_size", dm.image_size))
            except (AttributeError, RuntimeError, TypeError):
                shape = None
        if norm is None and getattr(dm, "mean", None) is not None and getattr(dm, "std", None) is not None:
            try:
                norm = {"mean": list(dm.mean), "std": list(dm.std)}
            except RuntimeError:  # a qat data module before setup
                norm = None
        if shape is None or norm is None:
            missing = [w for w, v in (("input_shape=(C, H, W)", shape),
                                      ("normalization={'mean': [...], 'std': [...]}", norm)) if v is None]
            raise ValueError(f"ExportCallback needs {' and '.join(missing)}: the data module "
                             f"({type(dm).__name__ if dm is not None else 'none'}) does not state them; pass them "
                             f"to ExportCallback(...)")
        return shape, norm

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        recipe, _ = self.recipe_and_network(trainer, pl_module)
        if self.enabled and getattr(recipe, "quantized", False) and getattr(recipe, "exportable", True):
            self.input_facts(trainer, pl_module)  # fail before training, not after it

    def _export(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        recipe, model = self.recipe_and_network(trainer, pl_module)
        if recipe is None or not getattr(recipe, "quantized", False) or not is_quantized(model):
            log.info("export skipped: the recipe is not quantized (quant=fp32) or not qat's own "
                     "(exportable=%s)", getattr(recipe, "exportable", True))
            return
        dm = trainer.datamodule
        meta = getattr(pl_module, "meta", {})
        shape, norm = self.input_facts(trainer, pl_module)
        res = export_model(model, self.output_dir, input_shape=shape, normalization=norm, recipe=recipe,
                           meta=meta, ternary_packing=self.ternary_packing, onnx=self.onnx,
                           onnx_form=self.onnx_form)
        self.result = res
        metrics = {"export/size_bytes": float(res.size_bytes), "export/compression": float(res.compression)}
        if self.verify:
            limit = _limit(trainer)
            program = res.program()
            predictors = {"runtime": program}
            if res.onnx is not None:
                from qat.export.onnx_export import run, session

                sess = session(res.folder / ONNX)
                predictors["onnx"] = lambda x: run(sess, x)
            report = compare_many(plain_copy(model), predictors, self._batches(trainer, limit))
            report["runtime"].update(backend=program.backend, isa=program.isa)
            metrics.update({"export/acc": report["runtime"]["acc"],
                            "export/agreement": report["runtime"]["agreement"],
                            "export/agreement_float32": report["runtime"]["agreement_float32"],
                            "export/max_logit_diff": report["runtime"]["max_abs_logit_diff"]})
            if "onnx" in report:
                metrics.update({"export/onnx_acc": report["onnx"]["acc"],
                                "export/onnx_agreement": report["onnx"]["agreement"]})
            write_report(res.folder, report)
            log.info("export verified on %d test images (runtime backend %s, isa %s): agreement %.4f, runtime "
                     "acc %.4f (model %.4f); agreement with the model's float32 evaluation %.4f",
                     report["runtime"]["n"], program.backend, program.isa, report["runtime"]["agreement"],
                     report["runtime"]["acc"], report["runtime"]["model_acc"],
                     report["runtime"]["agreement_float32"])
        self.extra_metrics = metrics

    @staticmethod
    def _batches(trainer: pl.Trainer, limit: int | None):
        """The test split as network inputs: qat's data modules preprocess uint8 batches; any other
        test loader yields ``(input, label)`` batches as the network reads them."""
        dm = trainer.datamodule
        if dm is not None and getattr(dm, "preprocess", None) is not None:
            yield from test_batches(dm, limit)
            return
        loaders = trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        if loader is None:
            raise ValueError("no test data to verify the export on; run trainer.test(...) or pass verify=False")
        for i, batch in enumerate(loader):
            if limit is not None and i >= limit:
                break
            x, y = batch[0], batch[1]
            yield x.float().cpu(), y.cpu()

