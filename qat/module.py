"""The Lightning module: cross-entropy classification of any ``nn.Module`` with a quantization recipe.

The recipe's hooks run here, at fixed points of each step (see ``qat.quant.recipe.Recipe``):
``penalty`` is added to the loss, ``after_optimizer_step`` runs after every optimizer step (latent
weight clipping, ADMM updates), and ``finalize`` brings the weights to their deployed form (ADMM: W <- G)
at the start of every test.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from qat.callbacks.recipe_hooks import lightning_run_info
from qat.quant.host_state import refresh_host_state


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class Classifier(pl.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        recipe: Any = None,
        meta: dict | None = None,
        distill: Any = None,
    ):
        super().__init__()
        self.model = model
        self.recipe = recipe
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # Plain data (config, data facts) stored in every checkpoint, so that a checkpoint alone
        # rebuilds the model (export, resume) and loads with weights_only=True.
        self.meta = dict(meta or {})
        # A plain object, not a submodule: the teacher is never in this module's state_dict.
        self.distill = distill if distill is not None and distill.enabled else None
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_train_form = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints, so a resumed run keeps the best so far

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _shared_step(self, batch):
        x, y = batch
        logits = self.model(x)
        return F.cross_entropy(logits, y), logits, y

    def _deployed(self):
        return self.recipe.deployed(self.model) if self.recipe is not None else nullcontext()

    def _distill_step(self, batch):
        x, y = batch
        t0 = time.perf_counter()
        teacher = self.distill.teacher_logits(x)
        # The teacher's cost, in ms per step (CPU time of its forward pass; on a GPU, launch time).
        self.log("distill/teacher_ms", 1000 * (time.perf_counter() - t0), on_step=False, on_epoch=True)
        logits = self.model(x)
        loss, ce, kd = self.distill.loss(logits, teacher, y)
        self.log("train/ce", ce, on_step=False, on_epoch=True)
        self.log("train/kd", kd, on_step=False, on_epoch=True)
        return loss, logits, y

    def training_step(self, batch, batch_idx):
        loss, logits, y = self._distill_step(batch) if self.distill is not None else self._shared_step(batch)
        if self.recipe is not None:
            penalty = self.recipe.penalty(self.model)
            if penalty is not None:
                self.log("train/penalty", penalty, on_step=True, on_epoch=False)
                loss = loss + penalty
        if not torch.isfinite(loss):
            # Stop before backward and the optimizer step: the weights and the checkpoints on disk
            # stay those of the last good step.
            raise NonFiniteLossError(
                f"the training loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}); stopping. Checkpoints already written are kept. Lower optimizer.lr, "
                f"or resume from the last checkpoint with ckpt_path=... or resume=true.")
        self.train_acc(logits.detach(), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self.recipe is not None:
            # Lightning counts this step in global_step only after optimizer_step returns; the
            # recipe's step counts it (1 after the first step), as from qat.QATCallback.
            self.recipe.after_optimizer_step(self.model, self.global_step + 1)

    def on_train_batch_start(self, batch, batch_idx):
        if getattr(self.model, "_compiled_call_impl", None) is not None:
            # The compiled graph branches on Python mirrors of the recipe's switches; a buffer written
            # in place outside the recipe's setters (a DDP broadcast, user code) reaches them here.
            refresh_host_state(self.model)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.recipe is not None:
            for name, value in self.recipe.train_stats().items():
                self.log(name, value, on_step=True, on_epoch=False)

    def on_fit_start(self):
        if self.distill is not None:
            self.distill.to(self.device)

    def on_train_start(self):
        if self.recipe is not None:
            self.recipe.on_train_start(self.model, **lightning_run_info(self.trainer))

    def on_test_start(self):
        if self.recipe is not None:
            self.recipe.finalize(self.model)

    def validation_step(self, batch, batch_idx):
        with self._deployed():
            loss, logits, y = self._shared_step(batch)
        self.val_acc(logits, y)
        # The weights as they train: another forward pass only where they differ from the deployed ones.
        train_form = self.model(batch[0]) if self.recipe is not None and self.recipe.deploy_differs else logits
        self.val_acc_train_form(train_form, y)
        # sync_dist: under DDP the epoch mean over every rank's data, not rank 0's share (no-op on one process).
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc_train_form", self.val_acc_train_form, on_step=False, on_epoch=True)

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:  # a few batches of an untrained model are no "best"
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=False)

    def test_step(self, batch, batch_idx):
        loss, logits, y = self._shared_step(batch)
        self.test_acc(logits, y)
        self.log("test/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.model.parameters())
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total_steps=max(1, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["qat_meta"] = self.meta
        # Global RNG (stochastic binarization, anything else drawing from torch's default generator),
        # for an exact resume; the data module stores its own shuffle and augmentation generators.
        checkpoint["qat_rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["qat_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.meta = dict(checkpoint.get("qat_meta", self.meta))
        self._restore_distill(self.meta.get("config", {}).get("distill"))
        rng = checkpoint.get("qat_rng")
        trainer = getattr(self, "_trainer", None)
        if rng and trainer is not None and trainer.state.fn == "fit":
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def _restore_distill(self, node: dict | None) -> None:
        """A resumed run keeps distilling: its teacher is reloaded from the path in the checkpoint's
        config (the teacher's weights are never in the checkpoint). A teacher given for this run wins."""
        trainer = getattr(self, "_trainer", None)
        if self.distill is not None or not node or not node.get("teacher"):
            return
        if trainer is None or trainer.state.fn != "fit":
            return
        import hydra

        self.distill = hydra.utils.instantiate(node)
        self.distill.to(self.device)
