"""Fixed-point folding for the standalone C program: the float parts of an export at its two ends.

* **Input normalisation** (``x = pixel * float32(1 / (255 std_c)) - float32(mean_c / std_c)``) is a
  function of the channel and the pixel value only, so each channel becomes a 256-entry table:
  - an 8-bit first layer quantizes ``x``: the table holds its uint8 codes, computed by the runtime's
    own ``normalize`` and ``quantize`` (exact: the C program reads the same codes);
  - BNN's first layer convolves ``x`` itself (float32 in the model): the table holds
    ``X = round(x 2^F)`` (int32, ``F`` as large as the sums allow: 23 for a 3x3x3 kernel), the
    convolution sums ``w X`` exactly in int32, and the layer's float threshold ``T`` becomes the
    integer ``ceil(T 2^F)`` on that sum. The one approximation is the rounding of ``x`` to ``2^-F``,
    the size of the model's own float32 rounding: a sign can differ only where the model's sum is
    within ``K 2^-(F+1)`` (plus its own rounding error) of ``T``.
* **Logits** (``dequantize`` and a BatchNorm, per class ``a acc + b`` in float) become
  ``scores = round(acc M0 2^-s) + B`` in units of ``2^-F_s`` (``qat/runtime/native/qat_scores.h``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qat.runtime import quantize as Q
from qat.runtime.fixedpoint import quantize_multiplier
from qat.runtime.program import normalize

ACC_LIMIT = 1 << 30   # |int32 sums| stay below this (the export's own accumulator bound)
MAX_INPUT_FRAC_BITS = 30
MAX_SCORE_FRAC_BITS = 24
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def normalized_levels(mean, std) -> torch.Tensor:
    """float32 ``[C, 256]``: the network input of every pixel value of every channel, as the runtime
    computes it."""
    c = len(mean)
    pixels = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(1, 1, 16, 16).expand(1, c, 16, 16)
    return normalize(pixels.contiguous(), mean, std).reshape(c, 256)


def input_codes_table(mean, std, spec: dict) -> np.ndarray:
    """uint8 ``[C, 256]``: the codes the runtime's ``quantize`` gives each pixel value."""
    lo, hi = Q.code_bounds(spec)
    if lo < 0 or hi > 255:
        raise ValueError(f"input codes in [{lo}, {hi}] are not uint8")
    return Q.quantize(normalized_levels(mean, std), spec).numpy().astype(np.uint8)


def input_fixed_table(mean, std, weight_abs_sum: int) -> tuple[np.ndarray, int]:
    """``(int32 [C, 256] table X = round(x 2^F), F)``, ``F`` the most fractional bits with
    ``max|X| * weight_abs_sum < 2^30`` (the layer's int32 sums cannot overflow)."""
    x = normalized_levels(mean, std).numpy().astype(np.float64)
    peak = float(np.abs(x).max()) * max(int(weight_abs_sum), 1)
    frac = min(MAX_INPUT_FRAC_BITS, math.floor(math.log2(ACC_LIMIT / peak)) - 1) if peak > 0 else 0
    if frac < 8:
        raise ValueError(f"the first layer's sums reach {peak:.3g}: too wide for a fixed-point int32 sum")
    return np.rint(np.ldexp(x, frac)).astype(np.int32), frac


def fixed_thresholds(t: np.ndarray, direction: np.ndarray, scale: np.ndarray, bias: np.ndarray,
                     frac: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer thresholds on ``acc = sum w X`` for a float threshold on ``y = scale acc 2^-F + bias``.

    ``y >= T`` is ``acc >= ceil(r)`` for ``scale > 0`` and ``acc < floor(r) + 1`` (direction flipped)
    for ``scale < 0``, with ``r = (T - bias) / scale 2^F``; ``scale = 0`` is a constant channel."""
    t = t.astype(np.float64)
    out_t = np.empty(t.shape, np.int64)
    out_d = direction.astype(np.int8).copy()
    for c in range(t.size):
        s, b = float(scale[c]), float(bias[c])
        if s == 0.0:  # y = b: the sign is the same for every input
            plus = (b >= t[c]) == (direction[c] > 0)
            out_t[c], out_d[c] = INT32_MIN, 1 if plus else -1
            continue
        r = (t[c] - b) / s * 2.0 ** frac
        if math.isinf(r) or abs(r) > 2.0 ** 40:
            r = math.copysign(2.0 ** 40, r)
        if s > 0:
            out_t[c] = math.ceil(r)
        else:
            out_t[c], out_d[c] = math.floor(r) + 1, -direction[c]
    return np.clip(out_t, INT32_MIN, INT32_MAX).astype(np.int32), out_d


def score_constants(a: np.ndarray, b: np.ndarray, acc_bound: int):
    """``(m0 int32, s int8, bias int32, F)`` for ``logit = a acc + b`` with ``|acc| <= acc_bound``:
    ``F`` the most fractional bits (at most 24) keeping every score below 2^30."""
    peak = float(np.max(np.abs(a)) * max(acc_bound, 1) + np.max(np.abs(b)))
    frac = MAX_SCORE_FRAC_BITS if peak == 0 else min(MAX_SCORE_FRAC_BITS, math.floor(math.log2(ACC_LIMIT / peak)) - 1)
    if frac < 0:
        raise ValueError(f"logits reach {peak:.3g}: too large for int32 scores")
    m0, s = zip(*(quantize_multiplier(v * 2.0 ** frac) for v in a))
    return (np.array(m0, np.int32), np.array(s, np.int8), np.rint(np.ldexp(b, frac)).astype(np.int32), frac)
