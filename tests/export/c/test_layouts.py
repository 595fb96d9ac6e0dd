"""The generator's numpy packing equals the kernel library's own packers, byte for byte."""

import ctypes
import shutil

import numpy as np
import pytest

from qat.export.c import layouts
from qat.runtime.native.library import ConvGeom, ptr
from tests.runtime.native.cbuild import build_library

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
SHAPES = [(16, 3, 3, 64), (5, 3, 3, 3), (33, 1, 1, 130), (10, 4, 4, 7), (17, 2, 3, 65)]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    lib = build_library(tmp_path_factory.mktemp("lib"), ["geom.c", "binary_pack.c", "int_conv.c"])
    G = ctypes.POINTER(ConvGeom)
    for name, args, res in [("qat_binary_pack_weights", [G, ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int),
                            ("qat_ternary_pack_weights", [G, ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int),
                            ("qat_ternary_weight_words", [G], ctypes.c_int64),
                            ("qat_int_pack_weights", [G] + [ctypes.c_void_p] * 3, ctypes.c_int),
                            ("qat_binary_weight_words", [G], ctypes.c_int64),
                            ("qat_int_weight_elems", [G], ctypes.c_int64),
                            ("qat_int_conv_scratch_elems", [G], ctypes.c_int64)]:
        getattr(lib, name).argtypes, getattr(lib, name).restype = args, res
    return lib


def _geom(o, kh, kw, c):
    return ConvGeom(1, kh, kw, c, o, kh, kw, 1, 1, 0, 0, 1, 1, 1, 1)


@pytest.mark.parametrize("shape", SHAPES)
def test_binary_weights(lib, shape):
    codes = np.random.default_rng(0).choice(np.array([-1, 1], np.int8), shape)
    g = _geom(*shape)
    want = np.zeros(lib.qat_binary_weight_words(g), np.uint64)
    assert lib.qat_binary_pack_weights(g, ptr(codes), ptr(want)) == 0
    assert np.array_equal(layouts.binary_weights(codes).reshape(-1), want)


@pytest.mark.parametrize("shape", SHAPES)
def test_ternary_weights(lib, shape):
    codes = np.random.default_rng(2).choice(np.array([-1, 0, 1], np.int8), shape)
    g = _geom(*shape)
    want = np.zeros(lib.qat_ternary_weight_words(g), np.uint64)
    assert lib.qat_ternary_pack_weights(g, ptr(codes), ptr(want)) == 0
    assert np.array_equal(layouts.ternary_weights(codes), want)


@pytest.mark.parametrize("shape", SHAPES)
def test_int_weights_and_scratch(lib, shape):
    rng = np.random.default_rng(1)
    o = shape[0]
    codes = rng.integers(-127, 128, (o, int(np.prod(shape[1:])))).astype(np.int32)
    zw = rng.integers(-3, 4, o).astype(np.int32)
    g = _geom(*shape)
    want = np.zeros(lib.qat_int_weight_elems(g), np.int16)
    assert lib.qat_int_pack_weights(g, ptr(codes), ptr(zw), ptr(want)) == 0
    assert np.array_equal(layouts.int_weights(codes, zw).reshape(-1), want)
    assert layouts.int_conv_scratch_elems(*shape[1:]) == lib.qat_int_conv_scratch_elems(g)
