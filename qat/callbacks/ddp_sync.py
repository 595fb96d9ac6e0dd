"""Quantizer state across DDP ranks: keep it identical where it matters, and check that it is.

Under DDP the weights stay identical on every rank (gradients are all-reduced, every rank takes the
same optimizer step), so everything computed from the weights alone is identical too: ADMM's
G = Proj(W + U), U, rho, alpha; the step-scheduled flags (uint8 fake-quant / observer switches,
frozen BN). State updated *by a forward pass* is not: a range observer's EMA and BatchNorm's running
statistics see only the rank's own part of the batch. DDP copies rank 0's buffers to every rank at the
start of each training forward (``broadcast_buffers=True``), so they differ only between the end of a
rank's forward and the next training forward, but that window includes validation (no broadcast under
``no_grad``): each rank would validate its half of the data with its own observer ranges.

``SyncQuantState`` closes it: before every validation epoch and at the end of fit it copies rank 0's
buffers (the state rank 0 checkpoints) to every rank. With ``check_every_n_steps > 0`` it also compares
a hash of every parameter and buffer across ranks: after each N-th optimizer step (parameters must match
exactly; buffers updated by the forward may differ, and are listed), and after each sync and at test
start (everything must match). A mismatch that must not happen raises ``RuntimeError``; rank 0 writes
the findings to ``ddp_state.json`` in the run folder and ``ddp/*`` counts to metrics.json.
Single-process runs: nothing to do, every hook returns at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy every buffer of ``module`` from rank ``src`` to all ranks, in place."""
    for buf in module.buffers():
        if buf.numel() == 0:
            continue
        # Gloo has no bool type: send the same bytes as uint8.
        dist.broadcast(buf.view(torch.uint8) if buf.dtype == torch.bool else buf, src=src)


def tensor_hashes(module: nn.Module) -> dict[str, str]:
    """``{"param:NAME" | "buffer:NAME": sha1 of the tensor's bytes}``: equal hashes, equal tensors."""
    out = {}
    for kind, items in (("param", module.named_parameters()), ("buffer", module.named_buffers())):
        for name, t in items:
            data = t.detach().cpu().contiguous()
            if data.dtype == torch.bool:
                data = data.to(torch.uint8)
            h = hashlib.sha1(str(tuple(data.shape)).encode())
            h.update(data.view(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
            out[f"{kind}:{name}"] = h.hexdigest()
    return out


def differing(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers whose value differs between ranks (collective call)."""
    mine = tensor_hashes(module)
    every: list[dict[str, str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return sorted(k for k in mine if any(other.get(k) != mine[k] for other in every if other is not None))


class SyncQuantState(pl.Callback):
    """See the module docstring. check_every_n_steps: 0 (off) or the interval of the cross-rank check."""

    def __init__(self, check_every_n_steps: int = 0):
        if isinstance(check_every_n_steps, bool) or not isinstance(check_every_n_steps, int) \
                or check_every_n_steps < 0:
            raise ValueError(f"check_every_n_steps must be a step count >= 0, got {check_every_n_steps!r}")
        self.check_every_n_steps = check_every_n_steps
        self.checks = 0
        self.buffers_differing_in_training: set[str] = set()
        self.extra_metrics: dict[str, float] = {}

    def _model(self, pl_module) -> nn.Module:
        return getattr(pl_module, "model", pl_module)

    def _sync(self, pl_module, phase: str) -> None:
        if not _distributed():
            return
        broadcast_buffers(self._model(pl_module))
        if self.check_every_n_steps:
            self._check(pl_module, phase, strict=True)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._sync(pl_module, "validation start, after sync")

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync(pl_module, "end of fit, after sync")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        if _distributed() and self.check_every_n_steps:
            self._check(pl_module, "test start", strict=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (_distributed() and self.check_every_n_steps
                and trainer.global_step % self.check_every_n_steps == 0):
            self._check(pl_module, f"after optimizer step {trainer.global_step}", strict=False)

    def _check(self, pl_module, phase: str, strict: bool) -> None:
        diff = differing(self._model(pl_module))
        self.checks += 1
        params = [d for d in diff if d.startswith("param:")]
        if params or (strict and diff):
            raise RuntimeError(f"DDP ranks hold different model state {phase}: {', '.join(diff)}")
        self.buffers_differing_in_training.update(diff)
        self.extra_metrics = {"ddp/state_checks": float(self.checks),
                              "ddp/buffers_differing_in_training": float(len(self.buffers_differing_in_training))}

    def on_fit_end(self, trainer, pl_module) -> None:
        if not (_distributed() and self.check_every_n_steps and trainer.is_global_zero):
            return
        report = {"world_size": dist.get_world_size(), "checks": self.checks,
                  "buffers_differing_in_training": sorted(self.buffers_differing_in_training)}
        path = Path(trainer.default_root_dir) / "ddp_state.json"
        path.write_text(json.dumps(report, indent=2))
        log.info("DDP state check: %d checks, parameters identical on all ranks; buffers that differed between "
                 "a rank's forward and the next sync: %s", self.checks,
                 ", ".join(report["buffers_differing_in_training"]) or "none")
