"""Analytic model size: what the trained network takes once its quantized weights are bit-packed.

    size_bytes = sum over quantized layers  ceil(numel(W) * b_W / 8)
               + sum over every other parameter  4 * numel(p)

where b_W is the layer's weight bit width (``weight_quant.bits``: 1 for binary, 2 for ternary, 8 for
uint8, ...). Everything else (biases, BatchNorm affine parameters, full-precision layers) counts as
float32. Per-channel scales, zero points and BatchNorm running statistics are left out: they are
O(channels), and ``export/size_bytes`` (the exported file, when the export runs) is the exact number.

``ModelSize`` publishes ``model/size_bytes`` and ``model/params`` through ``extra_metrics``, which
``qat.experiment.train`` merges into metrics.json; ``scripts/sweep_report.py`` plots accuracy against it.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
from torch import nn

from qat.quant.prepare import quantized_layers


def weight_bits(layer: nn.Module) -> int:
    """The bit width the layer's weight is deployed at (32 for an identity quantizer)."""
    return int(getattr(layer.weight_quant, "bits", 32))


def model_size(model: nn.Module) -> dict[str, int]:
    """``{"size_bytes": packed size, "params": number of parameters}`` (see the module docstring)."""
    packed: dict[int, int] = {}  # id(weight) -> packed bytes; a shared weight counts once
    for _, layer in quantized_layers(model):
        bits = weight_bits(layer)
        packed[id(layer.weight)] = math.ceil(layer.weight.numel() * bits / 8)
    size = params = 0
    for p in model.parameters():  # parameters() yields each shared tensor once
        params += p.numel()
        size += packed.get(id(p), 4 * p.numel())
    return {"size_bytes": int(size), "params": int(params)}


class ModelSize(pl.Callback):
    """Adds ``model/size_bytes`` and ``model/params`` to metrics.json (``extra_metrics``)."""

    def __init__(self) -> None:
        self.extra_metrics: dict[str, float] = {}

    def _measure(self, pl_module: pl.LightningModule) -> None:
        model = getattr(pl_module, "model", pl_module)
        size = model_size(model)
        self.extra_metrics = {"model/size_bytes": float(size["size_bytes"]), "model/params": float(size["params"])}

    def on_fit_start(self, trainer, pl_module) -> None:
        self._measure(pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._measure(pl_module)
