"""Small quantized models in their deployed form, for export tests (no training: random weights,
random BatchNorm statistics, observers and scale factors calibrated on random batches)."""

from __future__ import annotations

import torch
from torch import nn

from qat.models import mlp, resnet20, vgg_small
from qat.quant.affine import QATUint8
from qat.quant.binary import BNN, BWN
from qat.quant.fixed_point import LinearFixedPoint, LogFixedPoint, MinMaxInt, TanhFixedPoint
from qat.quant.ternary import TWN, ADMMTernary

RECIPES = {"bnn": BNN, "bwn": BWN, "twn": TWN, "admm_ternary": ADMMTernary, "qat_uint8": QATUint8,
           "linear": LinearFixedPoint, "log": LogFixedPoint, "tanh": TanhFixedPoint, "int": MinMaxInt}
EXACT = ("bnn", "linear", "log", "tanh", "int")  # the runtime reproduces the logits bit for bit
SHAPE = (3, 8, 8)
NORM = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}


def build(model: str, width: float = 1.0):
    c, h, w = SHAPE
    if model == "resnet20":
        return resnet20(10, c, (h, w), width=max(1, int(8 * width)))
    if model == "vgg_small":
        return vgg_small(10, c, (h, w), width=0.125 * width)
    if model == "mlp":
        return mlp(10, c, (h, w), hidden=64)
    raise ValueError(model)


def deployed(model: str, recipe: str, seed: int = 0, net: nn.Module | None = None, shape=SHAPE,
             **recipe_kwargs):
    """``(model, recipe)``: prepared, BN statistics randomised, calibrated, finalized, eval mode.
    ``net`` (inputs of ``shape``) replaces the small test network named by ``model``."""
    torch.manual_seed(seed)
    r = RECIPES[recipe](**recipe_kwargs)
    m = r.prepare(build(model) if net is None else net)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
                mod.weight.uniform_(-1.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    m.train()
    r.on_train_start(m, total_steps=100)
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, *shape))
    m.eval()
    r.finalize(m)
    return m, r


def inputs(n: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) * 1.5
