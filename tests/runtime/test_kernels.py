"""Integer kernels against exact references."""

from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qat.runtime import kernels
from qat.runtime.fixedpoint import quantize_multiplier
from qat.runtime.ops import Requantize
from qat.runtime.packing import matrix_shape, pack_bits


@st.composite
def conv_case(draw):
    c = draw(st.integers(1, 70))
    o = draw(st.integers(1, 12))
    k = draw(st.sampled_from([1, 2, 3, 5]))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, 2))
    d = draw(st.integers(1, 2))
    h = draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 9))
    w = draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 9))
    return c, o, k, s, p, d, h, w, draw(st.integers(0, 2 ** 31))


def _pm1(shape, g):
    return torch.where(torch.rand(shape, generator=g) < 0.5, -1, 1).to(torch.int8)


@settings(max_examples=60, deadline=None)
@given(conv_case())
def test_xnor_popcount_conv_is_exact(case):
    c, o, k, s, p, d, h, w, seed = case
    g = torch.Generator().manual_seed(seed)
    x, wt = _pm1((2, c, h, w), g), _pm1((o, c, k, k), g)
    ref = F.conv2d(x.double(), wt.double(), stride=s, padding=p, dilation=d).to(torch.int32)
    buf = pack_bits(wt.permute(0, 2, 3, 1).numpy(), 1, "sign")
    shape = (o, k, k, c)
    conv = kernels.BinaryConv2d(kernels.words64_from_file(buf, o, matrix_shape(shape)[2]), c, k, s, p, d)
    assert torch.equal(conv(x), ref)


