"""Fixed-point multipliers: 31-bit precision, and the rounding shift."""

from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from qat.runtime.fixedpoint import quantize_multiplier, rounding_shift_np


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=2.0 ** -30, max_value=2.0 ** 20), st.booleans())
def test_multiplier_precision(m, negative):
    m = -m if negative else m
    m0, n = quantize_multiplier(m)
    assert 2 ** 30 <= abs(m0) < 2 ** 31 and 0 <= n <= 62
    assert abs(Fraction(m0, 2 ** n) - Fraction(m)) <= abs(Fraction(m)) * Fraction(1, 2 ** 31)


def test_zero_multiplier():
    assert quantize_multiplier(0.0) == (0, 0)


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2 ** 30), 2 ** 30), st.integers(-(2 ** 31) + 1, 2 ** 31 - 1), st.integers(0, 62))
def test_rounding_shift_rounds_half_up(v, m0, n):
    got = int(rounding_shift_np(np.array([v * m0], np.int64), np.array([n]))[0])
    exact = Fraction(v * m0, 2 ** n)
    assert got == int((exact + Fraction(1, 2)).__floor__())
