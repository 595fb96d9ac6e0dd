"""Values in the native layouts, and their conversion to and from the reference runtime's.

The reference runtime keeps NCHW (or NC) torch tensors; the native kernels read and write NHWC:
packed signs (``Packed``: 64 channels a uint64 word) for binary layers, integer tensors (``Nhwc``)
for accumulators and 8-bit codes. A value converts to the reference form only when a reference op
or the caller reads it, so consecutive native ops never leave the NHWC layout.
"""

from __future__ import annotations

import torch

from qat.runtime.native.library import check, load_library, ptr


def sign_words(c: int) -> int:
    return (c + 63) // 64


class Packed:
    """Sign codes as packed bits ``words [n, h, w, ceil(c / 64)]`` (int64 storage of uint64 words).
    ``flat``: the reference form is ``[n, c * h * w]`` (after a flatten, or a linear layer's output)."""

    __slots__ = ("words", "c", "flat")

    def __init__(self, words: torch.Tensor, c: int, flat: bool = False):
        self.words, self.c, self.flat = words, c, flat

    @property
    def chw(self) -> tuple[int, int, int]:
        return self.c, self.words.shape[1], self.words.shape[2]

    def reference(self) -> torch.Tensor:
        n, h, w, _ = self.words.shape
        codes = torch.empty(n, h, w, self.c, dtype=torch.int8)
        check(load_library().qat_unpack_signs(ptr(self.words), n * h * w, self.c, ptr(codes)), "unpack signs")
        return _nchw_view(codes, self.flat)


class Nhwc:
    """A tensor ``data [n, h, w, c]``: accumulators or codes, or a fused float stage's value; ``flat``
    as for Packed."""

    __slots__ = ("data", "flat")

    def __init__(self, data: torch.Tensor, flat: bool = False):
        self.data, self.flat = data, flat

    @property
    def chw(self) -> tuple[int, int, int]:
        return self.data.shape[3], self.data.shape[1], self.data.shape[2]

    def reference(self) -> torch.Tensor:
        return _nchw_view(self.data, self.flat)


def _nchw_view(nhwc: torch.Tensor, flat: bool) -> torch.Tensor:
    """An NHWC tensor as the reference's NCHW value: a channels_last view (no copy; elementwise
    ops keep that memory format, and ``plan.RefStep`` makes it contiguous for any other op), or
    the ``[n, c * h * w]`` flattening in (c, h, w) order."""
    out = nhwc.permute(0, 3, 1, 2)
    return out.reshape(out.shape[0], -1) if flat else out


NATIVE = (Packed, Nhwc)


def reference(v):
    return v.reference() if isinstance(v, NATIVE) else v


def _nchw(t: torch.Tensor, chw: tuple[int, int, int]) -> torch.Tensor:
    c, h, w = chw
    if t.numel() != t.shape[0] * c * h * w:
        raise ValueError(f"a value of shape {list(t.shape)} cannot be read as [N, {c}, {h}, {w}]")
    return t.reshape(t.shape[0], c, h, w)


def as_packed(v, chw: tuple[int, int, int]) -> Packed:
    """Sign codes (+1 / -1) in the packed layout of a ``[c, h, w]`` map."""
    if isinstance(v, Packed) and v.chw == chw:
        return v
    t = _nchw(reference(v), chw)
    codes = (t > 0).permute(0, 2, 3, 1).to(torch.int8).contiguous()
    n, h, w, c = codes.shape
    words = torch.empty(n, h, w, sign_words(c), dtype=torch.int64)
    check(load_library().qat_pack_signs(ptr(codes), n * h * w, c, ptr(words)), "pack signs")
    return Packed(words, c)


def as_nhwc(v, chw: tuple[int, int, int]) -> torch.Tensor:
    """Integer codes as an NHWC tensor of a ``[c, h, w]`` map."""
    if isinstance(v, Nhwc) and v.chw == chw:
        return v.data
    return _nchw(reference(v), chw).permute(0, 2, 3, 1).contiguous()
