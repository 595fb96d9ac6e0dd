"""Integer kernels: XNOR-popcount on packed words, int8 GEMM with zero-point corrections, im2col.

Convolutions are lowered to matrix products over im2col rows in the weight layout's reduction order
``(kh, kw, c_in)`` (``c_in`` fastest), the ``OHWI`` order in which weights are packed.

Binary (XNOR-popcount). With ``a, w in {-1, +1}`` stored as bits ``(v + 1) / 2``, a dot product over
``n`` positions is ``n - 2 * popcount(a XOR w)`` (XNOR counts agreements, XOR disagreements:
``popcount(xnor) = n - popcount(xor)``). Rows are padded with zero bits in both operands, which never
disagree. A convolution's zero padding is not a ±1 value: the model adds 0 there. The activation bits
of padded positions are 0, so for output position ``l`` with valid positions ``V_l``::

    dot[l, o] = |V_l| - 2 * (popcount(a_l XOR w_o) - popcount(w_o AND NOT V_l))

where the second popcount (the disagreements a padded position contributed) is a per-layer table.
Every quantity is an integer: the result is exact.

Ternary weights against signs (``ternary_popcount``). Weights ``w in {-1, 0, +1}`` as two bit planes,
``nz`` (``w != 0``) and ``pos`` (``w = +1``); over the non-zero weights a product is +1 where ``a`` and
``pos`` agree, so ``dot = popcount(nz) - 2 popcount((a XOR pos) AND nz)``. At padded positions ``a`` is
0 and the model adds 0, so with per-position tables ``popcount(nz AND NOT V_l)`` and
``popcount(pos AND NOT V_l)`` (``pos`` lies inside ``nz``)::

    dot[l, o] = (popcount(nz_o) - popcount(nz_o AND NOT V_l))
                - 2 * (popcount((a_l XOR pos_o) AND nz_o) - popcount(pos_o AND NOT V_l))

Integer GEMM (8-bit and narrower codes): with ``x = x' - s_x``, ``w = w' - s_w`` and ``x', w'`` int8,
``sum_k x_k w_k = sum x'w' - s_w sum x' - s_x sum w' + K s_x s_w`` (Jacob et al. 2018, eq. 7), the
int8 product by ``torch._int_mm`` (exact int32 accumulation). Wider codes use int64 matmul.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

_LITTLE = sys.byteorder == "little"
_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount_u64(words: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per-element popcount of a uint64 array into uint8 ``out`` (numpy >= 2: ``bitwise_count``)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words, out=out)
    out[...] = _BYTE_POPCOUNT[words.view(np.uint8)].reshape(words.shape + (8,)).sum(axis=-1)
    return out


def _int_mm_works() -> bool:
    """``torch._int_mm`` (int8 x int8 -> int32) exists on CPU in recent torch releases only."""
    try:
        a = torch.ones(2, 8, dtype=torch.int8)
        return bool(torch.equal(torch._int_mm(a, a.t()), torch.full((2, 2), 8, dtype=torch.int32)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


_INT_MM = _int_mm_works()


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


def conv_out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def im2col(x: torch.Tensor, kernel, stride, padding, dilation, pad_value=0) -> tuple[torch.Tensor, int, int]:
    """``x`` NCHW (any dtype) -> rows ``[N * Ho * Wo, kh * kw * C]`` in (kh, kw, c) order, the padded
    border filled with ``pad_value``; returns ``(rows, Ho, Wo)``."""
    kh, kw = _pair(kernel)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    n, c, h, w = x.shape
    ho, wo = conv_out_size(h, kh, sh, ph, dh), conv_out_size(w, kw, sw, pw, dw)
    xh = x.permute(0, 2, 3, 1)
    if ph or pw:
        xh = F.pad(xh, (0, 0, pw, pw, ph, ph), value=pad_value)
    xh = xh.contiguous()
    s = xh.stride()
    view = xh.as_strided((n, ho, wo, kh, kw, c), (s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]))
    return view.reshape(n * ho * wo, kh * kw * c), ho, wo


# --------------------------------------------------------------------------- binary
def pack_rows(bits: np.ndarray, words64: int) -> np.ndarray:
    """bool/uint8 rows ``[M, K]`` -> uint64 words ``[M, words64]``: bit ``k`` of a row is bit ``k % 64``
    of word ``k // 64`` (the format's little-endian stream, read 64 bits at a time)."""
    m, k = bits.shape
    packed = np.packbits(bits, axis=1, bitorder="little")  # [M, ceil(K / 8)], pad bits are 0
    if packed.shape[1] < words64 * 8:
        full = np.zeros((m, words64 * 8), dtype=np.uint8)
        full[:, :packed.shape[1]] = packed
        packed = full
    words = packed.view("<u8")
    return words if _LITTLE else words.astype(np.uint64)


