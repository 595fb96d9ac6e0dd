"""Fixed-point requantization multipliers (Jacob et al. 2018, section 2.2).

A real multiplier ``M`` is stored as an int32 ``M0`` and a shift ``n`` with ``M ~= M0 * 2^-n`` and
``2^30 <= |M0| < 2^31`` (``M0 = 0`` for ``M = 0``), so ``M0`` carries 31 significant bits. Applying it
to an integer ``v`` is one 64-bit product and a rounding right shift::

    requant(v) = (v * M0 + 2^(n-1)) >> n        # arithmetic shift: round half up; n = 0: v * M0

The product fits in int64 when ``|v| < 2^31`` (``|M0| < 2^31``). The relative error of ``M0 * 2^-n``
is at most ``2^-31``.
"""

from __future__ import annotations

import math

import numpy as np

MAX_SHIFT = 62


def quantize_multiplier(m: float) -> tuple[int, int]:
    """``(M0, n)`` with ``M0 * 2^-n`` the closest 31-bit fixed-point value to ``m``.

    Multipliers below ``2^-32`` use ``n = 62`` and lose leading precision (they round an accumulator
    of magnitude < 2^30 to 0 anyway); ``|m| >= 2^31`` is rejected.
    """
    m = float(m)
    if not math.isfinite(m):
        raise ValueError(f"requantization multiplier must be finite, got {m}")
    if m == 0.0:
        return 0, 0
    frac, exp = math.frexp(abs(m))  # |m| = frac * 2^exp, frac in [0.5, 1)
    m0 = int(round(frac * (1 << 31)))
    n = 31 - exp
    if m0 == 1 << 31:  # frac rounded up to 1.0
        m0 //= 2
        n -= 1
    if n < 0:
        raise ValueError(f"requantization multiplier {m} is too large (>= 2^31); the scales are "
                         "inconsistent")
    if n > MAX_SHIFT:
        m0 = int(round(abs(m) * 2.0 ** MAX_SHIFT))
        n = MAX_SHIFT
    return (m0 if m > 0 else -m0), n


def multiplier_value(m0: int, n: int) -> float:
    return float(m0) * 2.0 ** (-int(n))


def rounding_shift_np(prod: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``(prod + 2^(n-1)) >> n`` for int64 arrays (``n`` broadcast; ``n = 0`` leaves ``prod``)."""
    n = np.asarray(n, dtype=np.int64)
    rnd = np.where(n > 0, np.left_shift(np.int64(1), np.maximum(n - 1, 0)), 0)
    return np.right_shift(prod + rnd, n)
