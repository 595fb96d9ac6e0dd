"""Fixed-point folding of the float ends of an export (qat.export.c.fold)."""

import numpy as np
import torch

from qat.export.c import fold
from qat.runtime import quantize as Q
from qat.runtime.program import normalize

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def test_codes_table_is_the_runtime_quantizer():
    spec = {"kind": "affine", "bits": 8, "scale": 0.0173, "zero_point": 121, "qmin": 0, "qmax": 255}
    table = fold.input_codes_table(MEAN, STD, spec)
    images = torch.randint(0, 256, (4, 3, 9, 7), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    want = Q.quantize(normalize(images, MEAN, STD), spec).numpy()
    got = np.stack([table[c][images[:, c].numpy()] for c in range(3)], axis=1)
    assert np.array_equal(got, want)


def test_fixed_table_precision_and_range():
    table, frac = fold.input_fixed_table(MEAN, STD, 27)
    x = fold.normalized_levels(MEAN, STD).numpy().astype(np.float64)
    assert np.abs(table / 2.0 ** frac - x).max() <= 2.0 ** -(frac + 1)
    assert np.abs(table).max() * 27 < 2 ** 30 <= np.abs(table).max() * 27 * 4  # the most bits that fit


def test_fixed_thresholds_equal_the_real_comparison():
    """acc >= T_int (or <) is exactly y = scale acc 2^-F + bias >= T (or <), for every sign of scale."""
    rng = np.random.default_rng(0)
    c, frac = 64, 6
    t = rng.normal(0, 3, c).astype(np.float32)
    t[:3] = [np.inf, -np.inf, 0.5]
    d = rng.choice([-1, 1], c).astype(np.int8)
    scale = rng.normal(0, 1, c)
    scale[3:6] = [0.0, -0.25, 0.25]
    bias = rng.normal(0, 1, c)
    ti, di = fold.fixed_thresholds(t, d, scale, bias, frac)
    acc = np.arange(-2000, 2001)[:, None]
    y = scale * acc / 2.0 ** frac + bias
    want = (y >= t.astype(np.float64)) == (d > 0)
    got = (acc >= ti) == (di > 0)
    assert np.array_equal(got, want)


def test_score_constants():
    a = np.array([0.013, -0.5, 2e-5, 0.0])
    b = np.array([0.25, -3.0, 1.0, 7.5])
    m0, s, bias, frac = fold.score_constants(a, b, 1000)
    acc = np.arange(-1000, 1001)[:, None]
    prod = acc * m0.astype(np.int64)
    rnd = np.where(s > 0, np.left_shift(1, np.maximum(s.astype(np.int64) - 1, 0)), 0)
    scores = np.floor_divide(prod + rnd, 2 ** s.astype(np.int64)) + bias
    assert np.abs(scores / 2.0 ** frac - (a * acc + b)).max() <= 1.5 * 2.0 ** -frac
    assert np.abs(scores).max() < 2 ** 30
