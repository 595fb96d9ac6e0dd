"""The runtime's activation quantizers equal the library's, code for code and value for value."""

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qat.quant import functional as QF
from qat.runtime import quantize as RQ

finite = st.floats(-50, 50, allow_nan=False, width=32)
tensors = hnp.arrays(np.float32, st.integers(1, 64), elements=finite).map(torch.from_numpy)
edges = torch.tensor([0.0, -0.0, 0.5, -0.5, 1.5, -2.5, 1e-30, -1e-30, 127.5, 3.0e4, -3.0e4])


def _check(x, spec, lib):
    codes = RQ.quantize(x, spec)
    assert torch.equal(codes.to(torch.int64), lib.codes.to(torch.int64))
    # exactly equal, NaN where the other is NaN (a range below the smallest float32 step: scale 0)
    assert torch.allclose(RQ.dequantize(codes, spec, x=x), lib.dequantize(), rtol=0, atol=0, equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(tensors, st.integers(2, 8), st.integers(-3, 6))
def test_linear(x, bits, sf):
    x = torch.cat([x, edges])
    _check(x, {"kind": "linear", "bits": bits, "sf": sf}, QF.linear_quantize_codes(x, sf, bits))


@settings(max_examples=60, deadline=None)
@given(tensors, st.integers(3, 8), st.integers(-2, 5))
def test_log(x, bits, sf):
    x = torch.cat([x, edges])
    _check(x, {"kind": "log", "bits": bits, "sf": sf}, QF.log_linear_quantize_codes(x, sf, bits))


@settings(max_examples=60, deadline=None)
@given(tensors, st.integers(2, 8))
def test_tanh(x, bits):
    x = torch.cat([x, edges])
    _check(x, {"kind": "tanh", "bits": bits}, QF.tanh_quantize_codes(x, bits))


@settings(max_examples=60, deadline=None)
@given(tensors, st.integers(1, 8), finite, finite)
@example(x=torch.tensor([0.0]), bits=2, a=0.0, b=1.401298464324817e-45)  # a range whose scale rounds to 0
def test_minmax(x, bits, a, b):
    x = torch.cat([x, edges])
    vmin, vmax = min(a, b), max(a, b)
    spec = {"kind": "minmax", "bits": bits, "vmin": vmin, "vmax": vmax}
    _check(x, spec, QF.minmax_quantize_codes(x, bits, torch.tensor(vmin), torch.tensor(vmax)))
    _check(x, {"kind": "minmax", "bits": bits, "range": "dynamic"}, QF.minmax_quantize_codes(x, bits))


@settings(max_examples=60, deadline=None)
@given(tensors, finite, finite)
def test_affine(x, a, b):
    x = torch.cat([x, edges])
    scale, zp = QF.choose_qparams(min(a, b), max(a, b))
    spec = {"kind": "affine", "bits": 8, "scale": float(scale), "zero_point": int(zp), "qmin": 0, "qmax": 255}
    codes = RQ.quantize(x, spec)
    assert torch.equal(codes.to(torch.int64), QF.quantize_affine(x, scale, zp).to(torch.int64))
    assert torch.equal(RQ.dequantize(codes, spec), QF.fake_quantize_affine(x, scale, zp))


def test_sign():
    x = torch.cat([torch.randn(100), edges])
    codes = RQ.quantize(x, {"kind": "sign", "bits": 1})
    assert torch.equal(codes, QF.sign_codes(x).codes) and codes.dtype == torch.int8


def test_unknown_kind_is_a_format_error():
    with pytest.raises(RQ.FormatError, match="unknown quantizer kind"):
        RQ.quantize(torch.zeros(2), {"kind": "fp4", "bits": 4})
