"""The fused float stage of a ResNet block: its load-time probe tells torch's BatchNorm rounding
apart (exactly one of the two variants agrees with the reference), and a stage that disagrees is
not used."""

import pytest
from hypothesis import given, settings, strategies as st
import torch

from qat.export import export_model
from qat.runtime import load
from qat.runtime.native import library as L
from qat.runtime.native import residual as R
from qat.runtime.program import Program
from tests.export.models import NORM, SHAPE, deployed, inputs

pytestmark = pytest.mark.skipif("avx512" not in L.available_isas(),
                                reason="the fused float stage runs on AVX-512 only (this CPU or build lacks it)")


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    m, r = deployed("resnet20", "bnn")
    res = export_model(m, tmp_path_factory.mktemp("residual") / "bnn", input_shape=SHAPE, normalization=NORM,
                       recipe=r, onnx=False)
    return load(res.folder, isa="avx512")


def test_probe_tells_the_batchnorm_roundings_apart(program):
    plan = program.native
    ops = program.ops
    i = next(k for k, op in enumerate(ops) if op.spec["op"] == "dequantize" and op.name == "layer1.0.conv2")
    roles, value, gaps, used = R._match(plan, ops, i)
    assert set(roles) == {"dequantize", "batchnorm", "add", "clamp", "quantize"} and not gaps
    chw = tuple(plan.values[ops[i].inputs[0]]["shape"][1:])
    agree = [R._agrees(R.ResidualStage(plan.lib, roles, value, chw, True, fma), roles, plan, chw)
             for fma in (True, False)]
    assert sum(agree) == 1


def test_downsampling_blocks_run_their_shortcut_first(program):
    """The shortcut (slice, pad) sits between the block's BatchNorm and its add in the manifest: it
    runs before the fused stage that adds it, and the output is the reference's."""
    steps = program.native.plans[True]
    at = [getattr(s, "name", None) for s in steps].index("layer2.0.conv2 (fused float stage)")
    before = {s.op.spec["op"] for s in steps[at - 2:at] if hasattr(s, "op")}
    assert before == {"slice", "pad"}
    ref = Program(program.manifest, program.native.tensors, backend="reference")
    x = inputs(3)
    assert torch.equal(program(x), ref(x))


