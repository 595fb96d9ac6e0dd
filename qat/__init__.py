"""qat: quantization-aware training on PyTorch Lightning and Hydra, with verified integer export.

The Python API (``docs/python-api.md``)::

    import qat
    recipe = qat.recipe("bnn")                  # or qat.BNN(...), qat.QATUint8(...), ...
    model = recipe.prepare(model)               # = qat.prepare(model, recipe)
    recipe.on_train_start(model, total_steps=N)
    ... loss + recipe.penalty(model), recipe.after_optimizer_step(model, step) ...
    recipe.finalize(model)
    qat.export_model(model, "export/", input_shape=(3, 32, 32), normalization={...}, recipe=recipe)
    program = qat.runtime.load("export/")

In Lightning: ``qat.QATCallback(recipe)`` and ``qat.ExportCallback(...)``. Names load on first use,
so ``import qat`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "recipe": "qat.recipes", "RECIPES": "qat.recipes", "Recipe": "qat.quant.recipe", "FP32": "qat.quant.recipe",
    "BNN": "qat.quant.binary", "BWN": "qat.quant.binary", "TWN": "qat.quant.ternary",
    "ADMMTernary": "qat.quant.ternary", "QATUint8": "qat.quant.affine", "TorchAOQAT": "qat.quant.torch_ao",
    "LinearFixedPoint": "qat.quant.fixed_point", "LogFixedPoint": "qat.quant.fixed_point",
    "TanhFixedPoint": "qat.quant.fixed_point", "MinMaxInt": "qat.quant.fixed_point",
    "prepare": "qat.quant.prepare", "QATCallback": "qat.callbacks.recipe_hooks",
    "ExportCallback": "qat.export.callback", "export_model": "qat.export.exporter",
    "Classifier": "qat.module", "torchvision_model": "qat.models.torchvision", "custom_model": "qat.models.custom",
}
_SUBPACKAGES = ("runtime", "export", "quant", "models", "data")

__all__ = sorted(_API) + list(_SUBPACKAGES)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"qat.{name}")
    raise AttributeError(f"module 'qat' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
