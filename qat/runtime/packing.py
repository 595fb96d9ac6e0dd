"""Bit packing of integer codes: the on-disk form of every quantized weight (numpy only).

Three encodings (``docs/export-format.md`` is the normative description):

``bits`` — fields of ``b`` bits (``1 <= b <= 16``) in a little-endian bit stream.
    The codes, a C-order array of logical shape ``S``, are viewed as a matrix of ``S[0]`` rows and
    ``K = prod(S[1:])`` columns (for a weight: one row per output channel, the reduction in the
    columns). Each row is padded with zero fields to ``K_pad = 32 * ceil(K / 32)`` columns, so every
    row is exactly ``K_pad * b / 32`` whole 32-bit words for any ``b``, and row ``r`` starts at byte
    ``r * K_pad * b / 8``. Field ``j`` of the padded matrix (``j = r * K_pad + k``) occupies stream
    bits ``[j*b, (j+1)*b)``, least significant bit first; stream bit ``i`` is bit ``i % 8`` of byte
    ``i // 8`` (equivalently bit ``i % 32`` of little-endian uint32 word ``i // 32``).
    Field value ``f`` maps to a code by ``values``:

    * ``sign``     (b = 1): code = ``2f - 1``, so bit 1 is +1 and bit 0 is -1;
    * ``signed``:  two's complement, code = ``f - 2^b`` if ``f >= 2^(b-1)`` else ``f``;
    * ``unsigned``: code = ``f``.

    For ``b = 1`` and ``K`` a multiple of 32 a row is exactly ``K / 32`` words: 1/32 of float32.

``planes`` — ternary codes as two 1-bit planes, each laid out as the ``bits`` encoding with ``b = 1``
    (rows padded to ``K_pad``): first the non-zero plane (bit 1 where the code is not 0), then the
    positive plane (bit 1 where the code is +1; 0 for -1 and for 0). 2 bits per code, word-aligned, and
    read by a popcount kernel as they are: against sign bits ``a`` (1 = +1) a row's dot product is
    ``popcount(nz) - 2 popcount((a XOR pos) AND nz)``.

``trits`` — ternary codes in base 3, five per byte (1.6 bits per code): the codes in C order,
    zero-padded to a multiple of 5, byte ``i`` = ``sum_{j<5} (c[5i + j] + 1) * 3^j`` (<= 242).
    Denser than ``bits`` with ``b = 2``, but not word-aligned: a runtime unpacks it at load time.
"""

from __future__ import annotations

import math

import numpy as np

ROW_ALIGN = 32  # columns per row are padded to a multiple of this (=> whole 32-bit words)
MAX_FIELD_BITS = 16
VALUE_MAPS = ("sign", "signed", "unsigned")


class PackingError(ValueError):
    """Codes that do not fit the requested encoding, or a buffer of the wrong length."""


def code_range(bits: int, values: str) -> tuple[int, int]:
    """Smallest and largest code a field of ``bits`` bits holds under ``values``."""
    _check(bits, values)
    if values == "sign":
        return -1, 1
    if values == "signed":
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _check(bits: int, values: str) -> None:
    if values not in VALUE_MAPS:
        raise PackingError(f"values must be one of {VALUE_MAPS}, got {values!r}")
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_FIELD_BITS:
        raise PackingError(f"bits must be an int in [1, {MAX_FIELD_BITS}], got {bits!r}")
    if values == "sign" and bits != 1:
        raise PackingError(f"'sign' fields are 1 bit, got bits={bits}")
    if values == "signed" and bits < 2:
        raise PackingError("'signed' fields need bits >= 2 (use 'sign' for 1-bit codes)")


def matrix_shape(shape) -> tuple[int, int, int]:
    """``(rows, K, K_pad)`` of the packing matrix of a logical shape."""
    shape = tuple(int(s) for s in shape)
    if not shape:
        shape = (1,)
    rows = shape[0]
    k = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    return rows, k, ROW_ALIGN * math.ceil(k / ROW_ALIGN) if k else 0


def packed_nbytes(shape, bits: int, encoding: str = "bits") -> int:
    """Bytes of the packed form of codes of a logical ``shape``."""
    if encoding == "trits":
        return math.ceil(int(np.prod(shape, dtype=np.int64)) / 5)
    rows, _, k_pad = matrix_shape(shape)
    return rows * k_pad * bits // 8


