"""Ternary recipes: ``twn`` (threshold ternary with a straight-through estimator, the baseline)
and ``admm_ternary`` (Leng et al. 2018, "Extremely Low Bit Neural Network: Squeeze the Last Bit Out
with ADMM").

ADMM, for every quantized layer: minimise f(W) subject to W in alpha * {-1, 0, +1}^d through the
augmented Lagrangian f(W) + (rho / 2) ||W - G + U||^2. W is trained by SGD on it (the forward pass
uses the float W); every ``update_every`` steps G <- Proj(W + U) (``ternary_projection``: alternate
Q = clamp(round((W + U) / alpha), -1, 1) and alpha = <W + U, Q> / <Q, Q>) and U <- U + W - G; rho
grows geometrically from ``rho`` to ``rho_max`` over the ADMM phase (or by ``rho_growth`` per update),
so that the penalty drives ||W - G|| towards 0 whatever the budget, and the scaled dual U is divided
by the same factor (the dual variable rho * U is unchanged by the growth).

The last ``finetune`` fraction of training is a projected phase: the forward pass uses Proj(W) (the
ternary weights that will be deployed) with a straight-through gradient dL/dW = dL/dProj(W), and the
penalty is off. This is what makes the deployed model as good as the trained one: the ADMM phase
alone ends with a residual ||W - G|| that is small but not zero, and the network was trained on W,
not on G (with 10 epochs of ResNet-20 on handwritten digits the projection cost 60 points).

The deployed form (``deployed`` for validation, ``finalize`` for test and export) replaces W by G in
the ADMM phase, and by Proj(W) in the projected phase. G, U, rho, the update count and the phase are
buffers of ``ADMMTernaryWeight``, so checkpoints carry them.

Both recipes take ``activations``: what the quantized layers' inputs are (``TernaryActivations``).
``float`` (default) keeps them real-valued; ``sign`` binarizes them as ``bnn`` does (ternary weights,
binary activations: TBN, Wan et al. 2018, "TBN: Convolutional Neural Network with Ternary Inputs and
Binary Weights"); ``uint8`` quantizes them as ``qat_uint8`` does (per-tensor affine, EMA ranges). The
export then computes those layers on integers (``ternary_popcount`` / ``int``, docs/export-format.md).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from qat.quant.affine import QATUint8, check_when, steps_at
from qat.quant.binary import BNN
from qat.quant.functional import ternary_projection, ternary_projection_quantize
from qat.quant.host_state import HostState
from qat.quant.quantizers import Codes, Identity, SignQuant, TernaryQuant
from qat.quant.recipe import QuantRecipe, check_positive, check_started, check_total_steps

ACTIVATIONS = ("float", "sign", "uint8")


class TernaryActivations:
    """The ``activations`` option of the ternary recipes: the input quantizer of their quantized layers.

    * ``float``: none (the export computes ``signed_sum``: float sums of +-x);
    * ``sign``: ``bnn``'s ``SignQuant`` (sign(0) = +1, straight-through gradient with cancellation), and,
      as in ``bnn``, every activation module that may feed a sign becomes a hard tanh (a ReLU before a
      sign would make every input +1); the export computes ``ternary_popcount``;
    * ``uint8``: ``qat_uint8``'s per-tensor affine quantizer with an EMA min/max observer (decay 0.99);
      the export computes ``int`` (int8 codes -1/0/+1 against uint8 codes) with fixed-point
      requantization.
    """

    def __init__(self, activations: str = "float", **policies):
        if activations not in ACTIVATIONS:
            raise ValueError(f"{self.name} activations must be one of {', '.join(ACTIVATIONS)} (float: real-valued "
                             f"inputs; sign: binary inputs as in bnn; uint8: 8-bit affine inputs as in qat_uint8), "
                             f"got {activations!r}")
        self.activations = activations
        super().__init__(**policies)

    @property
    def activation(self):
        """prepare's replacement of sign-feeding activations (bnn's hard tanh), for sign inputs only."""
        return BNN.activation if self.activations == "sign" else None

    def input_quantizer(self, layer):
        if self.activations == "sign":
            return SignQuant()
        if self.activations == "uint8":
            return QATUint8().input_quantizer(layer)
        return Identity()

    def describe(self) -> dict:
        return {**super().describe(), "activations": self.activations}


class ADMMTernaryWeight(HostState, nn.Module):
    """The weight 'quantizer' of an ADMM layer, plus the ADMM state. Forward: identity in the ADMM
    phase (ADMM trains the float W against the penalty); Proj(W) with a straight-through gradient in
    the projected phase (``projecting``); identity once W is ternary (``finalized``).
    ``quantize`` gives the ternary codes."""

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
        self.register_host_buffer("initialized", False, torch.bool)
        self.register_host_buffer("finalized", False, torch.bool)
        self.register_host_buffer("projecting", False, torch.bool)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.host("projecting") and not self.host("finalized"):
            return ternary_projection_quantize(w, self.per_channel)
        return w

    def _codes(self, q: torch.Tensor, alpha: torch.Tensor) -> Codes:
        return Codes(codes=q, scale=alpha, zero_point=torch.zeros_like(alpha, dtype=torch.int32),
                     bits=2, axis=0 if self.per_channel else None, kind="ternary")

    @torch.no_grad()
    def projection(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, Proj(v)) onto alpha * {-1, 0, 1}, changing no state."""
        alpha, q = ternary_projection(v.detach(), per_channel=self.per_channel)
        return alpha, self._codes(q, alpha).dequantize().to(v.dtype)

    @torch.no_grad()
    def project(self, v: torch.Tensor) -> torch.Tensor:
        """Proj(v); remembers alpha so that the codes of the result are exact."""
        alpha, g = self.projection(v)
        self.alpha.copy_(alpha)
        return g

    @torch.no_grad()
    def deployed_weight(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, the weight that is deployed now): G in the ADMM phase, Proj(W) in the projected
        phase or before ADMM started."""
        if self.host("initialized") and not self.host("projecting"):
            return self.alpha.clone(), self.G.clone()
        return self.projection(w)

    def quantize(self, w: torch.Tensor) -> Codes:
        """Ternary codes of ``w``. Once finalized, W = alpha * Q exactly, with the alpha kept from the
        projection (recomputing <W, Q> / <Q, Q> could differ in the last bit)."""
        w = w.detach()
        if self.host("finalized"):
            return self._codes(torch.sign(w).to(torch.int8), self.alpha.clone())
        alpha, q = ternary_projection(w, per_channel=self.per_channel)
        return self._codes(q, alpha)

    def extra_repr(self) -> str:
        return (f"per_channel={self.per_channel}, rho={float(self.rho):.3g}, updates={int(self.updates)}, "
                f"projecting={bool(self.host('projecting'))}")


class TWN(TernaryActivations, QuantRecipe):
    """Ternary Weight Networks (Li & Liu 2016): threshold 0.7 mean|W|, alpha = mean of the kept |W|,
    straight-through gradient. First and last layers stay full precision by default. ``activations``:
    see ``TernaryActivations``."""

    name = "twn"
    default_first = "fp32"
    default_last = "fp32"

    def weight_quantizer(self, layer):
        return TernaryQuant()


class ADMMTernary(TernaryActivations, QuantRecipe):
    """ADMM ternary weights (Leng et al. 2018), with a final projected phase; see the module docstring.

    Defaults need no tuning for a new budget: rho grows geometrically from ``rho`` to ``rho_max`` over
    the ADMM phase, G and U are updated about 100 times in it (``update_every: null``; a step count
    fixes it), and the last ``finetune`` = 50 % of the steps train Proj(W) directly (defaults measured
    on handwritten digits: BENCHMARKS.md).
    """

    name = "admm_ternary"
    deploy_differs = True
    default_first = "fp32"
    default_last = "fp32"
    updates_per_run = 100  # G/U updates over the ADMM phase when update_every is null

    def __init__(self, rho: float = 1e-3, rho_growth: float | None = None, rho_max: float = 0.1,
                 update_every: int | None = None, finetune: float | int | None = 0.5, per_channel: bool = False,
                 activations: str = "float", **policies):
        super().__init__(activations=activations, **policies)
        self.rho = check_positive(rho, "admm_ternary rho")
        self.rho_max = check_positive(rho_max, "admm_ternary rho_max")
        if self.rho_max < self.rho:
            raise ValueError(f"admm_ternary rho_max ({rho_max}) must be >= rho ({rho})")
        if rho_growth is not None and not rho_growth >= 1:
            raise ValueError(f"admm_ternary rho_growth must be >= 1 (rho never shrinks) or null, got {rho_growth}")
        # None: grow geometrically from rho to rho_max over the ADMM phase (set in on_train_start).
        self.rho_growth = None if rho_growth is None else float(rho_growth)
        self._growth = self.rho_growth or 1.0
        if update_every is not None and (isinstance(update_every, bool) or not isinstance(update_every, int)
                                         or update_every < 1):
            raise ValueError(f"admm_ternary update_every must be a positive step count or null (about "
                             f"{self.updates_per_run} updates over the ADMM phase), got {update_every!r}")
        self.update_every = update_every
        self._every = update_every or 1
        if isinstance(finetune, float) and finetune == 1.0:
            raise ValueError("admm_ternary finetune must leave an ADMM phase: a fraction below 1, a step count, "
                             "or null (no projected phase)")
        self.finetune = check_when(finetune, "admm_ternary finetune") if finetune != 0 else None
        self._finetune_at: int | None = None
        self.per_channel = bool(per_channel)
        self._stats: dict[str, float] = {}

    def weight_quantizer(self, layer):
        return ADMMTernaryWeight(layer.weight.shape, per_channel=self.per_channel, rho=self.rho)

    def _admm_layers(self, model):
        return [(n, l) for n, l in self.layers(model) if isinstance(l.weight_quant, ADMMTernaryWeight)]

    @torch.no_grad()
    def on_train_start(self, model, total_steps=None, step: int = 0) -> None:
        needs = self.finetune is not None or self.update_every is None or self.rho_growth is None
        total = check_total_steps(self, total_steps, "the ADMM phase, projected phase and rho schedule are "
                                  "shares of the whole run" if needs else None) or 1
        self._started = True
        finetune_steps = steps_at(self.finetune, total) or 0
        self._finetune_at = max(0, total - finetune_steps) if finetune_steps else None
        admm_steps = max(1, total - finetune_steps)
        self._every = self.update_every or max(1, admm_steps // self.updates_per_run)
        if self.rho_growth is None:
            # Updates happen at multiples of _every, before the step that starts the projected phase.
            n_updates = max(1, (admm_steps - (1 if finetune_steps else 0)) // self._every)
            self._growth = (self.rho_max / self.rho) ** (1.0 / n_updates)
        for _, layer in self._admm_layers(model):
            q = layer.weight_quant
            if not q.host("initialized"):  # fresh run; a resumed run keeps its G and U
                q.G.copy_(q.project(layer.weight))
                q.U.zero_()
                q.set_host("initialized", True)
        self._enter_projected_phase(model, int(step))

    def _projecting(self, model) -> bool:
        layers = self._admm_layers(model)
        return bool(layers) and bool(layers[0][1].weight_quant.host("projecting"))

    def penalty(self, model):
        if self._projecting(model):
            return None
        total = None
        for _, layer in self._admm_layers(model):
            q = layer.weight_quant
            term = 0.5 * q.rho * (layer.weight - q.G + q.U).pow(2).sum()
            total = term if total is None else total + term
        return total

    @torch.no_grad()
    def _enter_projected_phase(self, model, step: int) -> None:
        if self._finetune_at is None or step < self._finetune_at:
            return
        for _, layer in self._admm_layers(model):
            layer.weight_quant.set_host("projecting", True)

    @torch.no_grad()
    def after_optimizer_step(self, model, step: int) -> None:
        check_started(self)
        self._enter_projected_phase(model, step)
        if self._projecting(model) or step % self._every:
            return
        residual = norm = 0.0
        for _, layer in self._admm_layers(model):
            q = layer.weight_quant
            w = layer.weight
            q.G.copy_(q.project(w + q.U))
            q.U.add_(w - q.G)
            q.updates.add_(1)
            rho = torch.clamp(q.rho * self._growth, max=self.rho_max)
            # U is the scaled dual y / rho: when rho grows, U shrinks so that y is unchanged (Boyd et al.
            # 2011, "Distributed Optimization ... ADMM", section 3.4.1). Unscaled, y grows with rho and
            # pulls W away from G: with rho grown 1000x the float model fell to chance on digits.
            q.U.mul_(q.rho / rho)
            q.rho.copy_(rho)
            residual += float((w - q.G).pow(2).sum())
            norm += float(w.pow(2).sum())
        # ||W - G|| / ||W|| over all ADMM layers: the distance the final projection will move W.
        self._stats = {"admm/residual": (residual / max(norm, 1e-30)) ** 0.5}

    def train_stats(self) -> dict[str, float]:
        return dict(self._stats)

    @contextmanager
    def deployed(self, model):
        """W replaced by the weight deployed now (G, or Proj(W) in the projected phase), and restored
        bit for bit on exit."""
        saved = []
        try:
            with torch.no_grad():
                for _, layer in self._admm_layers(model):
                    q = layer.weight_quant
                    if q.host("finalized"):
                        continue
                    saved.append((layer, layer.weight.detach().clone(), q.alpha.clone()))
                    alpha, w = q.deployed_weight(layer.weight)
                    layer.weight.copy_(w)
                    q.alpha.copy_(alpha)
                    q.set_host("finalized", True)  # the forward pass uses W as it is: already ternary
            yield model
        finally:
            with torch.no_grad():
                for layer, w, alpha in saved:
                    layer.weight.copy_(w)
                    layer.weight_quant.alpha.copy_(alpha)
                    layer.weight_quant.set_host("finalized", False)

    @torch.no_grad()
    def finalize(self, model) -> None:
        for _, layer in self._admm_layers(model):
            q = layer.weight_quant
            if q.host("finalized"):
                continue
            alpha, w = q.deployed_weight(layer.weight)
            layer.weight.copy_(w)
            q.alpha.copy_(alpha)
            q.set_host("finalized", True)

    def describe(self) -> dict:
        return {**super().describe(), "rho": self.rho, "rho_growth": self.rho_growth, "rho_max": self.rho_max,
                "update_every": self.update_every, "finetune": self.finetune, "per_channel": self.per_channel}
