"""TensorBoard diagnostics of what quantization does inside the network, every ``every_n_steps`` steps.

For every quantized layer ``L`` with latent weight W (the BatchNorm-folded weight for ``QuantConvBn2d``)
and weight quantizer Q (its deployed, state-free form: ``Q(W) = weight_quant.quantize(W).dequantize()``):

- ``latent_weights/L``: histogram of W;
- ``quant_error/L``: ||W - Q(W)||_2 / ||W||_2;
- ``saturation/L`` (recipes with a latent clip c, BNN): share of weights with |W| >= c, which the
  straight-through estimator no longer moves towards zero;
- ``flip_ratio/L`` (binary and ternary weights): share of quantized codes that changed since the
  previous logging step (Larq's FlipRatio, sampled every ``every_n_steps`` steps);
- ``sparsity/L`` and ``alpha/L`` (ternary weights alpha * {-1, 0, +1}): share of zero codes and the
  scale alpha (its mean when per channel);
- ``admm_residual/L`` and ``admm_rho/L`` (ADMM): ||W - G||_2 / ||W||_2 and the penalty weight rho. ADMM
  deploys G = alpha * Q (``finalize``: W <- G), so for ADMM layers Q(W) is G: the codes (flip ratio,
  sparsity) are sign(G), alpha is the projection's, and ``quant_error`` equals the residual;
- ``act_range_min/L`` and ``act_range_max/L`` (range observers on the layer input, uint8 QAT): the
  observed activation range [min, max].

At the end, the run's hyperparameters (recipe, optimizer, model, data, the Hydra overrides) are logged
to TensorBoard with the final metrics under ``hp/...``, so sweeps compare in the HPARAMS view.

The diagnostics run on global rank 0 only (the loggers live there), under ``torch.no_grad`` and without
touching any quantizer state or random generator, so a run with them trains exactly as one without.
``extra_metrics`` reports ``diagnostics/seconds``, the time they took, for the overhead budget.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn

from qat.quant.layers import QuantConvBn2d
from qat.quant.prepare import quantized_layers
from qat.quant.quantizers import Identity, SignQuant, _RangeObserved
from qat.quant.ternary import ADMMTernaryWeight

log = logging.getLogger(__name__)

_EPS = 1e-12


def latent_weight(layer: nn.Module) -> torch.Tensor:
    """The float weight the layer's weight quantizer sees."""
    if isinstance(layer, QuantConvBn2d):
        return layer.folded_weight_and_bias()[0]
    return layer.weight


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||a||."""
    return float((a - b).norm() / a.norm().clamp_min(_EPS))


def _deployed_codes(quant: nn.Module, w: torch.Tensor):
    """``quant.quantize(w)`` as deployed: eval mode (a "current" range observer uses w's own range,
    not the range stored at the last forward). ``quantize`` never changes state; the mode is restored."""
    was_training = quant.training
    quant.train(False)
    try:
        return quant.quantize(w)
    finally:
        quant.train(was_training)


class QuantDiagnostics(pl.Callback):
    """Logs the per-layer diagnostics of the module docstring every ``every_n_steps`` optimizer steps
    (and once before the first step, the baseline of the flip ratio), and the hyperparameters with the
    final metrics at the end.

    every_n_steps: logging interval in optimizer steps (0 disables the per-step diagnostics).
    histograms: log the latent-weight histograms (the costliest part).
    hparams: log the hyperparameters with the final metrics (TensorBoard HPARAMS view).
    """

    def __init__(self, every_n_steps: int = 100, histograms: bool = True, hparams: bool = True):
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 0:
            raise ValueError(f"diagnostics every_n_steps must be a step count >= 0, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.histograms = bool(histograms)
        self.hparams = bool(hparams)
        self._prev_codes: dict[str, torch.Tensor] = {}
        self._last_step: int | None = None
        self._fit_metrics: dict[str, float] = {}
        self.seconds = 0.0
        self.extra_metrics: dict[str, float] = {}

    # ---- per-step diagnostics ---------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # The baseline, after every on_train_start hook (ADMM initialises G there).
        if self._last_step is None:
            self._maybe_log(trainer, pl_module, force=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe_log(trainer, pl_module)

    def _maybe_log(self, trainer, pl_module, force: bool = False) -> None:
        if not self.every_n_steps or not trainer.is_global_zero or not trainer.loggers:
            return
        step = int(trainer.global_step)
        # global_step stays put across the batches of one gradient accumulation: log once per step.
        if step == self._last_step or not (force or step % self.every_n_steps == 0):
            return
        t0 = time.perf_counter()
        scalars, hists = self.collect(pl_module)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
            if hists and isinstance(logger, TensorBoardLogger):
                for tag, values in hists.items():
                    logger.experiment.add_histogram(tag, values, global_step=step)
        self._last_step = step
        self.seconds += time.perf_counter() - t0
        self.extra_metrics["diagnostics/seconds"] = self.seconds

    @torch.no_grad()
    def collect(self, pl_module: nn.Module) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """``(scalars, histograms)`` by tag for the model's quantized layers (see the module docstring).
        Updates the code snapshot that the next flip ratio is measured against."""
        model = getattr(pl_module, "model", pl_module)
        clip = getattr(getattr(pl_module, "recipe", None), "latent_clip", None)
        scalars: dict[str, float] = {}
        hists: dict[str, torch.Tensor] = {}
        for name, layer in quantized_layers(model):
            wq, iq = layer.weight_quant, layer.input_quant
            self._input_ranges(name, iq, scalars)
            if isinstance(wq, Identity):
                continue
            w = latent_weight(layer).detach()
            if self.histograms:
                hists[f"latent_weights/{name}"] = w.float().cpu()
            if isinstance(wq, ADMMTernaryWeight):
                # ADMM deploys G = alpha * Q (finalize: W <- G): its codes are sign(G), and the
                # quantization error is the ADMM residual. (Projecting W here would cost as much as an
                # ADMM update.)
                codes = torch.sign(wq.G).to(torch.int8)
                scalars[f"admm_residual/{name}"] = scalars[f"quant_error/{name}"] = _rel(w, wq.G)
                scalars[f"admm_rho/{name}"] = float(wq.rho)
                scalars[f"sparsity/{name}"] = float((codes == 0).float().mean())
                scalars[f"alpha/{name}"] = float(wq.alpha.float().mean())
            else:
                c = _deployed_codes(wq, w)
                codes = c.codes
                scalars[f"quant_error/{name}"] = _rel(w, c.dequantize().to(w.dtype))
                if c.kind == "ternary":
                    scalars[f"sparsity/{name}"] = float((codes == 0).float().mean())
                    scalars[f"alpha/{name}"] = float(c.scale.float().mean())
            if clip is not None and isinstance(wq, SignQuant):
                scalars[f"saturation/{name}"] = float((layer.weight.detach().abs() >= clip).float().mean())
            if getattr(wq, "bits", 32) <= 2:
                self._flip_ratio(name, codes, scalars)
        return scalars, hists

    def _flip_ratio(self, name: str, codes: torch.Tensor, scalars: dict) -> None:
        codes = codes.detach().to(torch.int8)
        prev = self._prev_codes.get(name)
        if prev is not None and prev.shape == codes.shape:
            scalars[f"flip_ratio/{name}"] = float((codes != prev).float().mean())
        self._prev_codes[name] = codes.clone()

    @staticmethod
    def _input_ranges(name: str, iq: nn.Module, scalars: dict) -> None:
        # Running observers only: a "current" observer has no state between forwards.
        if isinstance(iq, _RangeObserved) and iq.observer != "current" and iq.min_val.numel():
            scalars[f"act_range_min/{name}"] = float(iq.min_val.min())
            scalars[f"act_range_max/{name}"] = float(iq.max_val.max())

    # ---- hyperparameters with the final metrics ---------------------------------------------------
    def on_fit_end(self, trainer, pl_module) -> None:
        self._fit_metrics = _scalars(trainer.callback_metrics)
        if not _config(pl_module).get("test", True):
            self._log_hparams(trainer, pl_module, {})

    def on_test_end(self, trainer, pl_module) -> None:
        self._log_hparams(trainer, pl_module, _scalars(trainer.callback_metrics))

    def _log_hparams(self, trainer, pl_module, test_metrics: dict) -> None:
        if not self.hparams or not trainer.is_global_zero:
            return
        metrics = {f"hp/{k}": v for k, v in {**self._fit_metrics, **test_metrics}.items()
                   if k.startswith(("val/", "test/"))}
        if not metrics:
            return
        params = run_hparams(_config(pl_module), getattr(pl_module, "recipe", None))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(params, metrics=metrics)


def _config(pl_module) -> dict:
    return (getattr(pl_module, "meta", None) or {}).get("config", {}) or {}


def _scalars(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def _short(target: Any) -> str:
    return str(target).rsplit(".", 1)[-1] if target else ""


def _plain(v: Any) -> Any:
    return v if isinstance(v, (bool, int, float, str)) else str(v)


def run_hparams(config: dict, recipe=None) -> dict[str, Any]:
    """The hyperparameters a sweep compares: recipe settings, optimizer, scheduler, model, data
    (name and batch size), epochs, seed, and every Hydra override of the run (``override/KEY``), so
    whatever a sweep varies is there. Values are bool / int / float / str (TensorBoard's types)."""
    hp: dict[str, Any] = {}
    described = recipe.describe() if recipe is not None and hasattr(recipe, "describe") else {}
    hp["quant"] = described.get("name") or _short((config.get("quant") or {}).get("_target_"))
    for k, v in described.items():
        if k != "name":
            hp[f"quant/{k}"] = _plain(v)
    for group in ("optimizer", "scheduler", "model"):
        node = config.get(group) or {}
        hp[group] = _short(node.get("_target_"))
        for k, v in node.items():
            if not str(k).startswith("_"):
                hp[f"{group}/{k}"] = _plain(v)
    data = config.get("data") or {}
    hp["data"] = _short(data.get("_target_"))
    hp["data/batch_size"] = _plain(data.get("batch_size"))
    trainer = config.get("trainer") or {}
    for k in ("max_epochs", "devices", "strategy"):
        if k in trainer:
            hp[f"trainer/{k}"] = _plain(trainer[k])
    hp["seed"] = _plain(config.get("seed"))
    for override in _hydra_overrides():
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if not key.startswith(("hydra.", "hydra/")):
            hp[f"override/{key}"] = value
    return hp


def _hydra_overrides() -> list[str]:
    """The task overrides of the current Hydra run ([] outside one, e.g. in tests)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # no Hydra run: nothing to add
        return []