def pack_bits(codes: np.ndarray, bits: int, values: str) -> np.ndarray:
    """Pack integer ``codes`` (any shape) into the ``bits`` encoding; returns a uint8 buffer."""
    _check(bits, values)
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iub":
        raise PackingError(f"codes must be integers, got dtype {codes.dtype}")
    lo, hi = code_range(bits, values)
    c = codes.astype(np.int64)
    if c.size and (c.min() < lo or c.max() > hi):
        raise PackingError(f"codes span [{c.min()}, {c.max()}], outside [{lo}, {hi}] of {bits}-bit "
                           f"{values} fields")
    if values == "sign":
        if c.size and np.any(c == 0):
            raise PackingError("'sign' codes must be -1 or +1, found 0")
        f = (c + 1) >> 1
    elif values == "signed":
        f = c & ((1 << bits) - 1)
    else:
        f = c
    rows, k, k_pad = matrix_shape(codes.shape)
    mat = np.zeros((rows, k_pad), dtype=np.uint32)
    mat[:, :k] = f.reshape(rows, k)
    stream = ((mat[..., None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(stream.reshape(-1), bitorder="little")


def unpack_bits(buf: np.ndarray, shape, bits: int, values: str, dtype=np.int32) -> np.ndarray:
    """Inverse of :func:`pack_bits`: codes of logical ``shape`` (as ``dtype``)."""
    _check(bits, values)
    buf = np.asarray(buf)
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise PackingError(f"packed buffer must be 1-d uint8, got {buf.dtype} of shape {buf.shape}")
    rows, k, k_pad = matrix_shape(shape)
    want = rows * k_pad * bits // 8
    if buf.size != want:
        raise PackingError(f"packed buffer has {buf.size} bytes; shape {list(shape)} at {bits} bits "
                           f"needs {want}")
    stream = np.unpackbits(buf, bitorder="little").reshape(rows, k_pad, bits).astype(np.int64)
    f = (stream << np.arange(bits, dtype=np.int64)).sum(axis=-1)[:, :k]
    if values == "sign":
        c = 2 * f - 1
    elif values == "signed":
        c = np.where(f >= (1 << (bits - 1)), f - (1 << bits), f)
    else:
        c = f
    return c.reshape(tuple(int(s) for s in shape)).astype(dtype)


def pack_trits(codes: np.ndarray) -> np.ndarray:
    """Ternary codes in ``{-1, 0, 1}`` (any shape) -> base-3 bytes, five codes per byte."""
    c = np.asarray(codes)
    if c.dtype.kind not in "iub":
        raise PackingError(f"codes must be integers, got dtype {c.dtype}")
    c = c.reshape(-1).astype(np.int64)
    if c.size and (c.min() < -1 or c.max() > 1):
        raise PackingError(f"trit codes must be in {{-1, 0, 1}}, got range [{c.min()}, {c.max()}]")
    n = math.ceil(c.size / 5) * 5
    d = np.ones(n, dtype=np.int64)  # digit 1 is code 0: the padding
    d[: c.size] = c + 1
    return (d.reshape(-1, 5) * (3 ** np.arange(5))).sum(axis=1).astype(np.uint8)


def unpack_trits(buf: np.ndarray, shape, dtype=np.int32) -> np.ndarray:
    """Inverse of :func:`pack_trits`."""
    buf = np.asarray(buf)
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise PackingError(f"packed buffer must be 1-d uint8, got {buf.dtype} of shape {buf.shape}")
    n = int(np.prod(shape, dtype=np.int64))
    if buf.size != math.ceil(n / 5):
        raise PackingError(f"trit buffer has {buf.size} bytes; {n} codes need {math.ceil(n / 5)}")
    if buf.size and buf.max() > 242:
        raise PackingError(f"byte value {int(buf.max())} is not 5 base-3 digits (max 242)")
    d = (buf.astype(np.int64)[:, None] // (3 ** np.arange(5))) % 3
    return (d.reshape(-1)[:n] - 1).reshape(tuple(int(s) for s in shape)).astype(dtype)


def pack_planes(codes: np.ndarray) -> np.ndarray:
    """Ternary codes in ``{-1, 0, 1}`` (any shape) -> the non-zero plane then the positive plane."""
    c = np.asarray(codes)
    if c.dtype.kind not in "iub":
        raise PackingError(f"codes must be integers, got dtype {c.dtype}")
    if c.size and (c.min() < -1 or c.max() > 1):
        raise PackingError(f"ternary codes must be in {{-1, 0, 1}}, got range [{c.min()}, {c.max()}]")
    return np.concatenate([pack_bits((c != 0).astype(np.int64), 1, "unsigned"),
                           pack_bits((c > 0).astype(np.int64), 1, "unsigned")])


def unpack_planes(buf: np.ndarray, shape, dtype=np.int32) -> np.ndarray:
    """Inverse of :func:`pack_planes`; a positive bit where the non-zero bit is 0 is an error."""
    buf = np.asarray(buf)
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise PackingError(f"packed buffer must be 1-d uint8, got {buf.dtype} of shape {buf.shape}")
    half = packed_nbytes(shape, 1)
    if buf.size != 2 * half:
        raise PackingError(f"plane buffer has {buf.size} bytes; shape {list(shape)} needs 2 x {half}")
    nz = unpack_bits(buf[:half], shape, 1, "unsigned", np.int64)
    pos = unpack_bits(buf[half:], shape, 1, "unsigned", np.int64)
    if np.any(pos > nz):
        raise PackingError("ternary planes mark a zero weight positive (positive bit set, non-zero bit clear)")
    return (nz * (2 * pos - 1)).astype(dtype)


def unpack(buf: np.ndarray, spec: dict, dtype=np.int32) -> np.ndarray:
    """Unpack a weight buffer described by a manifest ``weight`` entry (``encoding``, ``shape``,
    ``bits``, ``values``)."""
    if spec["encoding"] == "trits":
        return unpack_trits(buf, spec["shape"], dtype)
    if spec["encoding"] == "planes":
        return unpack_planes(buf, spec["shape"], dtype)
    if spec["encoding"] == "bits":
        return unpack_bits(buf, spec["shape"], int(spec["bits"]), spec["values"], dtype)
    raise PackingError(f"unknown encoding {spec['encoding']!r}; expected 'bits', 'planes' or 'trits'")
