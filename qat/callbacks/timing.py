"""Wall-clock seconds per training step, after a warm-up (for benchmarks)."""

from __future__ import annotations

import time

import pytorch_lightning as pl


class StepTimer(pl.Callback):
    """Times the steps from batch ``warmup`` on; ``seconds_per_step()`` after fit."""

    def __init__(self, warmup: int = 5):
        self.warmup, self.t0, self.n = warmup, None, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.n += 1

    def seconds_per_step(self) -> float:
        if self.t0 is None or self.n == 0:
            raise RuntimeError(f"no step was timed: the run had at most {self.warmup} (warm-up) batches")
        return (time.perf_counter() - self.t0) / self.n
