"""Native ops against exact references on random shapes, on every path of the library (AVX-512,
AVX2, scalar), binary and ternary weights against signs, 8-bit integers: odd channel counts, reductions not a multiple of 64, strides, padding, 1x1 kernels,
batch 1."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qat.runtime import ops as R
from qat.runtime.fixedpoint import quantize_multiplier
from qat.runtime.native import library as L
from qat.runtime.native import ops as N
from qat.runtime.native.values import Nhwc, Packed, as_packed
from qat.runtime.packing import pack_bits, pack_planes
from tests.runtime.native.isas import ALL_ISAS

pytestmark = pytest.mark.skipif(L.load_library() is None, reason="native kernel library not built")
ISAS = L.available_isas() or ("scalar",)
SPLIT = N.SPLIT_SECONDS


@st.composite
def conv_case(draw):
    c = draw(st.sampled_from([1, 3, 16, 17, 32, 63, 64, 65, 100, 128, 130]))
    o = draw(st.sampled_from([1, 5, 16, 17, 33, 48, 64]))
    k = draw(st.sampled_from([1, 2, 3, 5]))
    s = draw(st.integers(1, 2))
    p = draw(st.integers(0, 2))
    d = draw(st.integers(1, 2))
    lo = max(1, d * (k - 1) + 1 - 2 * p)
    h, w = draw(st.integers(lo, lo + 6)), draw(st.integers(lo, lo + 6))
    n = draw(st.sampled_from([1, 2, 3]))
    return c, o, k, s, p, d, h, w, n, draw(st.integers(0, 2 ** 31)), draw(st.integers(1, 2))


def _pm1(shape, g):
    return torch.where(torch.rand(shape, generator=g) < 0.5, -1, 1).to(torch.int8)


def _spec(op, o, c, k, s, p, d, weight):
    spec = {"op": op, "name": "t", "inputs": ["x"], "outputs": ["y"], "weight": weight}
    if op == "conv2d":
        spec.update(kernel_size=[k, k], stride=[s, s], padding=[p, p], dilation=[d, d], groups=1)
    return spec


def _binary_weight(wt_ohwi):
    return {"w": pack_bits(wt_ohwi.numpy(), 1, "sign")}, {
        "tensor": "w", "kind": "sign", "encoding": "bits", "bits": 1, "values": "sign",
        "shape": list(wt_ohwi.shape)}


def _ternary_weight(wt_ohwi):
    return {"w": pack_planes(wt_ohwi.numpy())}, {
        "tensor": "w", "kind": "ternary", "encoding": "planes", "bits": 2, "values": "signed",
        "shape": list(wt_ohwi.shape)}


def _ternary(shape, g):
    """Codes in {-1, 0, +1}, a third of them 0 on average; the first output channel all 0 half the time."""
    w = torch.randint(-1, 2, shape, generator=g).to(torch.int8)
    if torch.rand(1, generator=g) < 0.5:
        w[0] = 0
    return w


# the popcount layers: (weight codes, packed weight entry, native layer)
KINDS = {"binary": (_pm1, _binary_weight, N.BinaryLayer), "ternary": (_ternary, _ternary_weight, N.TernaryLayer)}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("isa", ALL_ISAS)
@settings(max_examples=80, deadline=None)
@given(case=conv_case())
def test_popcount_conv_accumulators_threshold_and_pooled_bits(kind, isa, case):
    c, o, k, s, p, d, h, w, n, seed, threads = case
    codes, weight, layer = KINDS[kind]
    g = torch.Generator().manual_seed(seed)
    x, wt = _pm1((n, c, h, w), g), codes((o, c, k, k), g)
    ref = F.conv2d(x.double(), wt.double(), stride=s, padding=p, dilation=d).to(torch.int32)
    tensors, wspec = weight(wt.permute(0, 2, 3, 1).contiguous())
    spec = _spec("conv2d", o, c, k, s, p, d, wspec)
    lib = L.load_library()
    torch.set_num_threads(threads)
    N.SPLIT_SECONDS = 0.0  # with 2 threads, every call splits its rows
    try:
        env = {"x": x}
        layer(lib, isa, spec, tensors, (c, h, w), ["y"]).run(env)
        assert isinstance(env["y"], Nhwc) and torch.equal(env["y"].reference(), ref)

        bound = c * k * k
        thr = torch.randint(-bound, bound + 1, (o,), generator=g, dtype=torch.int32)
        up = torch.rand(o, generator=g) < 0.5
        dirs = torch.where(up, 1, -1).to(torch.int8)
        want = torch.where((ref >= thr.view(1, -1, 1, 1)) == up.view(1, -1, 1, 1), 1, -1).to(torch.int8)
        env = {"x": x}
        layer(lib, isa, spec, tensors, (c, h, w), ["y"], (thr, dirs)).run(env)
        assert isinstance(env["y"], Packed) and torch.equal(env["y"].reference(), want)

        if min(ref.shape[2:]) >= 2:  # max pooling folded through the threshold, on the bits
            pool = {"kernel_size": [2, 2], "stride": [2, 2], "padding": [1, 1] if k % 2 else [0, 0],
                    "dilation": [1, 1], "ceil_mode": bool(seed % 2)}
            pooled = F.max_pool2d(ref.double(), 2, 2, pool["padding"], 1, pool["ceil_mode"])
            want = torch.where((pooled >= thr.view(1, -1, 1, 1)) == up.view(1, -1, 1, 1), 1, -1).to(torch.int8)
            env = {"x": x}
            layer(lib, isa, spec, tensors, (c, h, w), ["y"], (thr, dirs), pool).run(env)
            assert torch.equal(env["y"].reference(), want)
            env = {"a": Nhwc(ref.permute(0, 2, 3, 1).contiguous())}
            N.MaxPoolI32(lib, {**pool, "inputs": ["a"], "outputs": ["m"]}, tuple(ref.shape[1:])).run(env)
            assert torch.equal(env["m"].reference(), pooled.to(torch.int32))
    finally:
        torch.set_num_threads(1)
        N.SPLIT_SECONDS = SPLIT


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("isa", ALL_ISAS)
@settings(max_examples=20, deadline=None)
@given(c=st.integers(1, 40), h=st.integers(1, 5), w=st.integers(1, 5), o=st.integers(1, 20), n=st.integers(1, 3),
       seed=st.integers(0, 2 ** 31))
def test_popcount_linear_over_a_flattened_map(kind, isa, c, h, w, o, n, seed):
    """A linear layer after a flatten runs as an h x w convolution on the NHWC map."""
    codes, weight, layer = KINDS[kind]
    g = torch.Generator().manual_seed(seed)
    x, wt = _pm1((n, c, h, w), g), codes((o, c * h * w), g)
    ref = (x.reshape(n, -1).long() @ wt.long().t()).int()
    tensors, wspec = weight(wt)
    env = {"x": as_packed(x, (c, h, w))}
    layer(L.load_library(), isa, _spec("linear", o, c, 0, 0, 0, 0, wspec), tensors, (c, h, w),
          ["y"]).run(env)
    assert torch.equal(env["y"].reference(), ref)


@pytest.mark.parametrize("isa", ALL_ISAS)
@settings(max_examples=80, deadline=None)
@given(case=conv_case(), xr=st.sampled_from([(0, 255, 0), (0, 255, 131), (0, 255, 255), (-128, 127, 0),
                                             (-127, 127, 3), (-128, 127, -128), (0, 255, -7)]),
       wr=st.sampled_from([(-127, 127), (-128, 127), (0, 255), (-1, 1)]), out_signed=st.booleans())
def test_int_conv_accumulators_and_requantized_codes(isa, case, xr, wr, out_signed):
    c, o, k, s, p, d, h, w, n, seed, threads = case
    xlo, xhi, zx = xr
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(xlo, xhi + 1, (n, c, h, w), generator=g)
    wt = torch.randint(wr[0], wr[1] + 1, (o, c, k, k), generator=g)
    zw = torch.randint(wr[0], wr[1] + 1, (o,), generator=g)
    ref = F.conv2d((x - zx).double(), (wt - zw.view(-1, 1, 1, 1)).double(), stride=s, padding=p,
                   dilation=d).to(torch.int32)
    codes = wt.permute(0, 2, 3, 1).contiguous()
    values = "unsigned" if wr[0] >= 0 else "signed"
    tensors = {"w": pack_bits(codes.numpy(), 8, values), "zw": zw.to(torch.int32).numpy()}
    wspec = {"tensor": "w", "kind": "affine", "encoding": "bits", "bits": 8, "values": values,
             "shape": list(codes.shape), "zero_point": "zw"}
    spec = _spec("conv2d", o, c, k, s, p, d, wspec)
    spec["input"] = {"kind": "affine", "bits": 8, "scale": 0.1, "zero_point": zx, "qmin": xlo, "qmax": xhi}
    xin = x.to(torch.uint8 if xlo >= 0 else torch.int8)
    lib = L.load_library()
    torch.set_num_threads(threads)
    N.SPLIT_SECONDS = 0.0  # with 2 threads, every call splits its rows
    try:
        env = {"x": xin}
        layer = N.IntLayer(lib, isa, spec, tensors, (c, h, w), ["y"])
        # the VNNI kernel takes every 8-bit weight; the zero point's byte must lie in 0..255
        assert layer.kernel == (isa if isa != "avx512" or zx != -7 else "avx2")
        layer.run(env)
        assert torch.equal(env["y"].reference(), ref)

        m0, nsh = zip(*(quantize_multiplier(float(v)) for v in torch.rand(o, generator=g) * 0.05 + 1e-4))
        zp, lo, hi = (0, -128, 127) if out_signed else (7, 0, 255)
        rt = {"m": np.array(m0, np.int32), "n": np.array(nsh, np.int8),
              "b": torch.randint(-5000, 5000, (o,), generator=g).to(torch.int32).numpy(),
              "f": np.full(o, seed % 4, np.int8)}
        quant = {"kind": "affine", "bits": 8, "scale": 1.0, "zero_point": zp, "qmin": lo, "qmax": hi}
        rq = R.Requantize({"op": "requantize", "inputs": ["y"], "outputs": ["q"], "multiplier": "m",
                           "shift": "n", "bias": "b", "bias_shift": "f", "zero_point": zp, "clamp": [lo, hi],
                           "quant": quant}, rt, {})
        want = rq.forward(ref)
        env = {"x": xin}
        N.IntLayer(lib, isa, spec, tensors, (c, h, w), ["q"], rq).run(env)
        got = env["q"].reference()
        assert got.dtype == want.dtype and torch.equal(got, want)
        env = {"y": Nhwc(ref.permute(0, 2, 3, 1).contiguous())}
        N.Requantize(lib, rq, tuple(ref.shape[1:]), False).run(env)
        assert torch.equal(env["q"].reference(), want)
    finally:
        torch.set_num_threads(1)
        N.SPLIT_SECONDS = SPLIT


def test_binary_layer_wider_than_the_kernel_row_is_left_to_the_reference():
    c = 1400  # 3 x 3 x 1408 bits > QAT_ROW_WORDS words
    wt = torch.ones(2, 3, 3, c, dtype=torch.int8)
    tensors, wspec = _binary_weight(wt)
    with pytest.raises(N.NotNative, match="longer than"):
        N.BinaryLayer(L.load_library(), ISAS[-1], _spec("conv2d", 2, c, 3, 1, 1, 1, wspec), tensors, (c, 4, 4), ["y"])


def test_parallel_rows_splits_only_calls_that_are_slow_alone():
    from qat.runtime.native.ops import SPLIT_SECONDS, parallel_rows

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        calls = []
        fn = lambda a, b: calls.append((a, b))  # noqa: E731
        alone = {}
        parallel_rows(fn, 10, alone)  # first call of this size: one thread, timed
        assert calls == [(0, 10)] and 0 <= alone[10] < 1
        calls.clear()
        alone[10] = SPLIT_SECONDS / 2
        parallel_rows(fn, 10, alone)
        assert calls == [(0, 10)]
        calls.clear()
        alone[10] = SPLIT_SECONDS * 2
        parallel_rows(fn, 10, alone)
        assert sorted(calls) == [(0, 5), (5, 10)]
        calls.clear()
        parallel_rows(fn, 1, {1: 1.0})  # one row: nothing to split
        assert calls == [(0, 1)]

        def fail(a, b):
            if a:
                raise RuntimeError("worker failed")

        with pytest.raises(RuntimeError, match="worker failed"):
            parallel_rows(fail, 10, {10: 1.0})
    finally:
        torch.set_num_threads(before)
