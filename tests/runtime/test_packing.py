"""Packing round trips for every bit width, and the documented bit layout."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qat.runtime.packing import (PackingError, code_range, matrix_shape, pack_bits, pack_planes, pack_trits,
                                 packed_nbytes, unpack, unpack_bits, unpack_planes, unpack_trits)

FORMATS = [(1, "sign")] + [(b, v) for b in range(2, 17) for v in ("signed", "unsigned")] + [(1, "unsigned")]
shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=7)


@st.composite
def codes_for(draw):
    bits, values = draw(st.sampled_from(FORMATS))
    shape = draw(shapes)
    lo, hi = code_range(bits, values)
    if values == "sign":
        arr = draw(hnp.arrays(np.int8, shape, elements=st.sampled_from([-1, 1])))
    else:
        arr = draw(hnp.arrays(np.int64, shape, elements=st.integers(lo, hi)))
    return bits, values, arr


@settings(max_examples=300, deadline=None)
@given(codes_for())
def test_bits_round_trip(case):
    bits, values, arr = case
    buf = pack_bits(arr, bits, values)
    assert buf.dtype == np.uint8 and buf.size == packed_nbytes(arr.shape, bits)
    rows, _, k_pad = matrix_shape(arr.shape)
    assert buf.size == rows * k_pad * bits // 8 and (k_pad * bits) % 32 == 0  # whole 32-bit words per row
    np.testing.assert_array_equal(unpack_bits(buf, arr.shape, bits, values, dtype=np.int64), arr)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.int8, shapes, elements=st.sampled_from([-1, 0, 1])))
def test_trits_round_trip(arr):
    buf = pack_trits(arr)
    assert buf.size == math.ceil(arr.size / 5) and buf.max(initial=0) <= 242
    np.testing.assert_array_equal(unpack_trits(buf, arr.shape), arr)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.int8, shapes, elements=st.sampled_from([-1, 0, 1])))
def test_planes_round_trip(arr):
    buf = pack_planes(arr)
    assert buf.size == 2 * packed_nbytes(arr.shape, 1)
    np.testing.assert_array_equal(unpack_planes(buf, arr.shape), arr)
    np.testing.assert_array_equal(unpack(buf, {"encoding": "planes", "shape": list(arr.shape)}), arr)


def test_documented_plane_layout_and_malformed_planes():
    # one row [1, 0, -1, 1]: non-zero plane 0b1101 in word 0, positive plane 0b1001 in word 1 (rows of 32)
    words = pack_planes(np.array([[1, 0, -1, 1]])).view("<u4")
    assert list(words) == [0b1101, 0b1001]
    bad = np.array([0b0101, 0b0010], "<u4").view(np.uint8)  # weight 1 positive but zero
    with pytest.raises(PackingError, match="zero weight positive"):
        unpack_planes(bad, (1, 4))
    with pytest.raises(PackingError, match="needs 2 x"):
        unpack_planes(bad[:-1], (1, 4))
    with pytest.raises(PackingError, match=r"\{-1, 0, 1\}"):
        pack_planes(np.array([2]))


def test_documented_bit_layout():
    # 2 rows of 3 signed 4-bit fields: row 0 = [1, -2, 7], row 1 = [-8, 0, 3]; rows padded to 32 fields
    buf = pack_bits(np.array([[1, -2, 7], [-8, 0, 3]]), 4, "signed")
    assert buf.size == 2 * 32 * 4 // 8
    words = buf.view("<u4")
    assert words[0] == 0x1 | (0xE << 4) | (0x7 << 8)   # field j at bits [4j, 4j + 4), LSB first
    assert words[4] == 0x8 | (0x0 << 4) | (0x3 << 8)   # row 1 starts at word K_pad * b / 32 = 4
    # sign fields: bit 1 is +1, element k of a row at bit k
    s = pack_bits(np.array([[1, -1, -1, 1, 1]]), 1, "sign")
    assert s.view("<u4")[0] == 0b11001


def test_binary_is_one_32nd_of_float32():
    w = np.where(np.random.default_rng(0).random((64, 3, 3, 32)) < 0.5, -1, 1)
    assert pack_bits(w, 1, "sign").nbytes * 32 == w.astype(np.float32).nbytes


@pytest.mark.parametrize("bits,values,bad", [(1, "sign", [0]), (2, "signed", [2]), (4, "unsigned", [-1]),
                                             (8, "unsigned", [256])])
def test_out_of_range_codes_are_rejected(bits, values, bad):
    with pytest.raises(PackingError, match="outside|must be"):
        pack_bits(np.array(bad), bits, values)


def test_wrong_buffer_sizes_are_rejected():
    buf = pack_bits(np.ones((4, 40), np.int64), 3, "unsigned")
    with pytest.raises(PackingError, match="needs"):
        unpack_bits(buf[:-1], (4, 40), 3, "unsigned")
    with pytest.raises(PackingError, match="need"):
        unpack_trits(pack_trits(np.zeros(11, np.int8))[:-1], (11,))
    with pytest.raises(PackingError, match="242"):
        unpack_trits(np.array([243], np.uint8), (5,))
