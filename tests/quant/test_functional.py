"""Quantizer math against formulas written independently here (numpy / plain torch)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qat.quant import functional as QF

FAST = settings(max_examples=40, deadline=None)

f32 = st.floats(-100, 100, width=32, allow_nan=False, allow_infinity=False)


def vec(elements=f32, min_size=1, max_size=64):
    return arrays(np.float32, st.integers(min_size, max_size), elements=elements)


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def grad_of(fn, x, g=None):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    y.backward(torch.ones_like(y) if g is None else g)
    return x.grad


# --------------------------------------------------------------------------- sign
def test_sign0_zero_is_plus_one():
    x = torch.tensor([-0.0, 0.0, -1e-30, 1e-30, -3.0, 2.0])
    assert QF.sign0(x).tolist() == [1.0, 1.0, -1.0, 1.0, -1.0, 1.0]


def test_sign_ste_values_and_cancellation_mask():
    x = torch.tensor([-2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 1.0001, 3.0])
    assert QF.sign_ste(x).tolist() == [-1, -1, -1, 1, 1, 1, 1, 1, 1]
    g = torch.arange(1.0, 10.0)
    assert grad_of(QF.sign_ste, x, g).tolist() == [0, 2, 3, 4, 5, 6, 7, 0, 0]


def test_stochastic_sign_probability_and_gradient():
    gen = torch.Generator().manual_seed(0)
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 2.0]).repeat(20000, 1)
    q = QF.stochastic_sign_ste(x, generator=gen)
    assert set(q.unique().tolist()) <= {-1.0, 1.0}
    p_plus = (q == 1).float().mean(0)
    expect = torch.clamp((x[0] + 1) / 2, 0, 1)
    assert torch.allclose(p_plus, expect, atol=0.02)
    assert p_plus[0] == 0 and p_plus[-1] == 1
    g = grad_of(lambda v: QF.stochastic_sign_ste(v, generator=gen), x[:1])
    assert g.tolist() == [[0, 1, 1, 1, 1, 0]]


@FAST
@given(vec())
def test_sign_idempotent(a):
    q = QF.sign_ste(t(a))
    assert torch.equal(QF.sign_ste(q), q)


# --------------------------------------------------------------------------- linear
def np_linear(a, sf, bits):
    delta = np.float32(2.0 ** -sf)
    bound = 2 ** (bits - 1)
    return np.clip(np.floor(a / delta + np.float32(0.5)), -bound, bound - 1) * delta


@FAST
@given(vec(), st.integers(2, 12), st.integers(-3, 10))
def test_linear_quantize_matches_formula_exactly(a, bits, sf):
    q = QF.linear_quantize(t(a), sf, bits)
    assert np.array_equal(q.numpy(), np_linear(a, sf, bits).astype(np.float32))
    # sf as a device tensor gives identical values
    assert torch.equal(QF.linear_quantize(t(a), torch.tensor(sf), bits), q)
    # idempotent, within range, at most 2^bits levels
    assert torch.equal(QF.linear_quantize(q, sf, bits), q)
    delta = 2.0 ** -sf
    assert q.min() >= -(2 ** (bits - 1)) * delta and q.max() <= (2 ** (bits - 1) - 1) * delta
    assert q.unique().numel() <= 2 ** bits


def test_linear_quantize_one_bit_is_sign_not_sign_minus_one():
    x = torch.tensor([-2.0, 0.0, 0.3])
    assert QF.linear_quantize(x, 3, 1).tolist() == [-1.0, 1.0, 1.0]


def test_linear_quantize_ste_identity_gradient():
    x = torch.linspace(-50, 50, 101)
    g = torch.randn(101)
    assert torch.equal(grad_of(lambda v: QF.linear_quantize(v, 4, 4), x, g), g)


def test_linear_codes_roundtrip():
    x = torch.randn(3, 4, 5) * 3
    c = QF.linear_quantize_codes(x, 5, 8)
    assert c.kind == "linear" and c.codes.dtype == torch.int8 and c.scale.item() == 2 ** -5
    assert torch.equal(c.dequantize(), QF.linear_quantize(x, 5, 8))


# --------------------------------------------------------------------------- log
def np_log(a, sf, bits):
    a64 = a.astype(np.float64)
    delta = 2.0 ** -sf
    b = 2 ** (bits - 2)
    e = np.clip(np.floor(np.log(np.abs(a64) + 1e-20) / delta + 0.5), -b, b - 1)
    return np.where(a64 >= 0, 1.0, -1.0) * np.exp(e * delta)


@FAST
@given(vec(st.floats(-50, 50, width=32).filter(lambda v: v == 0 or abs(v) > 1e-6)),
       st.integers(3, 8), st.integers(0, 4))
def test_log_linear_quantize_matches_formula(a, bits, sf):
    q = QF.log_linear_quantize(t(a), sf, bits)
    np.testing.assert_allclose(q.numpy(), np_log(a, sf, bits), rtol=2e-6)
    c = QF.log_linear_quantize_codes(t(a), sf, bits)
    assert torch.equal(c.dequantize(), q)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    assert int(c.codes.min()) >= lo and int(c.codes.max()) <= hi


def test_log_linear_zero_and_one_bit():
    x = torch.tensor([0.0, -0.0, -4.0, 4.0])
    q = QF.log_linear_quantize(x, 2, 5)
    assert (q[:2] > 0).all()  # no zero level; sign(0) = +1
    q1 = QF.log_linear_quantize(x, 2, 1)
    assert isinstance(q1, torch.Tensor) and q1.tolist() == [1.0, 1.0, -1.0, 1.0]
    assert torch.equal(grad_of(lambda v: QF.log_linear_quantize(v, 2, 5), x), torch.ones(4))


def test_log_codes_need_three_bits():
    with pytest.raises(ValueError, match="bits"):
        QF.log_linear_quantize_codes(torch.ones(3), 0, 2)


# --------------------------------------------------------------------------- tanh
@FAST
@given(vec(st.floats(-5, 5, width=32)), st.integers(2, 8))
def test_tanh_quantize_matches_formula_where_finite(a, bits):
    n = 2 ** bits - 1
    th = torch.tanh(t(a)).numpy()  # the squashing itself is torch's; the rest is numpy
    k = np.floor((th + np.float32(1)) / np.float32(2) * np.float32(n) + np.float32(0.5))
    v = 2 * k.astype(np.float64) / n - 1
    q = QF.tanh_quantize(t(a), bits).numpy()
    inner = (k > 0) & (k < n)
    np.testing.assert_allclose(q[inner], np.arctanh(v[inner]), rtol=1e-5, atol=1e-6)
    lim = np.arctanh(1 - 1 / (2 * n))
    np.testing.assert_allclose(q[k == n], lim, rtol=1e-5)
    np.testing.assert_allclose(q[k == 0], -lim, rtol=1e-5)
    assert torch.equal(QF.tanh_quantize_codes(t(a), bits).dequantize(), torch.from_numpy(q))


def test_tanh_quantize_finite_at_extremes_and_idempotent():
    x = torch.tensor([-float("inf"), -1e30, -50.0, 0.0, 50.0, 1e30, float("inf")])
    for bits in (2, 4, 8, 16):
        q = QF.tanh_quantize(x, bits)
        assert torch.isfinite(q).all()
        assert q[0] < 0 < q[-1] and q[0] == -q[-1]
        assert torch.equal(QF.tanh_quantize(q, bits), q)
    assert QF.tanh_quantize(torch.tensor([-0.0, -2.0]), 1).tolist() == [1.0, -1.0]
    assert torch.equal(grad_of(lambda v: QF.tanh_quantize(v, 3), x[2:5]), torch.ones(3))


# --------------------------------------------------------------------------- overflow_sf
def test_overflow_sf_known_values():
    x = torch.tensor([0.1, -3.0, 2.5, 0.5])
    assert QF.overflow_sf(x, 8) == 8 - 1 - 2          # v = 3, ceil(log2 3) = 2
    assert QF.overflow_sf(x, 8, 0.25) == 8 - 1 - 2    # v = 2.5
    assert QF.overflow_sf(x, 8, 0.5) == 8 - 1 + 1     # v = 0.5, ceil(log2) = -1
    assert QF.overflow_sf(torch.tensor([4.0, 1.0]), 4) == 4 - 1 - 2   # exact power of two
    just_above = torch.nextafter(torch.tensor(4.0), torch.tensor(5.0))
    assert QF.overflow_sf(just_above.reshape(1), 4) == 4 - 1 - 3
    assert QF.overflow_sf(torch.zeros(5), 6) == 5     # v == 0 guard
    assert isinstance(QF.overflow_sf(x, 8), int)


@FAST
@given(vec(st.floats(-1e4, 1e4, width=32)), st.integers(1, 16),
       st.floats(0, 0.99))
def test_overflow_sf_matches_sorted_rule(a, bits, rate):
    s = np.sort(np.abs(a.astype(np.float64)))[::-1]
    v = s[int(rate * len(s))]
    expect = bits - 1 - (math.ceil(math.log2(v)) if v > 0 else 0)
    assert QF.overflow_sf(t(a), bits, rate) == expect


def test_overflow_sf_rejects_bad_input():
    with pytest.raises(ValueError, match="overflow_rate"):
        QF.overflow_sf(torch.ones(3), 8, 1.0)
    with pytest.raises(ValueError, match="inf"):
        QF.overflow_sf(torch.tensor([1.0, float("inf")]), 8)


# --------------------------------------------------------------------------- minmax
@FAST
@given(vec(min_size=2), st.integers(1, 8))
def test_minmax_quantize_matches_formula(a, bits):
    a64 = a.astype(np.float64)
    lo, hi = a64.min(), a64.max()
    n = 2 ** bits - 1
    q = QF.minmax_quantize(t(a), bits).numpy()
    if hi == lo:
        assert np.array_equal(q, a)
        return
    ref = np.floor((a64 - lo) / (hi - lo) * n + 0.5) / n * (hi - lo) + lo
    tol = 1e-5 * (hi - lo) + 1e-5 * np.abs(a64).max()
    # boundary (x.5) cases may round the other way in float32
    frac = ((a64 - lo) / (hi - lo) * n) % 1
    ok = np.abs(frac - 0.5) > 1e-3
    np.testing.assert_allclose(q[ok], ref[ok], atol=tol)
    assert len(np.unique(q)) <= 2 ** bits
    c = QF.minmax_quantize_codes(t(a), bits)
    assert torch.equal(c.dequantize(), torch.from_numpy(q))
    assert int(c.codes.min()) == 0 and int(c.codes.max()) == n


@FAST
@given(vec(), st.integers(2, 8), st.floats(-50, 0), st.floats(0.5, 50))
def test_minmax_fixed_range_idempotent_and_clipped(a, bits, vmin, width):
    vmax = vmin + width
    q = QF.minmax_quantize(t(a), bits, vmin, vmax)
    assert torch.equal(QF.minmax_quantize(q, bits, vmin, vmax), q)
    eps = 1e-5 * (abs(vmin) + abs(vmax))
    assert q.min() >= vmin - eps and q.max() <= vmax + eps


def test_minmax_one_bit_constant_and_gradient():
    x = torch.tensor([-1.0, 0.9, 1.1, 3.0])  # midpoint 1.0
    assert QF.minmax_quantize(x, 1).tolist() == [-1.0, -1.0, 3.0, 3.0]
    c = torch.full((4,), 2.5)
    assert torch.equal(QF.minmax_quantize(c, 4), c)
    assert torch.equal(grad_of(lambda v: QF.minmax_quantize(v, 3, -0.5, 0.5), x), torch.ones(4))
    with pytest.raises(ValueError, match="vmin"):
        QF.minmax_quantize(x, 3, 1.0, -1.0)


# --------------------------------------------------------------------------- binary weight
def test_binary_weight_values_per_channel():
    w = torch.randn(4, 3, 3, 3)
    w[0, 0, 0, 0] = 0.0
    wn = w.numpy()
    alpha = np.abs(wn).reshape(4, -1).mean(1).reshape(4, 1, 1, 1)
    expect = alpha * np.where(wn >= 0, 1.0, -1.0)
    q = QF.binary_weight(w)
    np.testing.assert_allclose(q.numpy(), expect, rtol=1e-6)
    assert q[0, 0, 0, 0] > 0
    c = QF.binary_weight_codes(w)
    assert c.axis == 0 and c.scale.shape == (4,) and torch.equal(c.dequantize(), q)


def test_binary_weight_gradient_is_exact_chain_rule():
    torch.manual_seed(1)
    w = torch.randn(3, 2, 3, 3) * 0.8
    g = torch.randn_like(w)

    def surrogate(v):  # alpha(v) * sign(v) with sign's STE = hardtanh'
        alpha = v.abs().mean(dim=(1, 2, 3), keepdim=True)
        ht = torch.nn.functional.hardtanh(v)
        return alpha * (QF.sign0(v) + ht - ht.detach())

    assert torch.allclose(grad_of(QF.binary_weight, w, g), grad_of(surrogate, w, g), atol=1e-6)


def test_xnor_activation_scale_shape():
    x = torch.randn(2, 3, 8, 8)
    k = QF.xnor_activation_scale(x, 3, 1, 1)
    assert k.shape == (2, 1, 8, 8)
    assert torch.isclose(k[0, 0, 4, 4], x[0, :, 3:6, 3:6].abs().mean())


# --------------------------------------------------------------------------- ternary
def np_twn(w):
    a = np.abs(w)
    delta = 0.7 * a.mean()
    keep = a > delta
    alpha = a[keep].mean() if keep.any() else 0.0
    return alpha, np.sign(w) * keep


def test_ternary_threshold_matches_twn():
    w = torch.randn(5, 4, 3, 3)
    alpha, q = QF.ternary_threshold(w)
    ea, eq = np_twn(w.numpy())
    assert q.dtype == torch.int8 and np.array_equal(q.numpy(), eq)
    assert math.isclose(alpha.item(), ea, rel_tol=1e-6)
    ap, qp = QF.ternary_threshold(w, per_channel=True)
    assert ap.shape == (5,)
    for c in range(5):
        ea, eq = np_twn(w[c].numpy())
        assert np.array_equal(qp[c].numpy(), eq) and math.isclose(ap[c].item(), ea, rel_tol=1e-6)
    y = QF.twn_quantize(w)
    assert torch.equal(y, alpha * q.float())
    assert torch.equal(grad_of(QF.twn_quantize, w), torch.ones_like(w))


def test_ternary_all_zero_guard():
    for fn in (QF.ternary_threshold, QF.ternary_projection):
        alpha, q = fn(torch.zeros(3, 4))
        assert alpha.item() == 0 and not q.any()
    v = torch.randn(3, 4)
    v[1] = 0
    alpha, q = QF.ternary_projection(v, per_channel=True)
    assert alpha[1] == 0 and not q[1].any() and torch.isfinite(alpha).all()


def err(v, alpha, q, per_channel=False):
    a = alpha.reshape(-1, *([1] * (v.dim() - 1))) if per_channel else alpha
    return ((v - a * q.float()) ** 2).sum().item()


@FAST
@given(arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 16)),
              elements=st.floats(-10, 10, width=32)), st.booleans())
def test_ternary_projection_properties(a, per_channel):
    v = t(a)
    alpha, q = QF.ternary_projection(v, per_channel=per_channel)
    assert q.dtype == torch.int8 and set(q.unique().tolist()) <= {-1, 0, 1}
    a_b = alpha.reshape(-1, 1) if per_channel else alpha
    values = a_b * q.float()
    assert (values.abs() == a_b.expand_as(values).abs() * q.abs()).all()  # in {-a, 0, a}
    # alpha is a fixed point of the alternation
    safe = torch.where(a_b > 0, a_b, torch.ones_like(a_b))
    q2 = torch.round(v / safe).clamp(-1, 1) * (a_b > 0)
    dims = 1 if per_channel else (0, 1)
    alpha2 = (v * q2).sum(dims) / (q2 * q2).sum(dims).clamp_min(1)
    assert torch.allclose(alpha2, alpha, rtol=1e-5, atol=1e-7)
    # at least as good as TWN
    ta, tq = QF.ternary_threshold(v, per_channel=per_channel)
    assert err(v, alpha, q, per_channel) <= err(v, ta, tq, per_channel) * (1 + 1e-5) + 1e-6
    if per_channel:  # per channel == the per-tensor projection of each row
        for c in range(v.shape[0]):
            ac, qc = QF.ternary_projection(v[c])
            assert torch.isclose(ac, alpha[c], rtol=1e-5) and torch.equal(qc, q[c])


@pytest.mark.parametrize("per_channel", [False, True])
def test_ternary_projection_converges_on_a_conv_weight(per_channel):
    torch.manual_seed(0)
    v = torch.randn(64, 64, 3, 3)  # needs several alternations from the TWN start
    alpha, q = QF.ternary_projection(v, per_channel=per_channel)
    a = alpha.reshape(-1, 1, 1, 1) if per_channel else alpha
    assert torch.equal(torch.round(v / a).clamp(-1, 1), q.float())  # exact fixed point
    ta, tq = QF.ternary_threshold(v, per_channel=per_channel)
    assert err(v, alpha, q, per_channel) < err(v, ta, tq, per_channel)


@FAST
@given(vec(st.floats(-5, 5, width=32)))
def test_ternary_idempotent(a):
    q = QF.twn_quantize(t(a))
    assert torch.allclose(QF.twn_quantize(q), q, rtol=1e-6)
    alpha, qq = QF.ternary_projection(q)
    assert torch.allclose(alpha * qq.float(), q, rtol=1e-6)


# --------------------------------------------------------------------------- affine
@FAST
@given(st.floats(-100, 100), st.floats(-100, 100))
def test_choose_qparams_zero_exact(a, b):
    lo, hi = min(a, b), max(a, b)
    scale, zp = QF.choose_qparams(torch.tensor(lo), torch.tensor(hi))
    assert zp.dtype == torch.int32 and 0 <= zp.item() <= 255 and scale.item() > 0
    zero = torch.zeros(3)
    assert not QF.fake_quantize_affine(zero, scale, zp).any()
    expect_scale = max((max(hi, 0) - min(lo, 0)) / 255, torch.finfo(torch.float32).eps)
    assert math.isclose(scale.item(), expect_scale, rel_tol=1e-6)


def test_choose_qparams_per_channel_and_symmetric():
    lo = torch.tensor([-1.0, 0.5, -3.0, 0.0])
    hi = torch.tensor([1.0, 2.0, -1.0, 0.0])
    scale, zp = QF.choose_qparams(lo, hi)
    assert scale.shape == zp.shape == (4,)
    assert zp[1] == 0 and zp[2] == 255  # all-positive / all-negative ranges pin Z to the ends
    x = torch.zeros(4, 5)
    assert not QF.fake_quantize_affine(x, scale, zp, axis=0).any()
    s, z = QF.choose_qparams(lo, hi, -127, 127, symmetric=True)
    assert (z == 0).all() and torch.allclose(
        s, (torch.tensor([1.0, 2.0, 3.0, 0.0]) / 127).clamp_min(torch.finfo(torch.float32).eps))
    with pytest.raises(ValueError, match="qmin < qmax"):
        QF.choose_qparams(lo, hi, 5, 5)


def np_fake_quant(a, scale, zp, qmin, qmax):
    inv = np.float32(1.0) / np.float32(scale)
    q = np.clip(np.round(a * inv) + zp, qmin, qmax)  # np.round: half to even
    return (q - zp).astype(np.float32) * np.float32(scale)


@FAST
@given(vec(), st.floats(2 ** -10, 2.0, width=32), st.integers(0, 255))
def test_fake_quantize_affine_formula_torch_kernel_and_codes(a, s, z):
    x = t(a)
    scale, zp = torch.tensor(s), torch.tensor(z, dtype=torch.int32)
    y = QF.fake_quantize_affine(x, scale, zp, 0, 255)
    assert np.array_equal(y.numpy(), np_fake_quant(a, s, z, 0, 255))
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255))
    codes = QF.quantize_affine(x, scale, zp, 0, 255)
    assert codes.dtype == torch.uint8 and torch.equal(QF.dequantize_affine(codes, scale, zp), y)
    # idempotent for fixed qparams
    assert torch.equal(QF.fake_quantize_affine(y, scale, zp, 0, 255), y)


@pytest.mark.parametrize("host_bounds", [True, False], ids=["cpu-bounds", "bool-mask"])
def test_fake_quantize_affine_gradient_masked_outside_range(host_bounds, monkeypatch):
    monkeypatch.setattr(QF, "_host_bounds_ok", lambda x, s: host_bounds)
    scale, zp = torch.tensor(0.1), torch.tensor(10, dtype=torch.int32)  # range [-1.0, 24.5]
    x = torch.tensor([-5.0, -1.04, -0.96, 0.0, 24.4, 24.6, 30.0])
    g = grad_of(lambda v: QF.fake_quantize_affine(v, scale, zp, 0, 255), x)
    assert g.tolist() == [0, 1, 1, 1, 1, 0, 0]
    x = torch.randn(64) * 20
    ours = grad_of(lambda v: QF.fake_quantize_affine(v, scale, zp, 0, 255), x)
    ref = grad_of(lambda v: torch.fake_quantize_per_tensor_affine(v, scale, zp, 0, 255), x)
    assert torch.equal(ours, ref)


def test_fake_quantize_affine_per_channel_matches_torch():
    torch.manual_seed(0)
    for axis in (0, 1):
        x = torch.randn(4, 6, 3, 3) * 4
        n = x.shape[axis]
        scale = torch.rand(n) * 0.2 + 0.01
        zp = torch.randint(0, 256, (n,), dtype=torch.int32)
        y = QF.fake_quantize_affine(x, scale, zp, 0, 255, axis=axis)
        ref = torch.fake_quantize_per_channel_affine(x, scale, zp, axis, 0, 255)
        assert torch.equal(y, ref)
        gy = grad_of(lambda v: QF.fake_quantize_affine(v, scale, zp, 0, 255, axis=axis), x)
        gr = grad_of(lambda v: torch.fake_quantize_per_channel_affine(v, scale, zp, axis, 0, 255), x)
        assert torch.equal(gy, gr)
        codes = QF.quantize_affine(x, scale, zp, 0, 255, axis=axis)
        assert torch.equal(QF.dequantize_affine(codes, scale, zp, axis=axis), y)


def test_fake_quantize_affine_half_precision_path():
    x = torch.randn(16).bfloat16()
    y = QF.fake_quantize_affine(x, torch.tensor(0.05), torch.tensor(128, dtype=torch.int32))
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), QF.fake_quantize_affine(x.float(), torch.tensor(0.05),
                                                             torch.tensor(128, dtype=torch.int32)),
                          atol=0.05)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("fn", [
    lambda: QF.linear_quantize(torch.ones(2), 2, 0),
    lambda: QF.linear_quantize(torch.ones(2), 2, 17),
    lambda: QF.tanh_quantize(torch.ones(2), 0),
    lambda: QF.minmax_quantize(torch.ones(2), 0),
    lambda: QF.log_linear_quantize(torch.ones(2), 2, 2.5),
])
def test_bad_bits_raise(fn):
    with pytest.raises(ValueError, match="bits must be an int"):
        fn()


def test_dequantize_unknown_kind():
    c = QF.Codes(torch.zeros(2), torch.ones(()), torch.zeros(()), 8, None, "bogus")
    with pytest.raises(ValueError, match="kind"):
        c.dequantize()
