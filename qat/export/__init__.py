"""Export a quantized model as packed integer codes + a manifest, checked against the model.

    from qat.export import export_model
    res = export_model(model, "OUT/export", input_shape=(3, 32, 32),
                       normalization={"mean": [...], "std": [...]}, recipe=recipe)

``python -m qat.export CKPT OUT_DIR`` does the same for any checkpoint; ``ExportCallback`` does it
after every quantized training run. The format is described in ``docs/export-format.md``; the
reference runtime that executes it is ``qat.runtime``.
"""

from qat.export.errors import ExportError
from qat.export.exporter import ExportResult, export_model, fp32_state_dict_bytes

__all__ = ["ExportError", "ExportResult", "export_model", "fp32_state_dict_bytes", "ExportCallback",
           "load_checkpoint"]


def __getattr__(name):  # the callback pulls in Lightning; import it only when asked for
    if name == "ExportCallback":
        from qat.export.callback import ExportCallback

        return ExportCallback
    if name == "load_checkpoint":
        from qat.export.checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(name)
