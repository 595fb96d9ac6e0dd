"""Ternary recipes: ``twn`` (threshold ternary with a straight-through estimator, the baseline)
and ``admm_ternary`` (Leng et al. 2018, "Extremely Low Bit Neural Network: Squeeze the Last Bit Out
with ADMM").

ADMM, for every quantized layer: minimise f(W) subject to W in alpha * {-1, 0, +1}^d through the
augmented Lagrangian f(W) + (rho / 2) ||W - G + U||^2. W is trained by SGD on it (the forward pass
uses the float W); every ``update_every`` steps G <- Proj(W + U) (``ternary_projection``: alternate
Q = clamp(round((W + U) / alpha), -1, 1) and alpha = <W + U, Q> / <Q, Q>) and U <- U + W - G; rho
grows by ``rho_growth`` at each update up to ``rho_max`` (by default, geometrically from ``rho`` to
``rho_max`` over the run, so that W ends close to G whatever the budget). ``finalize`` replaces W by G, so the model
is tested and exported in its exact ternary form. G, U, rho and the update count are buffers of
``ADMMTernaryWeight``, so checkpoints carry them.
"""

from __future__ import annotations

import torch
from torch import nn

from qat.quant.functional import ternary_projection
from qat.quant.quantizers import Codes, Identity, TernaryQuant
from qat.quant.recipe import QuantRecipe, check_positive, check_started, check_total_steps


class ADMMTernaryWeight(nn.Module):
    """The weight 'quantizer' of an ADMM layer: identity in the forward pass (ADMM trains the float
    W against the penalty), plus the ADMM state. ``quantize`` projects to ternary codes."""

    bits = 2
    kind = "ternary"

    def __init__(self, shape: torch.Size, per_channel: bool = False, rho: float = 1e-4):
        super().__init__()
        self.per_channel = per_channel
        self.register_buffer("G", torch.zeros(shape))
        self.register_buffer("U", torch.zeros(shape))
        self.register_buffer("rho", torch.tensor(float(rho)))
        self.register_buffer("alpha", torch.zeros(shape[0] if per_channel else ()))
        self.register_buffer("updates", torch.tensor(0, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("finalized", torch.tensor(False))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def _codes(self, q: torch.Tensor, alpha: torch.Tensor) -> Codes:
        return Codes(codes=q, scale=alpha, zero_point=torch.zeros_like(alpha, dtype=torch.int32),
                     bits=2, axis=0 if self.per_channel else None, kind="ternary")

    @torch.no_grad()
    def project(self, v: torch.Tensor) -> torch.Tensor:
        """Proj(v) onto alpha * {-1, 0, 1}; remembers alpha so that the codes of the result are exact."""
        alpha, q = ternary_projection(v.detach(), per_channel=self.per_channel)
        self.alpha.copy_(alpha)
        return self._codes(q, alpha).dequantize().to(v.dtype)

    def quantize(self, w: torch.Tensor) -> Codes:
        """Ternary codes of ``w``. Once finalized, W = alpha * Q exactly, with the alpha kept from the
        projection (recomputing <W, Q> / <Q, Q> could differ in the last bit)."""
        w = w.detach()
        if bool(self.finalized):
            return self._codes(torch.sign(w).to(torch.int8), self.alpha.clone())
        alpha, q = ternary_projection(w, per_channel=self.per_channel)
        return self._codes(q, alpha)

    def extra_repr(self) -> str:
        return f"per_channel={self.per_channel}, rho={float(self.rho):.3g}, updates={int(self.updates)}"


class TWN(QuantRecipe):
    """Ternary Weight Networks (Li & Liu 2016): threshold 0.7 mean|W|, alpha = mean of the kept |W|,
    straight-through gradient. First and last layers stay full precision by default."""

    name = "twn"
    default_first = "fp32"
    default_last = "fp32"

    def weight_quantizer(self, layer):
        return TernaryQuant()

    def input_quantizer(self, layer):
        return Identity()


class ADMMTernary(QuantRecipe):
    name = "admm_ternary"
    default_first = "fp32"
    default_last = "fp32"

    def __init__(self, rho: float = 1e-3, rho_growth: float | None = None, rho_max: float = 1.0,
                 update_every: int = 50, per_channel: bool = False, **policies):
        super().__init__(**policies)
        self.rho = check_positive(rho, "admm_ternary rho")
        self.rho_max = check_positive(rho_max, "admm_ternary rho_max")
        if self.rho_max < self.rho:
            raise ValueError(f"admm_ternary rho_max ({rho_max}) must be >= rho ({rho})")
        if rho_growth is not None and not rho_growth >= 1:
            raise ValueError(f"admm_ternary rho_growth must be >= 1 (rho never shrinks) or null, got {rho_growth}")
        # None: grow geometrically from rho to rho_max over the whole run (set in on_train_start).
        self.rho_growth = None if rho_growth is None else float(rho_growth)
        self._growth = self.rho_growth or 1.0
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"admm_ternary update_every must be a positive step count, got {update_every!r}")
        self.update_every = update_every
        self.per_channel = bool(per_channel)

    def weight_quantizer(self, layer):
        return ADMMTernaryWeight(layer.weight.shape, per_channel=self.per_channel, rho=self.rho)

    def input_quantizer(self, layer):
        return Identity()

    def _admm_layers(self, model):
        return [(n, l) for n, l in self.layers(model) if isinstance(l.weight_quant, ADMMTernaryWeight)]

    @torch.no_grad()
    def on_train_start(self, model, total_steps=None, step: int = 0) -> None:
        total = check_total_steps(self, total_steps, None if self.rho_growth is not None else
                                  "rho_growth=null grows rho from rho to rho_max over the whole run")
        self._started = True
        if self.rho_growth is None:
            n_updates = max(1, total // self.update_every)
            self._growth = (self.rho_max / self.rho) ** (1.0 / n_updates)
        for _, layer in self._admm_layers(model):
            q = layer.weight_quant
            if not bool(q.initialized):  # fresh run; a resumed run keeps its G and U
                q.G.copy_(q.project(layer.weight))
                q.U.zero_()
                q.initialized.fill_(True)

    def penalty(self, model):
        total = None
        for _, layer in self._admm_layers(model):
            q = layer.weight_quant
            term = 0.5 * q.rho * (layer.weight - q.G + q.U).pow(2).sum()
            total = term if total is None else total + term
        return total

    @torch.no_grad()
    def after_optimizer_step(self, model, step: int) -> None:
        check_started(self)
        if step % self.update_every:
            return
        for _, layer in self._admm_layers(model):
            q = layer.weight_quant
            w = layer.weight
            q.G.copy_(q.project(w + q.U))
            q.U.add_(w - q.G)
            q.updates.add_(1)
            q.rho.copy_(torch.clamp(q.rho * self._growth, max=self.rho_max))

    @torch.no_grad()
    def finalize(self, model) -> None:
        for _, layer in self._admm_layers(model):
            q = layer.weight_quant
            if bool(q.finalized):
                continue
            if bool(q.initialized):
                layer.weight.copy_(q.G)
            else:  # never trained: project the weights directly
                layer.weight.copy_(q.project(layer.weight))
            q.finalized.fill_(True)

    def describe(self) -> dict:
        return {**super().describe(), "rho": self.rho, "rho_growth": self.rho_growth, "rho_max": self.rho_max,
                "update_every": self.update_every, "per_channel": self.per_channel}
