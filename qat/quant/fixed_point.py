"""The fixed-point family (after aaron-xichen/pytorch-playground ``utee/quant.py``, with its defects
fixed, see ``qat.quant.functional``) and min-max ``int`` (Vanhoucke et al. 2011).

Weights and layer inputs are quantized to ``bits`` (inputs to ``act_bits``, default ``bits``), with a
straight-through estimator so that the networks train; the scale factor ``sf`` comes from the data
by the overflow-rate rule: recomputed at every step for weights (they move), fixed after the first
training batch for layer inputs (stored in a buffer, so checkpoints keep it).
"""

from __future__ import annotations

from qat.quant.quantizers import LinearQuant, LogQuant, MinMaxQuant, TanhQuant
from qat.quant.recipe import QuantRecipe, check_bits


class _FixedPoint(QuantRecipe):
    def __init__(self, bits: int = 8, act_bits: int | None = None, overflow_rate: float = 0.0, **policies):
        super().__init__(**policies)
        self.bits = check_bits(bits, what=f"{self.name} bits")
        self.act_bits = check_bits(act_bits if act_bits is not None else bits, what=f"{self.name} act_bits")
        if not isinstance(overflow_rate, (int, float)) or not 0 <= overflow_rate < 1:
            raise ValueError(f"{self.name} overflow_rate must be in [0, 1), got {overflow_rate!r}")
        self.overflow_rate = float(overflow_rate)

    def make(self, bits: int, weights: bool):
        raise NotImplementedError

    def weight_quantizer(self, layer):
        return self.make(self.bits, weights=True)

    def input_quantizer(self, layer):
        return self.make(self.act_bits, weights=False)

    def describe(self) -> dict:
        return {**super().describe(), "bits": self.bits, "act_bits": self.act_bits,
                "overflow_rate": self.overflow_rate}


def _calibrate(weights: bool) -> str:
    # Weights move every step: recalibrate sf each time; inputs: once, on the first training batch.
    return "always" if weights else "once"


class LinearFixedPoint(_FixedPoint):
    """Linear fixed point: q = clamp(floor(x / 2^-sf + 0.5), -2^(bits-1), 2^(bits-1) - 1) * 2^-sf."""

    name = "linear"

    def make(self, bits, weights):
        return LinearQuant(bits, overflow_rate=self.overflow_rate, calibrate=_calibrate(weights))


class LogFixedPoint(_FixedPoint):
    """Logarithmic: sign(x) * exp(linear_quantize(log|x|)); ``bits`` counts the sign bit."""

    name = "log"

    def make(self, bits, weights):
        return LogQuant(bits, overflow_rate=self.overflow_rate, calibrate=_calibrate(weights))


class TanhFixedPoint(_FixedPoint):
    """Tanh: arctanh of the uniformly quantized tanh(x); no scale factor to calibrate."""

    name = "tanh"

    def make(self, bits, weights):
        return TanhQuant(bits)


class MinMaxInt(_FixedPoint):
    """Min-max linear (Vanhoucke et al. 2011): q = round((x - Vmin) / (Vmax - Vmin) * (2^bits - 1)),
    all 2^bits levels; weights use their own range, inputs a running (EMA) range."""

    name = "int"

    def make(self, bits, weights):
        return MinMaxQuant(bits, observer="current" if weights else "ema")
