"""``QATCallback``: apply a quantization recipe inside any LightningModule.

It prepares the network at ``setup`` (before the optimizer is built, so every parameter a recipe
adds is trained) unless it is prepared already, and runs the recipe's hooks at the points
``qat.quant.recipe`` defines: ``on_train_start`` with the run's length, ``after_optimizer_step``
after every optimizer step with ``step`` = the optimizer steps taken (``trainer.global_step`` once
the step is done: 1 after the first), ``finalize`` at test start. The loss is the user's: add
``recipe.penalty(model)`` to it in ``training_step`` (ADMM's term; None for other recipes).
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
from torch import nn


def lightning_run_info(trainer: pl.Trainer) -> dict:
    """The ``on_train_start`` arguments from a trainer: ``total_steps`` (None when the run's length is
    unknown) and ``step`` (the optimizer steps already taken, after a resume)."""
    total = trainer.estimated_stepping_batches
    return {"total_steps": int(total) if math.isfinite(total) else None, "step": int(trainer.global_step)}


class QATCallback(pl.Callback):
    """``QATCallback(recipe, module="net")``: quantize ``pl_module.net`` (``module=None``: the whole
    LightningModule) with ``recipe`` (a name such as ``"bnn"`` or a recipe object)."""

    def __init__(self, recipe, module: str | None = None):
        if isinstance(recipe, str):
            from qat.recipes import recipe as make

            recipe = make(recipe)
        if not hasattr(recipe, "prepare") or not hasattr(recipe, "after_optimizer_step"):
            raise TypeError(f"QATCallback needs a recipe (qat.recipe('bnn'), qat.BNN(...)), got {type(recipe).__name__}")
        self.recipe = recipe
        self.module = module
        self._last_step: int | None = None

    def network(self, pl_module: pl.LightningModule) -> nn.Module:
        """The network the recipe applies to."""
        if self.module is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.module)
        except AttributeError as err:
            raise AttributeError(f"QATCallback(module='{self.module}'): {type(pl_module).__name__} has no such "
                                 f"submodule; pass the attribute that holds your network, or module=None") from err

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from qat.export.exporter import is_quantized

        net = self.network(pl_module)
        if not is_quantized(net):
            prepared = self.recipe.prepare(net)
            if prepared is not net:  # torch.ao's recipe returns a new module
                if self.module is None:
                    raise TypeError(f"{self.recipe.name} returns a new module from prepare: give QATCallback the "
                                    f"attribute that holds your network, module='...'")
                pl_module.set_submodule(self.module, prepared)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        info = lightning_run_info(trainer)
        self.recipe.on_train_start(self.network(pl_module), **info)
        self._last_step = info["step"]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        # global_step counts finished optimizer steps; it moves only on batches that stepped
        # (gradient accumulation), and by one per optimizer.step() under manual optimization.
        step = int(trainer.global_step)
        if step != self._last_step:
            self.recipe.after_optimizer_step(self.network(pl_module), step)
            self._last_step = step

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recipe.finalize(self.network(pl_module))
