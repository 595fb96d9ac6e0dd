"""Wall-clock seconds per training step, after a warm-up (for benchmarks)."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch


class StepTimer(pl.Callback):
    """Times the steps from batch ``warmup`` of the first epoch on; ``seconds_per_step()`` after fit
    (until the call), ``extra_metrics`` (merged into metrics.json: ``perf/train_step_s``, training
    batches only, the GPU synchronised)."""

    def __init__(self, warmup: int = 5):
        self.warmup, self.t0, self.n, self.t_last = warmup, None, 0, None

    @staticmethod
    def _now(module) -> float:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup and self.t0 is None:
            self.t0 = self._now(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.t0 is not None:
            self.n += 1
            self.t_last = self._now(module)

    @property
    def extra_metrics(self) -> dict:
        return {"perf/train_step_s": (self.t_last - self.t0) / self.n} if self.n else {}

    def seconds_per_step(self) -> float:
        if self.t0 is None or self.n == 0:
            raise RuntimeError(f"no step was timed: the run had at most {self.warmup} (warm-up) batches")
        return (time.perf_counter() - self.t0) / self.n
