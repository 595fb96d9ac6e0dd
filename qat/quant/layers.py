"""Quantized layers: torch's Conv2d and Linear with a weight quantizer and an input quantizer.

With identity quantizers they compute exactly what the torch layers compute (the identity returns
its input object, so not even a copy is made). ``QuantConvBn2d`` adds BatchNorm folding for the
affine uint8 recipe (Jacob et al. 2018, section 3.2).

Mixed precision (``trainer.precision=bf16-mixed``): the quantizers run with autocast disabled, on
float32 (:func:`float32_quant`), so scales, thresholds, observer ranges and codes are what float32
training computes; only the convolution / matrix product that follows runs in bfloat16.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn.functional as F
from torch import nn

from qat.quant.host_state import HostState


def float32_quant(quant: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``quant(x)`` in float32 with autocast disabled (a no-op wrapper outside autocast)."""
    dev = x.device.type
    if not torch.is_autocast_enabled(dev):
        return quant(x)
    with torch.autocast(dev, enabled=False):
        return quant(x.float())


_EXACT = contextvars.ContextVar("qat_exact_accumulation", default=False)


@contextlib.contextmanager
def exact_accumulation():
    """Within this context, a layer whose input is quantized sums its products in float64 and rounds
    the sum (plus bias) to float32 once, as the deployed integer accumulator does.

    Why: the export computes those sums exactly on integers. float32 sums round at every step, in an
    order that depends on the backend (memory format, threads, device), and an 8-bit network passes
    a one-step code change on to a growing share of later codes. A float32 MobileNetV2 evaluated
    contiguous and channels_last gave different top-1 classes on 0.7 % of CIFAR-10 test images
    (BENCHMARKS.md, issue 10); compared with that, this evaluation is the model's own arithmetic,
    reproducible on any backend. Export verification uses it; training never does (slower, and
    float64 is slow on most GPUs).
    """
    token = _EXACT.set(True)
    try:
        yield
    finally:
        _EXACT.reset(token)