@settings(max_examples=40, deadline=None)
@given(conv_case(), st.integers(1, 4), st.booleans())
def test_grouped_and_depthwise_convs_are_exact(case, gmul, depthwise):
    """Binary (XNOR-popcount) and integer grouped convolutions against torch's float convolution of
    the same small integers (exact in float64)."""
    c, o, k, s, p, d, h, w, seed = case
    groups = min(c, 4) if not depthwise else c
    c = groups * max(1, c // groups)
    o = groups * (gmul if depthwise else max(1, o // groups))
    g = torch.Generator().manual_seed(seed)
    x, wt = _pm1((2, c, h, w), g), _pm1((o, c // groups, k, k), g)
    ref = F.conv2d(x.double(), wt.double(), stride=s, padding=p, dilation=d, groups=groups).to(torch.int32)
    shape = (o, k, k, c // groups)
    buf = pack_bits(wt.permute(0, 2, 3, 1).numpy(), 1, "sign")
    conv = kernels.BinaryConv2d(kernels.words64_from_file(buf, o, matrix_shape(shape)[2]), c, k, s, p, d,
                                groups=groups)
    assert torch.equal(conv(x), ref)
    # integer codes with zero points: x in [0, 255] (Z_x = 7), w in [-127, 127] (Z_w per channel)
    xq = torch.randint(0, 256, (2, c, h, w), generator=g)
    wq = torch.randint(-127, 128, (o, c // groups, k, k), generator=g)
    zw = torch.randint(-3, 4, (o,), generator=g)
    ref = F.conv2d((xq - 7).double(), (wq - zw.view(-1, 1, 1, 1)).double(), stride=s, padding=p, dilation=d,
                   groups=groups).to(torch.int32)
    mm = kernels.GroupedIntMatmul(wq.permute(0, 2, 3, 1).reshape(o, -1).numpy(), zw.numpy(), 7, groups, c)
    rows, ho, wo = kernels.im2col(mm.prepare(xq), k, s, p, d, pad_value=mm.pad_value())
    out = mm(rows).reshape(2, ho, wo, o).permute(0, 3, 1, 2)
    assert torch.equal(out, ref)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.integers(1, 20), st.integers(0, 2 ** 31))
def test_xnor_popcount_linear_is_exact(k, o, seed):
    g = torch.Generator().manual_seed(seed)
    x, wt = _pm1((3, k), g), _pm1((o, k), g)
    buf = pack_bits(wt.numpy(), 1, "sign")
    lin = kernels.BinaryMatmul(kernels.words64_from_file(buf, o, matrix_shape((o, k))[2]), k)
    assert torch.equal(lin.linear(x), (x.long() @ wt.long().t()).int())


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 255), st.sampled_from([(0, 255), (-127, 127), (-1, 1), (-128, 127), (0, 1023)]),
       st.integers(1, 5), st.integers(0, 2 ** 31))
def test_integer_conv_with_zero_points_is_exact(zx, wrange, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (2, 5, 6, 7), generator=g)
    lo, hi = wrange
    w = torch.randint(lo, hi + 1, (4, 5, k, k), generator=g)
    zw = torch.randint(lo, hi + 1, (4,), generator=g)
    mm = kernels.IntMatmul(w.permute(0, 2, 3, 1).reshape(4, -1).numpy(), zw.numpy(), (0, 255), zx)
    rows, ho, wo = kernels.im2col(mm.prepare(x.to(torch.uint8)), k, 1, k // 2, 1, pad_value=mm.pad_value())
    got = mm(rows).reshape(2, ho, wo, 4).permute(0, 3, 1, 2)
    ref = F.conv2d((x - zx).double(), (w - zw[:, None, None, None]).double(), padding=k // 2)
    assert torch.equal(got.double(), ref)
    assert mm.int8 == (hi - lo <= 255)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1e-9, 4.0), min_size=1, max_size=4), st.integers(0, 2 ** 31), st.integers(-5, 250),
       st.integers(0, 10))
def test_requantize_matches_rational_arithmetic(mults, seed, zp, f):
    c = len(mults)
    g = torch.Generator().manual_seed(seed)
    acc = torch.randint(-(2 ** 19), 2 ** 19, (3, c, 4), generator=g, dtype=torch.int32)
    bias = torch.randint(-(2 ** 26), 2 ** 26, (c,), generator=g, dtype=torch.int32)
    m0, n = zip(*(quantize_multiplier(m) for m in mults))
    tensors = {"m": np.array(m0, np.int32), "n": np.array(n, np.int8), "b": bias.numpy(),
               "f": np.full(c, f, np.int8)}
    spec = {"kind": "affine", "bits": 8, "scale": 1.0, "zero_point": zp, "qmin": 0, "qmax": 255}
    op = Requantize({"op": "requantize", "inputs": ["a"], "outputs": ["q"], "multiplier": "m", "shift": "n",
                     "bias": "b", "bias_shift": "f", "zero_point": zp, "clamp": [0, 255], "quant": spec},
                    tensors, {})
    got = op.forward(acc)
    for idx in [(0, 0, 0), (1, c - 1, 2), (2, c // 2, 3)]:
        ch = idx[1]
        exact = Fraction(int(acc[idx]) * 2 ** f + int(bias[ch])) * Fraction(m0[ch], 2 ** n[ch])
        want = min(255, max(0, zp + int((exact + Fraction(1, 2)).__floor__())))
        assert int(got[idx]) == want


@settings(max_examples=40, deadline=None)
@given(conv_case(), st.sampled_from([1, 2, 3]))
def test_ternary_popcount_conv_is_exact(case, groups):
    """Ternary weights against signs from the two bit planes, zero padding and groups included."""
    c, o, k, s, p, d, h, w, seed = case
    c, o = groups * max(1, c // groups), groups * max(1, o // groups)
    g = torch.Generator().manual_seed(seed)
    x, wt = _pm1((2, c, h, w), g), torch.randint(-1, 2, (o, c // groups, k, k), generator=g)
    ref = F.conv2d(x.double(), wt.double(), stride=s, padding=p, dilation=d, groups=groups).to(torch.int32)
    conv = kernels.TernaryConv2d(wt.permute(0, 2, 3, 1).reshape(o, -1).numpy(), c, k, s, p, d, groups=groups)
    assert torch.equal(conv(x), ref)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 200), st.integers(1, 20), st.integers(0, 2 ** 31))
def test_ternary_popcount_linear_is_exact(k, o, seed):
    g = torch.Generator().manual_seed(seed)
    x, wt = _pm1((3, k), g), torch.randint(-1, 2, (o, k), generator=g)
    assert torch.equal(kernels.TernaryMatmul(wt.numpy()).linear(x), (x.long() @ wt.t()).int())