def words64_from_file(buf: np.ndarray, rows: int, k_pad32: int) -> np.ndarray:
    """The 1-bit weight rows of an export (32-bit words, rows of ``k_pad32`` bits) as uint64 rows,
    one zero 32-bit word appended where a row has an odd number of words."""
    w32 = buf.view("<u4").reshape(rows, k_pad32 // 32)
    if w32.shape[1] % 2:
        w32 = np.concatenate([w32, np.zeros((rows, 1), dtype=w32.dtype)], axis=1)
    w32 = np.ascontiguousarray(w32, dtype="<u4")
    words = w32.view("<u8")
    return words if _LITTLE else words.astype(np.uint64)


def _popcount_xor_block(a: np.ndarray, wt: np.ndarray, out: np.ndarray, mt: np.ndarray | None = None) -> None:
    """``a`` ``[G, m, W]``, ``wt`` ``[G, W, O]`` -> ``out[g] += popcount(a[g] XOR w[g] [AND mask[g]])``
    ``[G, m, O]``."""
    at = np.ascontiguousarray(a.transpose(2, 0, 1))  # [W, G, m]
    tmp = np.empty(out.shape, dtype=np.uint64)
    pc = np.empty(out.shape, dtype=np.uint8)
    for k in range(at.shape[0]):  # one word column at a time: long vectorised loops, no 4-d temporary
        np.bitwise_xor(at[k][:, :, None], wt[:, k][:, None, :], out=tmp)
        if mt is not None:
            np.bitwise_and(tmp, mt[:, k][:, None, :], out=tmp)
        popcount_u64(tmp, pc)
        np.add(out, pc, out=out)


def popcount_xor(a: np.ndarray, w: np.ndarray, chunk: int = 1 << 14, mask: np.ndarray | None = None) -> np.ndarray:
    """``out[m, o] = sum_k popcount(a[m, k] XOR w[o, k])`` for uint64 word rows, int32; with a leading
    group dimension (``a [G, M, W]``, ``w [G, O, W]``) each group separately: ``out [G, M, O]``.
    ``mask`` (the shape of ``w``): ``popcount((a XOR w) AND mask)`` instead.

    Row blocks run on ``torch.get_num_threads()`` threads (numpy releases the GIL in its loops)."""
    grouped = a.ndim == 3
    a3, w3 = (a, w) if grouped else (a[None], w[None])
    m = a3.shape[1]
    out = np.zeros((a3.shape[0], m, w3.shape[1]), dtype=np.int32)
    wt = np.ascontiguousarray(w3.transpose(0, 2, 1))  # [G, W, O]
    mt = None if mask is None else np.ascontiguousarray((mask if grouped else mask[None]).transpose(0, 2, 1))
    chunk = max(1, chunk // a3.shape[0])
    starts = range(0, m, chunk)
    threads = min(torch.get_num_threads(), len(starts))

    def block(s):
        _popcount_xor_block(a3[:, s:s + chunk], wt, out[:, s:s + chunk], mt)

    if threads <= 1:
        for s in starts:
            block(s)
    else:
        list(_pool(threads).map(block, starts))
    return out if grouped else out[0]


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(n: int) -> ThreadPoolExecutor:
    if n not in _POOLS:
        _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="qat-runtime")
    return _POOLS[n]


def group_rows(rows: torch.Tensor, groups: int, in_channels: int) -> torch.Tensor:
    """im2col rows ``[M, kk * C]`` ((kh, kw, c) order) -> ``[G, M, kk * C / G]``: each group's
    channels, in the same order (the ``OHWI`` reduction of a grouped convolution's weight rows)."""
    if groups == 1:
        return rows[None]
    m = rows.shape[0]
    return rows.reshape(m, -1, groups, in_channels // groups).permute(2, 0, 1, 3).reshape(groups, m, -1)


class BinaryMatmul:
    """``dot = n - 2 * popcount(a XOR w)`` against fixed ±1 weight rows (packed uint64)."""

    def __init__(self, words: np.ndarray, k: int):
        self.words = words
        self.k = k
        self.words64 = words.shape[1]

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ±1 codes ``[N, K]`` -> int32 ``[N, O]``."""
        a = pack_rows((x > 0).numpy(), self.words64)
        return torch.from_numpy(self.k - 2 * popcount_xor(a, self.words))


class BinaryConv2d(BinaryMatmul):
    """XNOR-popcount convolution with exact zero padding (see the module docstring); a grouped
    convolution (depthwise too) is ``groups`` such products, each over its own channels."""

    def __init__(self, words, in_channels, kernel, stride, padding, dilation, groups: int = 1):
        kh, kw = _pair(kernel)
        super().__init__(words, kh * kw * in_channels // groups)
        self.geom = (kernel, stride, padding, dilation)
        self.in_channels = in_channels
        self.groups = groups
        o = words.shape[0]
        self.gwords = words.reshape(groups, o // groups, self.words64)  # [G, O/G, W]
        self._tables: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def _packed_groups(self, rows: torch.Tensor) -> np.ndarray:
        """bool im2col rows ``[M, kk * C]`` -> packed words per group ``[G, M, W]``."""
        g = group_rows(rows, self.groups, self.in_channels)
        packed = pack_rows(g.reshape(-1, g.shape[-1]).numpy(), self.words64)
        return packed.reshape(self.groups, g.shape[1], self.words64)

    def _padding_tables(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """``(n_valid [L, 1], pad_disagree [L, O])`` for an ``h x w`` input, cached."""
        key = (h, w)
        if key not in self._tables:
            ones = torch.ones(1, self.in_channels, h, w, dtype=torch.uint8)
            valid, _, _ = im2col(ones, *self.geom, pad_value=0)
            valid = valid.bool()
            invalid = self._packed_groups(~valid)   # [G, L, W]; the same in every group
            n_valid = valid.numpy().sum(axis=1, keepdims=True).astype(np.int32) // self.groups
            # popcount(w AND invalid) = (popcount(w) + popcount(invalid) - popcount(w XOR invalid)) / 2
            pc_w = popcount_u64(self.gwords, np.empty(self.gwords.shape, np.uint8)).sum(axis=2).astype(np.int32)
            pc_i = popcount_u64(invalid, np.empty(invalid.shape, np.uint8)).sum(axis=2, keepdims=True).astype(
                np.int32)
            pad_dis = (pc_w[:, None, :] + pc_i - popcount_xor(invalid, self.gwords)) // 2  # [G, L, O/G]
            l = pad_dis.shape[1]
            self._tables[key] = (n_valid, pad_dis.transpose(1, 0, 2).reshape(l, -1).astype(np.int32))
        return self._tables[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ±1 codes NCHW -> int32 accumulators NCHW."""
        n, _, h, w = x.shape
        rows, ho, wo = im2col(x > 0, *self.geom, pad_value=False)
        dis = popcount_xor(self._packed_groups(rows), self.gwords)  # [G, N*L, O/G]
        dis = dis.transpose(1, 0, 2).reshape(rows.shape[0], -1)     # [N*L, O], o = g O/G + j
        n_valid, pad_dis = self._padding_tables(h, w)
        l = ho * wo
        dis = dis.reshape(n, l, -1)
        dot = n_valid[None] - 2 * (dis - pad_dis[None])
        return torch.from_numpy(dot.reshape(n, ho, wo, -1)).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- ternary x sign
def ternary_planes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ternary codes ``[O, K]`` -> ``(nz, pos)`` uint64 word rows ``[O, ceil(K / 64)]``."""
    words64 = -(-codes.shape[1] // 64)
    return pack_rows(codes != 0, words64), pack_rows(codes > 0, words64)


class TernaryMatmul:
    """``dot = popcount(nz) - 2 popcount((a XOR pos) AND nz)`` against fixed ternary weight rows."""

    def __init__(self, codes: np.ndarray):
        self.k = codes.shape[1]
        self.nz, self.pos = ternary_planes(codes)
        self.words64 = self.nz.shape[1]
        self.nnz = popcount_u64(self.nz, np.empty(self.nz.shape, np.uint8)).sum(axis=-1).astype(np.int32)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ±1 codes ``[N, K]`` -> int32 ``[N, O]``."""
        a = pack_rows((x > 0).numpy(), self.words64)
        return torch.from_numpy(self.nnz[None] - 2 * popcount_xor(a, self.pos, mask=self.nz))


class TernaryConv2d(BinaryConv2d):
    """Ternary-weight, sign-input convolution with exact zero padding (see the module docstring),
    grouped convolutions as ``groups`` products, as :class:`BinaryConv2d`."""

    def __init__(self, codes: np.ndarray, in_channels, kernel, stride, padding, dilation, groups: int = 1):
        nz, pos = ternary_planes(codes)
        super().__init__(pos, in_channels, kernel, stride, padding, dilation, groups)
        self.gnz = nz.reshape(self.gwords.shape)  # [G, O/G, W]; self.gwords holds pos

    def _padding_tables(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """``(nz_valid [L, O], pos_pad [L, O])``: ``popcount(nz AND V_l)``, ``popcount(pos AND NOT V_l)``."""
        key = (h, w)
        if key not in self._tables:
            ones = torch.ones(1, self.in_channels, h, w, dtype=torch.uint8)
            valid, _, _ = im2col(ones, *self.geom, pad_value=0)
            invalid = self._packed_groups(~valid.bool())   # [G, L, W]
            zero = np.zeros_like(self.gwords)
            nnz = popcount_u64(self.gnz, np.empty(self.gnz.shape, np.uint8)).sum(axis=2).astype(np.int32)
            nz_valid = nnz[:, None, :] - popcount_xor(invalid, zero, mask=self.gnz)  # [G, L, O/G]
            pos_pad = popcount_xor(invalid, zero, mask=self.gwords)
            l = nz_valid.shape[1]
            self._tables[key] = tuple(t.transpose(1, 0, 2).reshape(l, -1).astype(np.int32)
                                      for t in (nz_valid, pos_pad))
        return self._tables[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ±1 codes NCHW -> int32 accumulators NCHW."""
        n, _, h, w = x.shape
        rows, ho, wo = im2col(x > 0, *self.geom, pad_value=False)
        dis = popcount_xor(self._packed_groups(rows), self.gwords, mask=self.gnz)  # [G, N*L, O/G]
        dis = dis.transpose(1, 0, 2).reshape(n, ho * wo, -1)
        nz_valid, pos_pad = self._padding_tables(h, w)
        dot = nz_valid[None] - 2 * (dis - pos_pad[None])
        return torch.from_numpy(dot.reshape(n, ho, wo, -1)).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- integer GEMM
def int8_shift(lo: int, hi: int) -> int | None:
    """``c0`` with ``code - c0`` in int8 for every code in ``[lo, hi]`` (0 when possible), or None."""
    if lo >= -128 and hi <= 127:
        return 0
    if hi - lo <= 255:
        return lo + 128
    return None


class IntMatmul:
    """Exact ``sum_k (x_k - zx)(w_ok - zw_o)`` for integer codes, ``x`` rows ``[M, K]``.

    ``w_codes`` int64 ``[O, K]``, ``w_zero`` int64 ``[O]``; ``x_range``/``x_zero`` describe the input
    codes. Uses int8 ``_int_mm`` when both sides fit 8 bits after a shift, else int64 matmul.
    """

    def __init__(self, w_codes: np.ndarray, w_zero: np.ndarray, x_range: tuple[int, int], x_zero: int):
        self.k = w_codes.shape[1]
        w_lo, w_hi = int(w_codes.min(initial=0)), int(w_codes.max(initial=0))
        cx, cw = int8_shift(*x_range), int8_shift(min(w_lo, int(w_zero.min(initial=0))),
                                                  max(w_hi, int(w_zero.max(initial=0))))
        self.x_zero = int(x_zero)
        self.int8 = cx is not None and cw is not None and _INT_MM
        if self.int8:
            self.cx = cx
            self.sx = self.x_zero - cx            # x = x' - sx
            if not -128 <= self.sx <= 127 or self.k >= (1 << 16):
                self.int8 = False
        if self.int8:
            # int32 throughout: |sum x'w'|, |sw sum x'|, |sx sum w'| < K 2^14 < 2^31 for K < 2^16
            wp = torch.from_numpy(w_codes - cw).to(torch.int8)          # w' [O, K]
            self.sw = torch.from_numpy(w_zero - cw).to(torch.int32)       # w = w' - sw
            colsum = wp.sum(dim=1, dtype=torch.int32)
            self.const = -self.sx * colsum + self.k * self.sx * self.sw   # - sx sum w' + K sx sw
            self.need_rowsum = bool(self.sw.any())
            if self.need_rowsum:  # one extra output column of ones gives sum_k x'_k from the same GEMM
                wp = torch.cat([wp, torch.ones(1, self.k, dtype=torch.int8)])
            self.wt = wp.t()                                              # [K, O(+1)], column-major
        else:
            self.w64 = torch.from_numpy(w_codes - w_zero[:, None]).to(torch.int64).t().contiguous()

    def pad_value(self) -> int:
        """The code-space value of a real zero in the input as :meth:`rows_input` expects it."""
        return self.sx if self.int8 else 0

    def prepare(self, codes: torch.Tensor) -> torch.Tensor:
        """Input codes -> the operand the matmul takes (int8 ``x'``, or int64 ``x - zx``)."""
        if self.int8:
            return (codes.to(torch.int16) - self.cx).to(torch.int8)
        return codes.to(torch.int64) - self.x_zero

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """Prepared rows ``[M, K]`` -> int32 ``[M, O]``."""
        if self.int8:
            acc = torch._int_mm(rows.contiguous(), self.wt)
            if self.need_rowsum:
                acc, rowsum = acc[:, :-1], acc[:, -1:]
                acc = acc - rowsum * self.sw[None, :]
            return acc + self.const[None, :] if self.sx else acc
        return (rows @ self.w64).to(torch.int32)


class GroupedIntMatmul:
    """:class:`IntMatmul` for a grouped convolution (depthwise too): ``groups`` exact int64 products
    in one batched matmul, each group's rows against its own output channels."""

    def __init__(self, w_codes: np.ndarray, w_zero: np.ndarray, x_zero: int, groups: int, in_channels: int):
        o, k = w_codes.shape
        self.groups, self.in_channels, self.x_zero = groups, in_channels, int(x_zero)
        w = torch.from_numpy(w_codes - w_zero[:, None]).to(torch.int64)       # [O, K/G... per group]
        self.w = w.reshape(groups, o // groups, k).transpose(1, 2).contiguous()  # [G, K_g, O/G]

    def pad_value(self) -> int:
        return 0

    def prepare(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.to(torch.int64) - self.x_zero

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """Prepared im2col rows ``[M, kk * C]`` -> int32 ``[M, O]`` (``o = g O/G + j``)."""
        out = torch.bmm(group_rows(rows, self.groups, self.in_channels), self.w)  # [G, M, O/G]
        return out.transpose(0, 1).reshape(rows.shape[0], -1).to(torch.int32)
