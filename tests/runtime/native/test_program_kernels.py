"""The kernels the standalone C program adds (qat_input.c, qat_scores.c), called through ctypes from
a library compiled here with -Werror, against numpy / torch."""

import ctypes
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qat.export.c import layouts
from qat.runtime.native.library import ConvGeom, ptr
from tests.runtime.native.cbuild import build_library

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    lib = build_library(tmp_path_factory.mktemp("lib"), ["qat_input.c", "qat_scores.c", "geom.c"])
    P, I, L = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
    lib.qat_input_codes.argtypes = [P, L, I, I, I, P, P]
    lib.qat_input_conv.argtypes = [ctypes.POINTER(ConvGeom), P, P, P, P, P, P, P, I, I]
    lib.qat_scores.argtypes = [P, I, P, P, P, P]
    return lib


def _pixels(n, c, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def test_input_codes(lib):
    px = _pixels(2, 3, 5, 7)
    table = np.random.default_rng(1).integers(0, 256, (3, 256), dtype=np.uint8)
    out = np.zeros((2, 5, 7, 3), np.uint8)
    assert lib.qat_input_codes(ptr(px), 2, 3, 5, 7, ptr(table), ptr(out)) == 0
    want = np.stack([table[c][px[:, c]] for c in range(3)], axis=-1)
    assert np.array_equal(out, want)
    assert lib.qat_input_codes(ptr(px), 2, 0, 5, 7, ptr(table), ptr(out)) == -1
    assert lib.qat_input_codes(None, 2, 3, 5, 7, ptr(table), ptr(out)) == -1


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 1, 1), (1, 1, 0, 1), (3, 1, 2, 2), (5, 2, 0, 1)])
def test_input_conv(lib, k, s, p, d):
    n, c, h, w, o = 2, 3, 9, 8, 5
    px = _pixels(n, c, h, w, seed=k + s)
    rng = np.random.default_rng(3)
    table = rng.integers(-(1 << 24), 1 << 24, (c, 256)).astype(np.int32)
    wt = rng.integers(-128, 128, (o, k, k, c)).astype(np.int8)
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    g = ConvGeom(n, h, w, c, o, k, k, s, s, p, p, d, d, ho, wo)
    acc = np.full((n, ho, wo, o), 7, np.int32)
    split = (n * ho) // 2  # two row ranges, as two threads would call it
    assert lib.qat_input_conv(g, ptr(px), ptr(table), ptr(wt), ptr(acc), None, None, None, 0, split) == 0
    assert lib.qat_input_conv(g, ptr(px), ptr(table), ptr(wt), ptr(acc), None, None, None, split, n * ho) == 0
    x = torch.from_numpy(np.stack([table[ch][px[:, ch]] for ch in range(c)], axis=1).astype(np.float64))
    ref = F.conv2d(x, torch.from_numpy(wt.astype(np.float64)).permute(0, 3, 1, 2), stride=s, padding=p, dilation=d)
    want = ref.permute(0, 2, 3, 1).numpy()
    # |table| < 2^24 and |w| <= 128 over at most 75 terms: float64 is exact; int32 wraps are the
    # caller's to avoid, so compare modulo 2^32
    want = ((want.astype(np.int64) + 2 ** 31) % 2 ** 32) - 2 ** 31
    assert np.array_equal(acc.astype(np.int64), want)
    # the fused threshold: the bits of (acc >= T) or (acc < T), never storing acc
    t = rng.integers(-(1 << 26), 1 << 26, o).astype(np.int32)
    d = rng.choice(np.array([-1, 1], np.int8), o)
    bits = np.full((n, ho, wo, 1), 0xFFFF, np.uint64)
    assert lib.qat_input_conv(g, ptr(px), ptr(table), ptr(wt), None, ptr(t), ptr(d), ptr(bits), 0, n * ho) == 0
    assert np.array_equal(bits, layouts.pack_signs((want >= t) == (d > 0)))


def test_input_conv_checks_sizes(lib):
    px, table = _pixels(1, 3, 4, 4), np.zeros((3, 256), np.int32)
    wt = np.zeros((2, 3, 3, 3), np.int8)
    acc = np.full((1, 4, 4, 2), 7, np.int32)
    good = ConvGeom(1, 4, 4, 3, 2, 3, 3, 1, 1, 1, 1, 1, 1, 4, 4)
    bad_out = ConvGeom(1, 4, 4, 3, 2, 3, 3, 1, 1, 1, 1, 1, 1, 5, 4)  # ho does not match
    none = (None, None, None)
    assert lib.qat_input_conv(bad_out, ptr(px), ptr(table), ptr(wt), ptr(acc), *none, 0, 4) == -1
    assert lib.qat_input_conv(good, ptr(px), ptr(table), ptr(wt), ptr(acc), *none, 0, 5) == -1  # past the end
    assert lib.qat_input_conv(good, ptr(px), ptr(table), ptr(wt), ptr(acc), *none, 3, 2) == -1
    assert lib.qat_input_conv(good, ptr(px), ptr(table), ptr(wt), None, *none, 0, 4) == -1  # no output
    t, d = np.zeros(2, np.int32), np.ones(2, np.int8)
    bits = np.zeros(16, np.uint64)
    assert lib.qat_input_conv(good, ptr(px), ptr(table), ptr(wt), ptr(acc), ptr(t), ptr(d), ptr(bits), 0, 4) == -1
    assert (acc == 7).all()  # nothing written on refusal


def test_scores(lib):
    rng = np.random.default_rng(4)
    c = 10
    acc = rng.integers(-(1 << 29), 1 << 29, c).astype(np.int32)
    m0 = rng.integers(-(1 << 31), 1 << 31, c).astype(np.int32)
    s = rng.integers(31, 63, c).astype(np.int8)  # |acc m0| < 2^60: every score fits int32
    s[0] = 0
    m0[0] = 1
    bias = rng.integers(-(1 << 20), 1 << 20, c).astype(np.int32)
    out = np.zeros(c, np.int32)
    best = lib.qat_scores(ptr(acc), c, ptr(m0), ptr(s), ptr(bias), ptr(out))
    prod = [int(a) * int(m) for a, m in zip(acc, m0)]
    want = [(v + ((1 << (int(k) - 1)) if k else 0)) // (1 << int(k)) + int(b) for v, k, b in zip(prod, s, bias)]
    assert out.tolist() == want  # floor division: round half up, negative values included
    assert best == int(np.argmax(out))
    s[3] = 63
    assert lib.qat_scores(ptr(acc), c, ptr(m0), ptr(s), ptr(bias), ptr(out)) == -1
