"""Native versions of the runtime's integer operations, each built from its manifest entry next to
the reference op (``qat.runtime.ops``) that validated it, and computing the same integers.

* ``BinaryLayer``: ``xnor_popcount`` conv2d / linear on packed signs -> int32 accumulators, or, fused
  with the ``threshold`` (and a ``maxpool2d`` between them) that reads them, packed signs;
  ``TernaryLayer`` the same for ``ternary_popcount`` (ternary weights as two bit planes);
* ``IntLayer``: ``int`` conv2d / linear on 8-bit codes -> int32, or fused with its ``requantize``;
* ``MaxPoolI32``, ``ThresholdPack``, ``Requantize``, ``Flatten``: the same ops on native values.

A linear layer reading a flattened ``[c, h, w]`` map is run as the convolution with an ``h x w``
kernel over that map (its weight columns reordered from ``(c, h, w)`` to ``(h, w, c)``), so the
NHWC layout never needs to be undone before a classifier.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import numpy as np
import torch

from qat.runtime import kernels, packing, quantize as Q
from qat.runtime.native import library as L
from qat.runtime.native.values import Nhwc, Packed, as_nhwc, as_packed, sign_words

OUT_TYPES = {torch.uint8: L.U8, torch.int8: L.I8, torch.int16: L.I16, torch.int32: L.I32}


class NotNative(Exception):
    """This op, as exported, has no native kernel: the reference op runs it."""


# A kernel call is split over threads only when it takes longer than this on one thread: handing
# rows to the pool's threads costs tens of microseconds from Python, more than a small layer (a
# ResNet-20 layer at batch 1: about 40 us) would gain.
SPLIT_SECONDS = 2e-4

_LOCAL = threading.local()


@contextmanager
def _thread_flag(name: str):
    """Sets ``name`` on the calling thread for the block, then restores what it was."""
    before = getattr(_LOCAL, name, False)
    setattr(_LOCAL, name, True)
    try:
        yield
    finally:
        setattr(_LOCAL, name, before)


def serial():
    """On the thread that enters it, kernel calls run whole on that thread: its caller already runs
    separate images on the other threads (``plan.NativeProgram.run``)."""
    return _thread_flag("serial")


def reuse():
    """On the thread that enters it, ops write their outputs into buffers they keep from one call to
    the next (``output``): the fused plan, whose values all die within a chunk but its output (which
    ``plan.NativeProgram`` copies). Taking megabytes of fresh memory at every op, which the
    allocator gives back to the system and faults in again, costs more than some kernels."""
    return _thread_flag("reuse")


def on_threads(fn, threads: int) -> None:
    """``fn(0)`` on the calling thread and ``fn(1) .. fn(threads - 1)`` on the pool's, at once;
    returns when all are done (re-raising a worker's error)."""
    rest = [kernels._pool(threads - 1).submit(fn, i) for i in range(1, threads)]
    try:
        fn(0)
    finally:
        for f in rest:
            f.result()


def output(owner, slot: int, shape, dtype) -> torch.Tensor:
    """An uninitialised tensor for output ``slot`` of ``owner``: inside ``reuse``, the one the owner
    keeps for this thread, shape and dtype (its previous contents dead by then); else a new one."""
    if not getattr(_LOCAL, "reuse", False):
        return torch.empty(shape, dtype=dtype)
    kept = owner.__dict__.setdefault("_outputs", {})
    key = (threading.get_ident(), slot, tuple(shape), dtype)
    t = kept.get(key)
    if t is None:
        if len(kept) >= 32:  # (many batch sizes: keep the memory bounded)
            kept.clear()
        t = kept[key] = torch.empty(shape, dtype=dtype)
    return t


def parallel_rows(fn, rows: int, alone: dict | None = None) -> None:
    """``fn(row0, row1)`` over ``[0, rows)`` split into ``torch.get_num_threads()`` ranges (ctypes
    releases the GIL during each kernel call); the calling thread computes the first range.

    ``alone``: the caller's record of how long a call over ``rows`` took on one thread. The first
    call of each size runs on one thread and is timed; later calls split only where that took
    longer than ``SPLIT_SECONDS``. Without it, or with ``SPLIT_SECONDS <= 0``, every call with more
    than one thread splits."""
    if getattr(_LOCAL, "serial", False):
        fn(0, rows)
        return
    threads = max(1, min(torch.get_num_threads(), rows))
    if threads > 1 and alone is not None and SPLIT_SECONDS > 0:
        took = alone.get(rows)
        if took is None:
            t = time.perf_counter()
            fn(0, rows)
            alone[rows] = time.perf_counter() - t
            return
        if took < SPLIT_SECONDS:
            threads = 1
    if threads == 1:
        fn(0, rows)
        return
    bounds = [rows * i // threads for i in range(threads + 1)]
    on_threads(lambda i: fn(bounds[i], bounds[i + 1]), threads)


def pool_out_size(size, k, s, p, d, ceil_mode) -> int:
    """torch's max_pool2d output size."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


class NativeOp:
    def __init__(self, inputs, outputs, name):
        self.inputs, self.outputs, self.name = list(inputs), list(outputs), name
        self.alone = {}  # seconds of one call on one thread, by rows (parallel_rows)


class _Layer(NativeOp):
    """Geometry and weight codes (OHWI) of a conv2d / linear entry read as a convolution."""

    def __init__(self, spec, tensors, in_chw, outputs):
        super().__init__(spec["inputs"], outputs, spec.get("name"))
        self.in_chw = in_chw
        c, h, w = in_chw
        w_spec = spec["weight"]
        codes = packing.unpack(tensors[w_spec["tensor"]], w_spec, dtype=np.int32)
        if spec["op"] == "conv2d":
            if int(spec.get("groups", 1)) != 1:
                raise NotNative("grouped convolution")
            k, s, p, d = (kernels._pair(spec[f]) for f in ("kernel_size", "stride", "padding", "dilation"))
            self.flat = False
        else:  # linear over a flattened [c, h, w] map = conv with an h x w kernel
            o = codes.shape[0]
            codes = codes.reshape(o, c, h, w).transpose(0, 2, 3, 1)
            k, s, p, d = (h, w), (1, 1), (0, 0), (1, 1)
            self.flat = True
        self.c_out = codes.shape[0]
        self.codes = np.ascontiguousarray(codes)
        self.k, self.s, self.p, self.d = k, s, p, d
        self._geoms = {}
        self.ho = kernels.conv_out_size(h, k[0], s[0], p[0], d[0])
        self.wo = kernels.conv_out_size(w, k[1], s[1], p[1], d[1])

    def geom(self, n: int) -> L.ConvGeom:
        """The geometry for a batch of n (kept: the same few batch sizes come back)."""
        g = self._geoms.get(n)
        if g is None:
            c, h, w = self.in_chw
            g = self._geoms[n] = L.ConvGeom(n, h, w, c, self.c_out, *self.k, *self.s, *self.p, *self.d, self.ho,
                                            self.wo)
        return g


class BinaryLayer(_Layer):
    """``xnor_popcount`` (``kind = "binary"``); ``TernaryLayer``: ``ternary_popcount``, the same inputs,
    outputs and fused stages with the ternary kernel and its two weight planes."""

    kind = "binary"

    def __init__(self, lib, isa, spec, tensors, in_chw, outputs, threshold=None, pool=None):
        super().__init__(spec, tensors, in_chw, outputs)
        self.lib, self.fn = lib, getattr(lib, f"qat_{self.kind}_conv2d_{isa}")
        g = self.geom(1)
        if lib.qat_binary_row_words(g) > L.ROW_WORDS:
            raise NotNative(f"reduction rows longer than {L.ROW_WORDS} words")
        self.weights = torch.zeros(int(getattr(lib, f"qat_{self.kind}_weight_words")(g)), dtype=torch.int64)
        codes = np.ascontiguousarray(self.codes, np.int8)  # held: ptr() does not keep it alive
        L.check(getattr(lib, f"qat_{self.kind}_pack_weights")(g, L.ptr(codes), L.ptr(self.weights)),
                f"pack {self.kind} weights of {self.name}")
        self.thr = self.dir = self.pool = None
        if threshold is not None:
            self.thr, self.dir = threshold
        self.ptrs = (L.ptr(self.weights), None if self.thr is None else L.ptr(self.thr),
                     None if self.dir is None else L.ptr(self.dir))  # held by self
        if pool is not None:
            self.pool = MaxPoolBits(pool, (self.c_out, self.ho, self.wo), self.dir, lib)

    def run(self, env):
        x = as_packed(env[self.inputs[0]], self.in_chw)
        n = x.words.shape[0]
        g = self.geom(n)
        ww, thr, dr = self.ptrs
        if self.thr is None:
            out = output(self, 0, (n, self.ho, self.wo, self.c_out), torch.int32)
            acc, bits = L.ptr(out), None
        else:
            out = output(self, 0, (n, self.ho, self.wo, sign_words(self.c_out)), torch.int64)
            acc, bits = None, L.ptr(out)
        xw, fn = L.ptr(x.words), self.fn
        parallel_rows(lambda r0, r1: L.check(fn(g, xw, ww, acc, thr, dr, bits, r0, r1), self.name), n * self.ho,
                      self.alone)
        if self.thr is None:
            env[self.outputs[0]] = Nhwc(out, self.flat)
        elif self.pool is None:
            env[self.outputs[0]] = Packed(out, self.c_out, self.flat)
        else:
            env[self.outputs[0]] = self.pool.apply(Packed(out, self.c_out))


class TernaryLayer(BinaryLayer):
    kind = "ternary"


def threshold_tensors(op) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T int32, dir int8)`` of a reference ``Threshold`` op with an integer domain."""
    if op.spec["domain"] != "int":
        raise NotNative("float threshold")
    return op.t.to(torch.int32).contiguous(), torch.where(op.up, 1, -1).to(torch.int8).contiguous()


def requant_struct(op) -> tuple[L.Requant, tuple]:
    """ctypes constants of a reference ``Requantize`` op (and the tensors they point into)."""
    keep = (op.m0.to(torch.int32).contiguous(), op.n.to(torch.int8).contiguous(),
            op.bias.to(torch.int32).contiguous(), op.f.to(torch.int8).contiguous())
    rq = L.Requant(*(t.data_ptr() for t in keep), op.zp, op.lo, op.hi, OUT_TYPES[op.dtype])
    return rq, keep


class IntLayer(_Layer):
    def __init__(self, lib, isa, spec, tensors, in_chw, outputs, requant=None):
        super().__init__(spec, tensors, in_chw, outputs)
        self.lib = lib
        lo, hi = Q.code_bounds(spec["input"])
        _, self.zx = Q.scale_and_zero_point(spec["input"])
        if lo >= 0 and hi <= 255:
            self.x_type, self.x_dtype = L.U8, torch.uint8
        elif lo >= -128 and hi <= 127:
            self.x_type, self.x_dtype = L.I8, torch.int8
        else:
            raise NotNative(f"input codes [{lo}, {hi}] are wider than 8 bits")
        if abs(self.zx) > 255:
            raise NotNative("input zero point outside [-255, 255]")
        w_spec = spec["weight"]
        zw = tensors[w_spec["zero_point"]] if w_spec.get("zero_point") else np.zeros(1, np.int64)
        zw = np.broadcast_to(np.asarray(zw, np.int64).reshape(-1), (self.c_out,))
        wz = self.codes.reshape(self.c_out, -1).astype(np.int64) - zw[:, None]
        bound = max(abs(lo - self.zx), abs(hi - self.zx)) * int(np.abs(wz).sum(axis=1).max(initial=0))
        if np.abs(wz).max(initial=0) > 32767 or bound >= 2 ** 31:
            raise NotNative("weights or accumulators too wide for the int16 x int16 -> int32 kernel")
        g = self.geom(1)
        codes, zw32 = np.ascontiguousarray(self.codes, np.int32), np.ascontiguousarray(zw, np.int32)
        self.kernel = isa
        if isa == "avx512":  # int8 weights for vpdpbusd, where the operands fit (qat_kernels.h)
            zu = self.zx if self.x_type == L.U8 else self.zx + 128
            self.weights = torch.zeros(int(lib.qat_int8_weight_bytes(g)), dtype=torch.int8)
            rc = lib.qat_int8_pack_weights(g, L.ptr(codes), L.ptr(zw32), L.ptr(self.weights)) if 0 <= zu <= 255 else L.QAT_ERANGE
            if rc == L.QAT_ERANGE:
                self.kernel = "avx2"
            else:
                L.check(rc, f"pack int8 weights of {self.name}")
                self.scratch = (int(lib.qat_int8_conv_scratch_bytes(g)), torch.uint8)
        if self.kernel != "avx512":
            self.weights = torch.zeros(int(lib.qat_int_weight_elems(g)), dtype=torch.int16)
            L.check(lib.qat_int_pack_weights(g, L.ptr(codes), L.ptr(zw32), L.ptr(self.weights)),
                    f"pack int weights of {self.name}")
            self.scratch = (int(lib.qat_int_conv_scratch_elems(g)), torch.int16)
        self.fn = getattr(lib, f"qat_int_conv2d_{self.kernel}")
        self.weights_ptr, self._scratches = L.ptr(self.weights), {}
        self.rq = self.rq_keep = None
        if requant is not None:
            self.rq, self.rq_keep = requant_struct(requant)
            self.out_dtype = requant.dtype

    def run(self, env):
        x = as_nhwc(env[self.inputs[0]], self.in_chw)
        if x.dtype != self.x_dtype:
            x = x.to(self.x_dtype)
        n = x.shape[0]
        g = self.geom(n)
        if self.rq is None:
            out = output(self, 0, (n, self.ho, self.wo, self.c_out), torch.int32)
            acc, rq, codes = L.ptr(out), None, None
        else:
            out = output(self, 0, (n, self.ho, self.wo, self.c_out), self.out_dtype)
            acc, rq, codes = None, self.rq, L.ptr(out)
        xp, wp, fn, x_type, zx = L.ptr(x), self.weights_ptr, self.fn, self.x_type, self.zx

        def rows(r0, r1):
            L.check(fn(g, xp, x_type, zx, wp, self._scratch(), acc, rq, codes, r0, r1), self.name)

        parallel_rows(rows, n * self.ho, self.alone)
        env[self.outputs[0]] = Nhwc(out, self.flat)

    def _scratch(self) -> int:
        """The calling thread's im2col rows (kept: the thread pool's threads come back)."""
        t = self._scratches.get(threading.get_ident())
        if t is None:
            t = self._scratches[threading.get_ident()] = torch.empty(self.scratch[0], dtype=self.scratch[1])
        return t.data_ptr()


def _pool_geom(spec, chw):
    c, h, w = chw
    k, s, p, d = (kernels._pair(spec[f]) for f in ("kernel_size", "stride", "padding", "dilation"))
    if spec.get("stride") is None:
        s = k
    ceil = bool(spec.get("ceil_mode", False))
    ho = pool_out_size(h, k[0], s[0], p[0], d[0], ceil)
    wo = pool_out_size(w, k[1], s[1], p[1], d[1], ceil)
    return (h, w, c, *k, *s, *p, *d, ho, wo)


class MaxPoolBits:
    """Max pooling of accumulators folded through the threshold that follows it, on its bits."""

    def __init__(self, spec, chw, direction, lib):
        self.lib = lib
        self.g = _pool_geom(spec, chw)
        up = (direction > 0).numpy()
        mask = np.zeros(sign_words(chw[0]) * 64, dtype=np.uint8)
        mask[: len(up)] = up
        self.mask = torch.from_numpy(np.packbits(mask, bitorder="little").view("<i8").copy())
        self.alone = {}  # (not a NativeOp: the pooling stage of a BinaryLayer)

    def apply(self, x: Packed) -> Packed:
        n = x.words.shape[0]
        g = L.PoolGeom(n, *self.g)
        ho, wo = self.g[-2:]
        out = output(self, 0, (n, ho, wo, x.words.shape[3]), torch.int64)
        xp, mp, op = L.ptr(x.words), L.ptr(self.mask), L.ptr(out)
        parallel_rows(lambda r0, r1: L.check(self.lib.qat_maxpool_bits(g, xp, mp, op, r0, r1), "maxpool bits"),
                      n * ho, self.alone)
        return Packed(out, x.c)


class MaxPoolI32(NativeOp):
    def __init__(self, lib, spec, chw):
        super().__init__(spec["inputs"], spec["outputs"], spec.get("name"))
        self.lib, self.chw, self.g = lib, chw, _pool_geom(spec, chw)

    def run(self, env):
        x = as_nhwc(env[self.inputs[0]], self.chw)
        if x.dtype != torch.int32:
            x = x.to(torch.int32)
        n = x.shape[0]
        g = L.PoolGeom(n, *self.g)
        ho, wo = self.g[-2:]
        out = output(self, 0, (n, ho, wo, self.chw[0]), torch.int32)
        xp, op = L.ptr(x), L.ptr(out)
        parallel_rows(lambda r0, r1: L.check(self.lib.qat_maxpool_i32(g, xp, op, r0, r1), self.name), n * ho,
                      self.alone)
        env[self.outputs[0]] = Nhwc(out)


class ThresholdPack(NativeOp):
    def __init__(self, lib, ref_op, chw, flat):
        super().__init__(ref_op.inputs, ref_op.outputs, ref_op.name)
        self.lib, self.chw, self.flat = lib, chw, flat
        self.thr, self.dir = threshold_tensors(ref_op)

    def run(self, env):
        x = as_nhwc(env[self.inputs[0]], self.chw).to(torch.int32).contiguous()
        n, h, w, c = x.shape
        out = output(self, 0, (n, h, w, sign_words(c)), torch.int64)
        L.check(self.lib.qat_threshold_pack(L.ptr(x), n * h * w, c, L.ptr(self.thr), L.ptr(self.dir),
                                            L.ptr(out)), self.name)
        env[self.outputs[0]] = Packed(out, c, self.flat)


class Requantize(NativeOp):
    def __init__(self, lib, ref_op, chw, flat):
        super().__init__(ref_op.inputs, ref_op.outputs, ref_op.name)
        self.lib, self.chw, self.dtype, self.flat = lib, chw, ref_op.dtype, flat
        self.rq, self.keep = requant_struct(ref_op)

    def run(self, env):
        x = as_nhwc(env[self.inputs[0]], self.chw).to(torch.int32).contiguous()
        n, h, w, c = x.shape
        out = output(self, 0, (n, h, w, c), self.dtype)
        L.check(self.lib.qat_requantize(L.ptr(x), n * h * w, c, self.rq, L.ptr(out)), self.name)
        env[self.outputs[0]] = Nhwc(out, self.flat)


class Flatten(NativeOp):
    """``flatten(1, -1)`` of a native value: the same storage, read as ``[n, c * h * w]``."""

    def run(self, env):
        v = env[self.inputs[0]]
        env[self.outputs[0]] = (Packed(v.words, v.c, True) if isinstance(v, Packed)
                                else Nhwc(v.data, True))
