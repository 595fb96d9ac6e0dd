"""Recipes: how a model is quantized and which hooks run during training.

A recipe is built from a Hydra config in ``configs/quant/`` or in Python (``qat.recipe("bnn")``). It
validates its values at construction (a bad value raises ``ValueError`` saying what to change), swaps
layers once when the model is built (``prepare``), and its hooks run at fixed points of training,
from qat's Lightning module, from ``qat.QATCallback`` in any LightningModule, or from a plain loop:

    recipe.on_train_start(model, total_steps=N)        # once, before the first step
    loss = criterion(model(x), y) + (recipe.penalty(model) or 0)
    loss.backward(); optimizer.step()
    recipe.after_optimizer_step(model, step)           # step = optimizer steps taken: 1, 2, ..., N
    recipe.finalize(model)                             # before test and export

None of them needs a Lightning object.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from qat.quant.prepare import check_policy, prepare, quantized_layers


class Recipe:
    """Base recipe: full precision, every hook a no-op."""

    name = "fp32"
    quantized = False
    # Trains under trainer.precision=bf16-mixed / 16-mixed (qat's layers run their quantizers in float32).
    mixed_precision = True

    def prepare(self, model: nn.Module) -> nn.Module:
        """Return the model with its layers swapped for quantized ones (in place)."""
        return model

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the training loss (ADMM's augmented Lagrangian), or None."""
        return None

    def on_train_start(self, model: nn.Module, total_steps: int | None = None, step: int = 0) -> None:
        """Once before training: ``total_steps`` is the number of optimizer steps of the whole run
        (schedules given as fractions of training need it; a recipe that does raises when it is
        missing), ``step`` the optimizer steps already taken (0, or the step a resumed run starts at)."""
        check_total_steps(self, total_steps, None)
        self._started = True

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """After every optimizer step. ``step`` is the number of optimizer steps taken so far,
        counting the one that just finished: 1 after the first step, ``total_steps`` after the last
        (Lightning's ``trainer.global_step`` once the step is done)."""

    def finalize(self, model: nn.Module) -> None:
        """Bring the weights to their deployed form before test and export (ADMM: W <- G).
        Must be idempotent: it runs at every test start."""

    def describe(self) -> dict:
        return {"name": self.name}


def check_total_steps(recipe: Recipe, total_steps, why: str | None) -> int | None:
    """``total_steps`` as a positive int; None is an error when the recipe needs it (``why`` says for what)."""
    if total_steps is not None and hasattr(total_steps, "estimated_stepping_batches"):
        raise TypeError(f"{recipe.name}.on_train_start takes no trainer: pass "
                        f"on_train_start(model, total_steps=trainer.estimated_stepping_batches, step=trainer.global_step)")
    if total_steps is not None:
        if isinstance(total_steps, float) and total_steps.is_integer():
            total_steps = int(total_steps)
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"{recipe.name}: total_steps must be a positive number of optimizer steps, got "
                             f"{total_steps!r} (under Lightning, an unknown run length: set trainer.max_steps)")
    elif why is not None:
        raise ValueError(f"{recipe.name} needs the run's length: {why}. Pass on_train_start(model, total_steps=N), "
                         f"N the number of optimizer steps of the whole run")
    return total_steps


def check_started(recipe: Recipe) -> None:
    """Scheduled recipes cannot guess: ``after_optimizer_step`` before ``on_train_start`` is an error."""
    if not getattr(recipe, "_started", False):
        raise RuntimeError(f"{recipe.name}: after_optimizer_step ran before on_train_start; call "
                           f"recipe.on_train_start(model, total_steps=N) once before the first step")


class FP32(Recipe):
    """No quantization: the baseline every recipe is compared with."""


def check_bits(bits: int, low: int = 1, high: int = 16, what: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high:
        raise ValueError(f"{what} must be an integer in [{low}, {high}], got {bits!r}")
    return bits


def check_positive(value: float, what: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    return float(value)


def check_step(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative step count or null, got {value!r}")
    return value


class QuantRecipe(Recipe):
    """A recipe that swaps layers with ``qat.quant.prepare``.

    Subclasses define ``weight_quantizer(layer)`` and ``input_quantizer(layer)``; ``first``, ``last``
    and ``overrides`` choose per-layer policies (see ``qat.quant.prepare``); ``strict`` makes a
    convolution or linear layer that prepare cannot quantize an error instead of a warning.
    """

    quantized = True
    fold_bn = False
    activation = None  # factory replacing every activation module that may feed a sign, or None
    default_first = "quant"
    default_last = "quant"

    def __init__(self, first: str | None = None, last: str | None = None,
                 overrides: Mapping[str, str] | None = None, strict: bool = False):
        self.strict = bool(strict)  # prepare: a conv/linear layer it cannot quantize is an error, not a warning
        self.first = check_policy(first if first is not None else self.default_first, "first")
        self.last = check_policy(last if last is not None else self.default_last, "last")
        self.overrides = {str(k): check_policy(str(v), f"overrides['{k}']") for k, v in dict(overrides or {}).items()}

    def weight_quantizer(self, layer: nn.Module) -> nn.Module:
        raise NotImplementedError

    def input_quantizer(self, layer: nn.Module) -> nn.Module:
        raise NotImplementedError

    def make_quantizers(self, name: str, layer: nn.Module, policy: str):
        from qat.quant.quantizers import AffineQuant, Identity

        if policy == "int8":
            return AffineQuant(bits=8, per_channel=True, symmetric=True), AffineQuant(bits=8, per_channel=False)
        wq = self.weight_quantizer(layer)
        iq = self.input_quantizer(layer) if policy == "quant" else Identity()
        return wq, iq

    def prepare(self, model: nn.Module) -> nn.Module:
        return prepare(model, self)

    def layers(self, model: nn.Module):
        return quantized_layers(model)

    def describe(self) -> dict:
        return {"name": self.name, "first": self.first, "last": self.last, "overrides": dict(self.overrides)}
