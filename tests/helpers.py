"""Callbacks the CLI tests inject with ``+callbacks.NAME._target_=tests.helpers.X``."""

import os
import signal

import pytorch_lightning as pl
import torch


class KillAtStep(pl.Callback):
    """SIGKILL this process after optimizer step ``step``: a crash with no chance to clean up."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class NaNAtStep(pl.Callback):
    """Poison the weights before step ``step`` so that its loss is NaN."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


class DtypeProbe(pl.Callback):
    """Record, during training, the dtypes quantized layers compute in and their quantizers see."""

    def __init__(self):
        self.layer_out, self.quant_in, self._hooks = set(), set(), []

    def on_train_start(self, trainer, pl_module):
        from qat.quant.layers import QuantMixin

        for m in pl_module.model.modules():
            if isinstance(m, QuantMixin):
                self._hooks.append(m.register_forward_hook(lambda mod, args, out: self.layer_out.add(out.dtype)))
                for q in (m.weight_quant, m.input_quant):
                    self._hooks.append(q.register_forward_hook(lambda mod, args, out: self.quant_in.add(args[0].dtype)))

    def on_train_end(self, trainer, pl_module):
        for h in self._hooks:
            h.remove()
