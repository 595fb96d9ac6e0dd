"""BatchNorm + activation + sign as one integer threshold per channel (BNN inference).

A binary layer's accumulator ``a`` (an exact integer) goes through BatchNorm, a hard tanh (or ReLU)
and the next layer's sign. Each of these is monotone in ``a`` per channel, so the composite
``f_c(a) = sign(act(BN_c(a)))`` is a step function: ``+1`` from some ``T_c`` on (``gamma_c > 0``),
``+1`` up to ``T_c`` (``gamma_c < 0``), or constant (``gamma_c = 0``). With
``sigma_c = sqrt(var_c + eps)`` the real-valued threshold is ``tau_c = mu_c - beta_c sigma_c / gamma_c``
(the BNN paper's inference), and ``T_c = ceil(tau_c)`` in exact arithmetic.

The model evaluates BatchNorm in float32, whose rounding can move the step by one integer from
``ceil(tau_c)`` where ``tau_c`` is within rounding of an integer (a tie). To compute exactly what the
model computes, ``T_c`` is found by bisection on the model's own float32 BatchNorm (torch's kernel,
evaluated on a tensor of the value's real shape): the smallest ``a`` in ``[-K, K]`` with
``f_c(a) = +1`` (or ``-1`` when decreasing). The result equals the model's sign for every reachable
integer ``a``, ties included.

The same search runs over float32 values (ordered by their bit patterns) for a float accumulator,
e.g. BNN's first layer, which sees the real-valued image.
"""

from __future__ import annotations

import numpy as np
import torch

from qat.export.errors import ExportError
from qat.runtime.pointwise import pointwise

INT_ALWAYS, INT_NEVER = -(1 << 31), (1 << 31) - 1
_FMAX = float(np.finfo(np.float32).max)


def f32_to_key(f: np.ndarray) -> np.ndarray:
    """Order-preserving map float32 -> int64 (``-0.0`` and ``+0.0`` both map to 0)."""
    i = np.asarray(f, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(i >= 0, i, -(1 << 31) - i)


def key_to_f32(k: np.ndarray) -> np.ndarray:
    k = np.asarray(k, dtype=np.int64)
    return np.where(k >= 0, k, -(1 << 31) - k).astype(np.int32).view(np.float32)


def find_thresholds(chain: list[tuple[dict, dict]], shape: tuple[int, ...], domain: str,
                    bound: int = 0, who: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(T, direction)`` per channel for the pointwise ``chain`` ([(op, params)]) followed by sign.

    ``shape`` is the value's shape without the batch dimension (channels first); ``domain`` is
    ``int`` (accumulators in ``[-bound, bound]``) or ``float`` (any float32).
    """
    c = int(shape[0])
    spatial = tuple(int(s) for s in shape[1:])

    def positive(points: np.ndarray) -> np.ndarray:
        vals = torch.from_numpy(points.astype(np.float32) if domain == "int" else key_to_f32(points))
        x = vals.reshape((1, c) + (1,) * len(spatial)).expand((1, c) + spatial).contiguous()
        for op, params in chain:
            x = pointwise(op, params, x)
        pos = (x >= 0).reshape(c, -1)
        if not bool((pos.all(dim=1) | (~pos).all(dim=1)).all()):
            raise ExportError(f"{who}: BatchNorm gives different results for the same value at different "
                              "positions; cannot fold it into a threshold")
        return pos[:, 0].numpy()

    if domain == "int":
        lo_v, hi_v = -int(bound), int(bound)
    else:
        lo_v, hi_v = int(f32_to_key(np.float32(-_FMAX))), int(f32_to_key(np.float32(_FMAX)))
    lo = np.full(c, lo_v, dtype=np.int64)
    hi = np.full(c, hi_v, dtype=np.int64)
    f_lo, f_hi = positive(lo), positive(hi)
    up = ~f_lo & f_hi
    down = f_lo & ~f_hi
    const = f_lo == f_hi
    a, b = lo.copy(), hi.copy()
    a[const] = b[const] - 1
    while np.any(b - a > 1):  # invariant: g(a) false, g(b) true, g = f (up) or not f (down)
        mid = a + (b - a) // 2
        fm = positive(mid)
        g = np.where(up, fm, ~fm)
        b = np.where(g, mid, b)
        a = np.where(g, a, mid)
    direction = np.where(down, -1, 1).astype(np.int8)
    if domain == "int":
        t = np.where(const, np.where(f_lo, INT_ALWAYS, INT_NEVER), b).astype(np.int32)
    else:
        t = np.where(const, np.where(f_lo, -np.inf, np.inf), key_to_f32(b)).astype(np.float32)
    return t, direction


def analytic_thresholds(bn: torch.nn.Module) -> np.ndarray:
    """``tau_c = mu_c - beta_c sigma_c / gamma_c`` in float64 (for reference and tests)."""
    g = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(bn.running_mean).double()
    b = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(bn.running_mean).double()
    sigma = torch.sqrt(bn.running_var.double() + bn.eps)
    return (bn.running_mean.double() - b * sigma / g).numpy()
