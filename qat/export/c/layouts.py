"""numpy versions of the native kernels' packed weight layouts (``qat/runtime/native/qat_kernels.h``),
so that the generated program stores its weights ready to use, as const arrays in flash.
``tests/export/c/test_layouts.py`` checks them against the C packers byte for byte."""

from __future__ import annotations

import numpy as np

OC_BLOCK = 16  # QAT_OC_BLOCK
DENSE_WORDS = 64  # QAT_DENSE_WORDS


def sign_words(c: int) -> int:
    return -(-int(c) // 64)


def _pad_out(a: np.ndarray) -> np.ndarray:
    """Pad dimension 0 (output channels) with zeros to a multiple of OC_BLOCK."""
    pad = -a.shape[0] % OC_BLOCK
    return np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a


def pack_signs(bits: np.ndarray) -> np.ndarray:
    """bool ``[..., c]`` -> uint64 ``[..., ceil(c / 64)]``, channel ch at bit ch % 64 of word ch / 64."""
    c = bits.shape[-1]
    cw = sign_words(c)
    full = np.zeros(bits.shape[:-1] + (cw * 64,), np.uint8)
    full[..., :c] = bits
    return np.packbits(full, axis=-1, bitorder="little").view("<u8").astype(np.uint64)


def binary_dense(kh: int, kw: int, c_in: int) -> bool:
    """``qat_binary_dense``: whole (ky, kx, c_in) rows when channels do not fill whole words."""
    return c_in % 64 != 0 and sign_words(kh * kw * c_in) <= DENSE_WORDS


def binary_weights(codes: np.ndarray) -> np.ndarray:
    """+-1 codes OHWI ``[c_out, kh, kw, c_in]`` -> uint64 ``[c_out_pad / 16, kh, kw, cw, 16]`` (per
    position) or ``[c_out_pad / 16, rw, 16]`` (dense rows, rw = ceil(kh kw c_in / 64))."""
    o, kh, kw, c_in = codes.shape
    if binary_dense(kh, kw, c_in):
        words = _pad_out(pack_signs(codes.reshape(o, -1) > 0))  # [c_out_pad, rw]
    else:
        words = _pad_out(pack_signs(codes > 0))                   # [c_out_pad, kh, kw, cw]
    blocked = words.reshape((words.shape[0] // OC_BLOCK, OC_BLOCK) + words.shape[1:])
    return np.ascontiguousarray(np.moveaxis(blocked, 1, -1))


def ternary_weights(codes: np.ndarray) -> np.ndarray:
    """Ternary codes OHWI -> ``qat_ternary_pack_weights``' uint64 words: per block of 16 output
    channels the non-zero plane then the positive plane (each in :func:`binary_weights`' layout), then
    each channel's non-zero count ``[c_out_pad]``, then its weight sum per kernel position
    ``[c_out_pad / 16, kh, kw, 16]`` (int64 as two's complement)."""
    o, kh, kw, _ = codes.shape
    nz, pos = binary_weights(np.where(codes != 0, 1, -1)), binary_weights(np.where(codes > 0, 1, -1))
    blocks = nz.shape[0]
    planes = np.stack([nz.reshape(blocks, -1), pos.reshape(blocks, -1)], axis=1)  # [blocks, 2, rw * 16]
    counts = _pad_out((codes != 0).reshape(o, -1).sum(axis=1).astype(np.int64))
    sums = _pad_out(codes.astype(np.int64).sum(axis=3))                            # [c_out_pad, kh, kw]
    sums = np.moveaxis(sums.reshape(blocks, OC_BLOCK, kh, kw), 1, -1)
    return np.concatenate([planes.reshape(-1), counts.astype(np.uint64), sums.reshape(-1).astype(np.uint64)])


def int_weights(codes: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """Integer codes ``[c_out, K]`` (K in (kh, kw, c_in) order) and per-channel zero points ->
    ``w - zw`` int16 ``[c_out_pad / 16, K_pad / 2, 16, 2]``."""
    w = codes.astype(np.int64) - zero_point.astype(np.int64).reshape(-1, 1)
    if w.size and (w.min() < -(1 << 15) or w.max() >= 1 << 15):
        raise ValueError("weight codes minus zero point do not fit int16")
    o, k = w.shape
    w = np.concatenate([w, np.zeros((o, k % 2), np.int64)], axis=1) if k % 2 else w
    w = _pad_out(w.astype(np.int16))
    op, kp = w.shape
    return np.ascontiguousarray(w.reshape(op // OC_BLOCK, OC_BLOCK, kp // 2, 2).transpose(0, 2, 1, 3))


def int_conv_scratch_elems(kh: int, kw: int, c_in: int) -> int:
    """int16 scratch of ``qat_int_conv2d`` (``qat_int_conv_scratch_elems``: four im2col rows of
    ``K_pad`` entries); the generated program checks this against the library at run time."""
    k = kh * kw * c_in
    return 4 * (k + k % 2)
