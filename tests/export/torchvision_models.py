"""torchvision classification CNNs prepared for a recipe and trained a few steps: shared by the model
x recipe tests (tests/export/test_torchvision.py) and their benchmark (scripts/bench_matrix.py)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from qat.quant.layers import QuantConvBn2d
from tests.export.models import RECIPES

MODELS = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x0_5",
          "squeezenet1_0", "densenet121")
MATRIX_RECIPES = ("bnn", "bwn", "twn", "admm_ternary", "qat_uint8")
#: width multipliers where the builder takes one (smaller and faster; every op stays)
SMALL = {"mobilenet_v2": {"width_mult": 0.25}, "mobilenet_v3_small": {"width_mult": 0.25}}
#: DenseNet.forward applies F.relu before the classifier: a sign there would be +1 for every image,
#: and bnn's prepare refuses it, so the classifier sees the real-valued features
RECIPE_OPTIONS = {("densenet121", "bnn"): {"last": "weights_only"}}


def build(name: str, recipe: str, small: bool = True, num_classes: int = 10):
    """``(prepared model, recipe)``; ``recipe="fp32"``: the float model and None."""
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes,
                                         **(SMALL.get(name, {}) if small else {}))
    if recipe == "fp32":
        return model, None
    r = RECIPES[recipe](**RECIPE_OPTIONS.get((name, recipe), {}))
    return r.prepare(model), r  # bnn: prepare swaps every activation before a sign for hard tanh


def calibrate_batchnorm(model: nn.Module, batches) -> None:
    """BatchNorm running statistics from ``batches`` (a cumulative average), so that a few training
    steps leave a network whose eval-mode activations neither vanish nor explode: with torch's
    momentum 0.1 the statistics would still be near the initial mean 0, variance 1, and they would
    not follow the weights the steps changed. Called before the steps (qat_uint8 freezes BatchNorm
    during them) and after (BatchNorm that qat_uint8 has frozen by then keeps its statistics)."""
    frozen = {id(m.bn) for m in model.modules() if isinstance(m, QuantConvBn2d) and bool(m.bn_frozen)}
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in frozen]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        for x in batches:
            model(x)
    for m, momentum in zip(bns, saved):
        m.momentum = momentum


def train_step(model: nn.Module, recipe, opt, x: torch.Tensor, y: torch.Tensor, step: int) -> None:
    """One optimizer step with the recipe's penalty and hook (``step``: steps taken after this one)."""
    loss = nn.functional.cross_entropy(model(x), y)
    penalty = recipe.penalty(model) if recipe is not None else None
    if penalty is not None:
        loss = loss + penalty
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if recipe is not None:
        recipe.after_optimizer_step(model, step)


def trained(model: nn.Module, recipe, batches: list, calib: list, lr: float = 0.01):
    """``model`` after one SGD step per ``(x, y)`` of ``batches``, BatchNorm calibrated on ``calib``
    (inputs) before and after, finalized, in eval mode."""
    model.train()
    recipe.on_train_start(model, total_steps=len(batches))
    calibrate_batchnorm(model, calib)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step, (x, y) in enumerate(batches, 1):
        train_step(model, recipe, opt, x, y, step)
    calibrate_batchnorm(model, calib)
    model.eval()
    recipe.finalize(model)
    return model