def _exact_sum(op, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``op(x, w) + b`` summed in float64, rounded to float32 once."""
    y = op(x.double(), w.double())
    return (y if b is None else y + _channel(b.double(), y.dim())).to(x.dtype)


def _channel(v: torch.Tensor, dim: int) -> torch.Tensor:
    return v.reshape(1, -1, *([1] * (dim - 2)))


def _identity() -> nn.Module:
    from qat.quant.quantizers import Identity

    return Identity()


class QuantMixin:
    """Shared by the quantized layers: two quantizer submodules and a constructor from a float layer."""

    weight_quant: nn.Module
    input_quant: nn.Module

    def _init_quantizers(self, weight_quant: nn.Module | None, input_quant: nn.Module | None) -> None:
        self.weight_quant = weight_quant if weight_quant is not None else _identity()
        self.input_quant = input_quant if input_quant is not None else _identity()

    def quantized_weight(self) -> torch.Tensor:
        """The weight the forward pass uses (fake-quantized, in float)."""
        return float32_quant(self.weight_quant, self.weight)

    def input_quantized(self) -> bool:
        from qat.quant.quantizers import Identity

        return not isinstance(self.input_quant, Identity)

    def bias_after(self) -> bool:
        """Add the bias after the product, not inside torch's kernel, when the input is quantized.

        Products of quantized inputs and weights sum exactly (the deployed integer accumulator) and the
        export adds the bias to that sum once; torch's fused kernels may start from the bias and round
        at every step (a bias of 1e-9 then vanishes, and a following sign can flip)."""
        return self.bias is not None and self.input_quantized()

    def exact_sum(self) -> bool:
        """Inside :func:`exact_accumulation`, for a layer whose input is quantized."""
        return _EXACT.get() and self.input_quantized()


class QuantConv2d(QuantMixin, nn.Conv2d):
    def __init__(self, *args, weight_quant: nn.Module | None = None, input_quant: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quantizers(weight_quant, input_quant)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quant=None, input_quant=None) -> "QuantConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype,
                weight_quant=weight_quant, input_quant=input_quant)
        q.weight = conv.weight
        q.bias = conv.bias
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = float32_quant(self.input_quant, x), self.quantized_weight()
        if self.exact_sum():
            return _exact_sum(lambda x_, w_: self._conv_forward(x_, w_, None), x, w, self.bias)
        if self.bias_after():
            return self._conv_forward(x, w, None) + self.bias.reshape(1, -1, 1, 1)
        return self._conv_forward(x, w, self.bias)


class QuantLinear(QuantMixin, nn.Linear):
    def __init__(self, *args, weight_quant: nn.Module | None = None, input_quant: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quantizers(weight_quant, input_quant)

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quant=None, input_quant=None) -> "QuantLinear":
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                device=linear.weight.device, dtype=linear.weight.dtype,
                weight_quant=weight_quant, input_quant=input_quant)
        q.weight = linear.weight
        q.bias = linear.bias
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = float32_quant(self.input_quant, x), self.quantized_weight()
        if self.exact_sum():
            return _exact_sum(F.linear, x, w, self.bias)
        if self.bias_after():
            return F.linear(x, w) + self.bias
        return F.linear(x, w, self.bias)


class QuantConvBn2d(HostState, QuantConv2d):
    """Conv2d followed by BatchNorm2d, with the BN folded into the quantized weights.

    Folded weight w_f = w * gamma / sigma and bias b_f = beta - gamma * mu / sigma (Jacob et al.
    2018, section 3.2), so training sees the same quantization error as integer inference.

    Training, BN not frozen: the weights are folded with the *running* sigma, quantized, and the
    convolution output is divided back by gamma / sigma before a BatchNorm with batch statistics.
    This is the one-convolution form of the paper's correction (Krishnamoorthi 2018, "Quantizing deep
    convolutional networks for efficient inference", section 3.2.2; torch.ao's ConvBn2d does the
    same): the paper's figure C.8 runs a second float convolution to get the batch statistics first,
    which doubles the convolution cost.

    Eval, or BN frozen (``bn_frozen`` buffer, set late in training): running statistics, folded
    weights and bias, exactly the deployed computation.
    """

    def __init__(self, *args, bn: nn.BatchNorm2d | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.bn = bn if bn is not None else nn.BatchNorm2d(self.out_channels)
        self.register_host_buffer("bn_frozen", False, torch.bool)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quant=None, input_quant=None, bn: nn.BatchNorm2d | None = None):
        if bn is None or not isinstance(bn, nn.BatchNorm2d) or not bn.affine or not bn.track_running_stats:
            raise ValueError("QuantConvBn2d folds an affine BatchNorm2d that tracks running statistics")
        q = super().from_float(conv, weight_quant, input_quant)
        q.bn = bn
        return q

    def _fold_scale(self) -> torch.Tensor:
        return self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)

    def folded_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Float folded weight (before quantization) and bias, from the running statistics."""
        scale = self._fold_scale()
        w = self.weight * scale.reshape(-1, 1, 1, 1)
        bias = self.bias if self.bias is not None else torch.zeros_like(self.bn.running_mean)
        b = self.bn.bias + (bias - self.bn.running_mean) * scale
        return w, b

    def quantized_weight(self) -> torch.Tensor:
        return float32_quant(self.weight_quant, self.folded_weight_and_bias()[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = float32_quant(self.input_quant, x)
        if self.training and not self.host("bn_frozen"):
            # gamma / sigma is a constant for autograd: under the straight-through estimator its two
            # occurrences (fold, unfold) cancel, so gamma learns through the BatchNorm as in float
            # training, and the backward pass skips two full passes over the activations.
            scale = self._fold_scale().detach()
            w_q = float32_quant(self.weight_quant, self.weight * scale.reshape(-1, 1, 1, 1))
            y = self._conv_forward(x, w_q, None) * scale.reciprocal().reshape(1, -1, 1, 1)
            if self.bias is not None:
                y = y + self.bias.reshape(1, -1, 1, 1)
            return self.bn(y)
        w, b = self.folded_weight_and_bias()
        if self.exact_sum():
            return _exact_sum(lambda x_, w_: self._conv_forward(x_, w_, None), x, float32_quant(self.weight_quant, w), b)
        return self._conv_forward(x, float32_quant(self.weight_quant, w), b)
