"""Binary recipes: ``bnn`` (binary weights and activations) and ``bwn`` (binary weights)."""

from __future__ import annotations

import torch
from torch import nn

from qat.quant import binary_blocks as blocks
from qat.quant.layers import QuantLinear
from qat.quant.quantizers import BinaryWeightQuant, Identity, SignQuant
from qat.quant.recipe import QuantRecipe, check_positive


def _binary_input(layer: nn.Module) -> bool:
    return isinstance(layer.input_quant, SignQuant)


class BNN(QuantRecipe):
    """Binarized Neural Networks (Hubara, Courbariaux et al. 2016).

    Weights and activations are sign()-binarized (sign(0) = +1; optionally stochastic) with a
    straight-through estimator that cancels the gradient where |x| > 1. Latent float weights are
    kept and clipped to [-latent_clip, latent_clip] after every optimizer step. Every ReLU becomes a
    hard tanh, as in the paper, so the sign sees BatchNorm's output on both sides of zero.

    Layer defaults, as in the paper: every layer has binary weights; the first layer sees the
    real-valued image (``first: weights_only``); the classifier sees binary activations and is
    followed by a BatchNorm (``logit_bn``).

    Options beyond the 2016 recipe, all off by default (the blocks and their math are in
    ``qat.quant.binary_blocks`` and ``qat.quant.functional.approx_sign``), each exported exactly:

    * ``scale``: a learned positive per-channel scale of every binary layer's output (XNOR-Net++,
      Bulat & Tzimiropoulos 2019; Real-to-Binary, Martinez et al. 2020);
    * ``learnable_threshold``: a learnable per-channel shift before every sign, ``sign(x + b_c)``
      (ReActNet's RSign, Liu et al. 2020);
    * ``rprelu``: RPReLU instead of the hard tanh (ReActNet);
    * ``bireal_shortcut``: a real-valued shortcut around every binary convolution, ``BN(conv(x)) + x``
      (Bi-Real Net, Liu et al. 2018);
    * ``sign_grad: approx``: Bi-Real's piecewise-polynomial sign gradient ``2 - 2|x|`` on |x| < 1
      for the activations (weights keep the straight-through estimator).
    """

    name = "bnn"
    default_first = "weights_only"
    default_last = "quant"

    def __init__(self, stochastic: bool = False, latent_clip: float = 1.0, logit_bn: bool = True,
                 scale: bool = False, learnable_threshold: bool = False, rprelu: bool = False,
                 bireal_shortcut: bool = False, sign_grad: str = "ste", **policies):
        super().__init__(**policies)
        self.stochastic = bool(stochastic)
        self.latent_clip = check_positive(latent_clip, "bnn latent_clip")
        self.logit_bn = bool(logit_bn)
        self.scale = bool(scale)
        self.learnable_threshold = bool(learnable_threshold)
        self.rprelu = bool(rprelu)
        self.bireal_shortcut = bool(bireal_shortcut)
        if sign_grad not in SignQuant.GRADIENTS:
            raise ValueError(f"bnn sign_grad must be 'ste' (straight-through, 1[|x| <= 1]) or 'approx' "
                             f"(Bi-Real's ApproxSign, 2 - 2|x|), got {sign_grad!r}")
        if stochastic and sign_grad != "ste":
            raise ValueError("bnn: stochastic=true has the straight-through gradient only; set sign_grad=ste")
        self.sign_grad = sign_grad

    def prepare(self, model: nn.Module) -> nn.Module:
        """Swap layers; then, as in the paper, a BatchNorm follows a binarized classifier: its outputs
        are integers up to the fan-in (64 for ResNet-20), far too large for a softmax. Then the
        options' blocks (``qat.quant.binary_blocks``): Bi-Real shortcuts, RPReLU for the hard tanh,
        learnable thresholds before each sign, learned scales after each binary layer."""
        model = super().prepare(model)
        if self.logit_bn and self.last != "fp32":
            name, last = self.layers(model)[-1]
            if isinstance(last, QuantLinear) and isinstance(last.weight_quant, SignQuant):
                head = nn.Sequential(last, nn.BatchNorm1d(last.out_features))
                if not name:  # the model is the classifier itself
                    model = head
                else:
                    model.set_submodule(name, head)
        if self.bireal_shortcut:
            blocks.add_bireal_shortcuts(model, [n for n, m in self.layers(model) if _binary_input(m)])
        if self.rprelu:
            blocks.replace_activations(model, (nn.Hardtanh,), blocks.RPReLU)
        for name, layer in self.layers(model):
            shift = self.learnable_threshold and _binary_input(layer)
            scale = self.scale and isinstance(layer.weight_quant, SignQuant)
            if shift or scale:
                blocks.wrap_layer(model, name, shift, scale)
        return model

    @staticmethod
    def activation() -> nn.Module:
        return nn.Hardtanh()

    def weight_quantizer(self, layer):
        return SignQuant()

    def input_quantizer(self, layer):
        return SignQuant(stochastic=self.stochastic, grad=self.sign_grad)

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        for _, layer in self.layers(model):
            if isinstance(layer.weight_quant, SignQuant):
                layer.weight.clamp_(-self.latent_clip, self.latent_clip)
        if self.scale:
            for m in model.modules():
                if isinstance(m, blocks.ChannelScale):
                    m.clamp_positive()

    def on_train_start(self, model, total_steps=None, step: int = 0) -> None:
        super().on_train_start(model, total_steps, step)
        self.after_optimizer_step(model, step)

    def describe(self) -> dict:
        return {**super().describe(), "stochastic": self.stochastic, "latent_clip": self.latent_clip,
                "logit_bn": self.logit_bn, "scale": self.scale, "learnable_threshold": self.learnable_threshold,
                "rprelu": self.rprelu, "bireal_shortcut": self.bireal_shortcut, "sign_grad": self.sign_grad}


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