def _pack_signs(y):
    """[p, c] float -> [p, ceil(c / 64)] int64 words of y >= 0 (channel k: bit k % 64 of word k // 64)."""
    p, c = y.shape
    on = torch.zeros(p, -(-c // 64) * 64, dtype=torch.int64)
    on[:, :c] = (y >= 0).to(torch.int64)
    shifts = torch.arange(64, dtype=torch.int64)
    return (on.view(p, -1, 64) << shifts).sum(-1)  # (bit 63 wraps to the sign bit, as in the uint64 word)


@settings(max_examples=60, deadline=None)
@given(c=st.integers(1, 150), pixels=st.integers(1, 6), exact32=st.booleans(), bias=st.booleans(), bn=st.booleans(),
       res=st.booleans(), clamp=st.sampled_from([None, "relu", "hardtanh"]), out=st.sampled_from(["bits", "u8", "i8"]),
       seed=st.integers(0, 2 ** 31))
def test_kernel_against_torch_float32(c, pixels, exact32, bias, bn, res, clamp, out, seed):
    """One pass of ``qat_residual_avx512`` over [pixels, c] values (any c: partial blocks of 16
    channels, several sign words) equals the torch ops it replaces (BatchNorm rounded twice)."""
    import ctypes

    import numpy as np

    g = torch.Generator().manual_seed(seed)
    acc = torch.randint(-5000, 5000, (pixels, c), generator=g, dtype=torch.int32)
    r = torch.randn(pixels, c, generator=g) * 4
    scale, dq_bias = torch.rand(c, generator=g) * 0.01, torch.randn(c, generator=g)
    alpha, beta = torch.randn(c, generator=g), torch.randn(c, generator=g)
    p, keep = R.Residual(), []

    def arr(t, dtype):
        a = np.ascontiguousarray(t.numpy().astype(dtype))
        keep.append(a)
        return a.ctypes.data

    if exact32:
        p.mode, p.scale = R.EXACT32, arr(scale, np.float32)
        y = acc.float() * scale
        y = y + dq_bias if bias else y
    else:
        p.mode, p.scale64 = 0, arr(scale.double(), np.float64)
        y = acc.double() * scale.double()
        y = (y + dq_bias.double() if bias else y).float()
    p.dq_bias = arr(dq_bias, np.float32) if bias else None
    if bn:
        p.mode |= R.BN
        p.alpha, p.beta = arr(alpha, np.float32), arr(beta, np.float32)
        y = y * alpha + beta
    y = y + r if res else y
    p.lo, p.hi = {None: (-np.inf, np.inf), "relu": (0.0, np.inf), "hardtanh": (-1.0, 1.0)}[clamp]
    y = y.clamp(p.lo, p.hi)
    got_y = torch.empty(pixels, c)
    bits = torch.empty(pixels, -(-c // 64), dtype=torch.int64) if out == "bits" else None
    codes = torch.empty(pixels, c, dtype=torch.uint8 if out == "u8" else torch.int8) if out != "bits" else None
    if codes is not None:
        p.inv_scale, p.zero_point = 1 / 0.05, (128.0 if out == "u8" else 3.0)
        p.qlo, p.qhi = (0.0, 255.0) if out == "u8" else (-128.0, 127.0)
        p.code_type = L.U8 if out == "u8" else L.I8
    lib = L.load_library()
    L.check(lib.qat_residual_avx512(L.ptr(acc), L.ptr(r) if res else None, pixels, c, ctypes.byref(p),
                                    L.ptr(got_y), None if bits is None else L.ptr(bits),
                                    None if codes is None else L.ptr(codes)), "residual")
    assert torch.equal(got_y, y)
    if bits is not None:
        assert torch.equal(bits, _pack_signs(y))
    else:
        q = (torch.round(y * torch.tensor(p.inv_scale, dtype=torch.float32)) + p.zero_point).clamp(p.qlo, p.qhi)
        assert torch.equal(codes, q.to(codes.dtype))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 150), h=st.integers(1, 7), w=st.integers(1, 7), flat=st.booleans(),
       one=st.booleans(), seed=st.integers(0, 2 ** 31))
def test_float_threshold_writes_the_reference_signs(n, c, h, w, flat, one, seed):
    """``FloatThreshold`` (``qat_threshold_nchw_avx512``) against the reference ``threshold`` op on
    values that hit the thresholds, signed zeros, infinities and NaN; one threshold for every
    channel or one each; ``[n, c]`` values (flat) too."""
    from types import SimpleNamespace

    from qat.runtime.ops import Threshold

    g = torch.Generator().manual_seed(seed)
    h, w = (1, 1) if flat else (h, w)
    k = 1 if one else c
    t = torch.randn(k, generator=g)
    d = torch.where(torch.rand(k, generator=g) < 0.5, 1, -1).to(torch.int8)
    x = torch.randn(n, c, h, w, generator=g)
    pick = torch.rand(x.shape, generator=g)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan")])
    x = torch.where(pick < 0.2, t.view(1, -1, 1, 1).expand_as(x), x)  # exactly at the threshold
    x = torch.where(pick > 0.9, special[torch.randint(0, 5, x.shape, generator=g)], x)
    x = x.reshape(n, c) if flat else x
    spec = {"op": "threshold", "name": "t", "inputs": ["y"], "outputs": ["s"], "domain": "float",
            "threshold": "T", "direction": "D"}
    values = {"y": {"shape": [-1, c] if flat else [-1, c, h, w], "dtype": "float32"}}
    ref = Threshold(spec, {"T": t.numpy(), "D": d.numpy()}, values)
    want = {"y": x}
    ref.run(want)
    stage = R.FloatThreshold(L.load_library(), SimpleNamespace(t=ref.t, up=ref.up, inputs=["y"], outputs=["s"], name="t"),
                             (c, h, w), flat)
    got = {"y": x}
    stage.run(got)
    assert torch.equal(got["s"].reference(), want["s"])
