"""Binary recipes: ``bnn`` (binary weights and activations) and ``bwn`` (binary weights)."""

from __future__ import annotations

import torch
from torch import nn

from qat.quant.layers import QuantLinear
from qat.quant.quantizers import BinaryWeightQuant, Identity, SignQuant
from qat.quant.recipe import QuantRecipe, check_positive


class BNN(QuantRecipe):
    """Binarized Neural Networks (Hubara, Courbariaux et al. 2016).

    Weights and activations are sign()-binarized (sign(0) = +1; optionally stochastic) with a
    straight-through estimator that cancels the gradient where |x| > 1. Latent float weights are
    kept and clipped to [-latent_clip, latent_clip] after every optimizer step. Every ReLU becomes a
    hard tanh, as in the paper, so the sign sees BatchNorm's output on both sides of zero.

    Layer defaults, as in the paper: every layer has binary weights; the first layer sees the
    real-valued image (``first: weights_only``); the classifier sees binary activations and is
    followed by a BatchNorm (``logit_bn``).
    """

    name = "bnn"
    default_first = "weights_only"
    default_last = "quant"

    def __init__(self, stochastic: bool = False, latent_clip: float = 1.0, logit_bn: bool = True, **policies):
        super().__init__(**policies)
        self.stochastic = bool(stochastic)
        self.latent_clip = check_positive(latent_clip, "bnn latent_clip")
        self.logit_bn = bool(logit_bn)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Swap layers; then, as in the paper, a BatchNorm follows a binarized classifier: its outputs
        are integers up to the fan-in (64 for ResNet-20), far too large for a softmax."""
        model = super().prepare(model)
        if self.logit_bn and self.last != "fp32":
            name, last = self.layers(model)[-1]
            if isinstance(last, QuantLinear) and isinstance(last.weight_quant, SignQuant):
                head = nn.Sequential(last, nn.BatchNorm1d(last.out_features))
                if not name:  # the model is the classifier itself
                    return head
                model.set_submodule(name, head)
        return model

    @staticmethod
    def activation() -> nn.Module:
        return nn.Hardtanh()

    def weight_quantizer(self, layer):
        return SignQuant()

    def input_quantizer(self, layer):
        return SignQuant(stochastic=self.stochastic)

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        for _, layer in self.layers(model):
            if isinstance(layer.weight_quant, SignQuant):
                layer.weight.clamp_(-self.latent_clip, self.latent_clip)

    def on_train_start(self, model, total_steps=None, step: int = 0) -> None:
        super().on_train_start(model, total_steps, step)
        self.after_optimizer_step(model, step)

    def describe(self) -> dict:
        return {**super().describe(), "stochastic": self.stochastic, "latent_clip": self.latent_clip,
                "logit_bn": self.logit_bn}


class BWN(QuantRecipe):
    """Binary-Weight-Networks (Rastegari et al. 2016, XNOR-Net): W_b = alpha * sign(W) with alpha =
    mean|W| per output channel, full-precision activations, straight-through gradient.

    As in the paper, the first and last layers stay in full precision by default.
    """

    name = "bwn"
    default_first = "fp32"
    default_last = "fp32"

    def weight_quantizer(self, layer):
        return BinaryWeightQuant()

    def input_quantizer(self, layer):
        return Identity()
