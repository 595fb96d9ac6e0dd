"""The float residual stream of a ResNet block as one native pass (``residual_avx512.c``).

An exported ResNet keeps, after the last convolution of each block, a chain of float ops on its
int32 accumulators::

    dequantize -> [batchnorm] -> [add residual] -> [relu | hardtanh] -> [quantize sign | affine]

which the reference runtime runs as 4 to 5 torch ops, each a pass over memory with its own
allocation (about half of a native bnn ResNet-20's time). ``ResidualStage`` computes the chain in
one pass over the NHWC accumulators, writing the float value the next block adds (as a channels_last
view) and the next layer's packed signs or 8-bit codes. Its float32 arithmetic is the reference's
operation by operation; torch's BatchNorm kernel computes ``y * alpha + beta`` with or without a
fused multiply-add depending on its build and CPU, so each stage is checked at load on a probe
against the reference ops (every variant in turn) and left to them where none agrees.

``FloatThreshold``: a ``threshold`` on float values (a float first layer's BatchNorm + sign) written
straight as the next binary layer's packed signs, one compare per value, exact.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from qat.runtime import quantize as Q
from qat.runtime.native import library as L
from qat.runtime.native.values import Nhwc, Packed, as_nhwc, reference, sign_words
from qat.runtime.native.ops import NativeOp, NotNative, output, parallel_rows

EXACT32, BN, BN_FMA, FLOAT_IN = 1, 2, 4, 8  # QAT_RES_* of qat_residual.h


class Residual(ctypes.Structure):
    _fields_ = [("scale", ctypes.c_void_p), ("scale64", ctypes.c_void_p), ("dq_bias", ctypes.c_void_p),
                ("alpha", ctypes.c_void_p), ("beta", ctypes.c_void_p), ("mode", ctypes.c_int32),
                ("lo", ctypes.c_float), ("hi", ctypes.c_float), ("inv_scale", ctypes.c_float),
                ("zero_point", ctypes.c_float), ("qlo", ctypes.c_float), ("qhi", ctypes.c_float),
                ("code_type", ctypes.c_int32)]


# ops that may sit between two ops of a chain (a downsampling block's shortcut, computed from an
# earlier value): they run, as reference ops, before the fused stage
GAP_OPS = ("pad", "slice")


def _match(plan, ops, i):
    """``(roles, value, gap ops, ops used)`` of a residual chain starting at the dequantize (or, on a
    float input, the batchnorm) ``ops[i]``: its ops by role, the name of the chain's float value, the
    ops between them; or None."""
    if ops[i].spec["op"] == "quantize":  # a float input's quantization alone (a network's input)
        return ({"quantize": ops[i]}, ops[i].inputs[0], [], 1) if _quantizes_natively(ops[i]) else None
    first = "dequantize" if ops[i].spec["op"] == "dequantize" else "batchnorm"
    roles, gaps, cur, j = {first: ops[i]}, [], ops[i].outputs[0], i + 1

    def reader(kinds):
        k = j
        while k < len(ops) and ops[k].spec["op"] in GAP_OPS and cur not in ops[k].inputs:
            k += 1
        ok = (k < len(ops) and ops[k].spec["op"] in kinds and cur in ops[k].inputs and plan._single(cur, k, ops))
        return k if ok else None

    for role, kinds in (("batchnorm", ("batchnorm",)), ("add", ("add",)), ("clamp", ("relu", "hardtanh"))):
        if role in roles:
            continue
        k = reader(kinds)
        if k is None or (role == "add" and (len(ops[k].inputs) != 2 or ops[k].inputs[0] == ops[k].inputs[1])):
            continue
        gaps += ops[j:k]
        roles[role], cur, j = ops[k], ops[k].outputs[0], k + 1
    if len(roles) < 2 and first != "dequantize":  # (a dequantize alone: one pass instead of 4 torch ops)
        return None
    # the quantize right after may read the chain's value even when others read it too
    if j < len(ops) and ops[j].spec["op"] == "quantize" and ops[j].inputs == [cur] and _quantizes_natively(ops[j]):
        roles["quantize"], j = ops[j], j + 1
    return roles, cur, gaps, j - i


def _quantizes_natively(op) -> bool:
    return op.quant["kind"] == "sign" or (op.quant["kind"] == "affine" and int(op.quant["bits"]) == 8)


class ResidualStage(NativeOp):
    def __init__(self, lib, roles: dict, value: str, chw, needs_value: bool, bn_fma: bool, flat: bool = False):
        d = roles.get("dequantize")
        first = d or roles.get("batchnorm") or roles["quantize"]
        inputs = [first.inputs[0]]
        self.res_name = None
        if "add" in roles:
            a = roles["add"]
            prev = (roles.get("batchnorm") or d).outputs[0]
            self.res_name = a.inputs[1] if a.inputs[0] == prev else a.inputs[0]
            inputs.append(self.res_name)
        q = roles.get("quantize")
        outputs = ([value] if needs_value else []) + (q.outputs if q is not None else [])
        super().__init__(inputs, outputs, f"{first.name} (fused float stage)")
        self.lib, self.chw, self.value, self.needs_value = lib, chw, value, needs_value
        self.flat = flat  # the chain's values are [n, c] (a classifier's), read as [n, c, 1, 1]
        c = chw[0]
        keep = []  # the arrays the structure points into

        def arr(t, dtype):
            a = np.ascontiguousarray(np.broadcast_to(np.asarray(t, dtype).reshape(-1), (c,)))
            keep.append(a)
            return a.ctypes.data

        p = Residual()
        if d is None:
            mode = FLOAT_IN
        elif d.exact32:
            mode, p.scale = EXACT32, arr(d.scale32.numpy(), np.float32)
        else:
            mode, p.scale64 = 0, arr(d.scale.numpy(), np.float64)
        p.dq_bias = arr(d.bias.numpy(), np.float32) if d is not None and d.bias is not None else None
        self.float_in = d is None
        if "batchnorm" in roles:
            bn = roles["batchnorm"]
            mode |= BN | (BN_FMA if bn_fma else 0)
            prm = {k: (None if v is None else np.ascontiguousarray(v.numpy(), np.float32)) for k, v in bn.params.items()}
            alpha, beta = np.empty(c, np.float32), np.empty(c, np.float32)
            L.check(lib.qat_bn_constants(*(None if prm[k] is None else prm[k].ctypes.data for k in
                                           ("running_mean", "running_var", "weight", "bias")),
                                         float(bn.spec["eps"]), c, int(bn_fma), alpha.ctypes.data,
                                         beta.ctypes.data), "BatchNorm constants")
            p.alpha, p.beta = arr(alpha, np.float32), arr(beta, np.float32)
        p.mode = mode
        p.lo, p.hi = -np.inf, np.inf
        if "clamp" in roles:
            cl = roles["clamp"].spec
            p.lo, p.hi = (0.0, np.inf) if cl["op"] == "relu" else (float(cl["min_val"]), float(cl["max_val"]))
        self.kind = None if q is None else q.quant["kind"]
        if self.kind == "affine":
            s = torch.tensor(float(q.quant["scale"]), dtype=torch.float32)
            lo, hi = Q.code_bounds(q.quant)
            self.code_dtype = Q.code_dtype(lo, hi)
            if self.code_dtype not in (torch.uint8, torch.int8):
                raise ValueError("affine codes wider than 8 bits")
            p.inv_scale, p.zero_point = float(1.0 / s), float(q.quant["zero_point"])
            p.qlo, p.qhi, p.code_type = float(lo), float(hi), (L.U8 if self.code_dtype == torch.uint8 else L.I8)
        self.p, self.keep, self.q = p, keep, q

    def _nhwc_float(self, v) -> torch.Tensor:
        """A float value (a stage's NHWC output, NCHW, or [n, c]) as NHWC."""
        if type(v) is Nhwc and v.data.dtype == torch.float32 and v.flat == self.flat and v.chw == self.chw:
            return v.data  # (another stage's output: no permutes)
        t = reference(v)
        c, h, w = self.chw
        if t.dtype != torch.float32 or tuple(t.shape[1:]) != ((c,) if self.flat else (c, h, w)):
            raise ValueError(f"{self.name}: float input of {t.dtype} {list(t.shape)}")
        t = t.reshape(t.shape[0], 1, 1, c) if self.flat else t.permute(0, 2, 3, 1)
        return t if t.is_contiguous() else t.contiguous()  # no copy after a stage like this one

    def run(self, env):
        acc = self._nhwc_float(env[self.inputs[0]]) if self.float_in else as_nhwc(env[self.inputs[0]], self.chw)
        n = acc.shape[0]
        c, h, w = self.chw
        res = None if self.res_name is None else self._nhwc_float(env[self.res_name])
        out = output(self, 0, (n, h, w, c), torch.float32)
        bits = codes = None
        if self.kind == "sign":
            bits = output(self, 1, (n, h, w, sign_words(c)), torch.int64)
        elif self.kind == "affine":
            codes = output(self, 1, (n, h, w, c), self.code_dtype)
        ap, rp, op = L.ptr(acc), None if res is None else L.ptr(res), L.ptr(out)
        bp, cp = None if bits is None else L.ptr(bits), None if codes is None else L.ptr(codes)
        cw, pref = sign_words(c), ctypes.byref(self.p)

        def part(r0, r1):  # rows = images x lines, as the other kernels split them
            off = r0 * w
            L.check(self.lib.qat_residual_avx512(
                ap + 4 * off * c, None if rp is None else rp + 4 * off * c, (r1 - r0) * w, c, pref,
                op + 4 * off * c, None if bp is None else bp + 8 * off * cw, None if cp is None else cp + off * c),
                self.name)

        parallel_rows(part, n * h, self.alone)
        if self.needs_value:  # NHWC; a reference op reads it as a channels_last NCHW view
            env[self.value] = Nhwc(out, self.flat)
        if bits is not None:
            env[self.q.outputs[0]] = Packed(bits, c, self.flat)
        elif codes is not None:
            env[self.q.outputs[0]] = Nhwc(codes, self.flat)


def residual_stage(plan, ops, i, chw, flat=False):
    """``(gap ops, stage, ops used)`` for a residual chain at ``ops[i]`` that the native pass computes
    exactly as the reference does on a probe, or None."""
    m = _match(plan, ops, i)
    if m is None:
        return None
    roles, value, gaps, used = m
    # the chain's float value, unless only the fused quantize reads it (or it is the stage's input)
    needs_value = "quantize" not in roles or (len(roles) > 1 and (plan.readers[value] > 1
                                                                  or value == plan.program.output_name))
    for fma in ((True, False) if "batchnorm" in roles else (False,)):
        try:
            stage = ResidualStage(plan.lib, roles, value, chw, needs_value, fma, flat)
        except ValueError:
            return None
        if _agrees(stage, roles, plan, chw):
            return gaps, stage, used
    return None


def _agrees(stage, roles, plan, chw) -> bool:
    """The stage against the reference ops on a probe batch of random accumulators and residuals."""
    c, h, w = chw
    shape = (2, c) if stage.flat else (2, c, h, w)
    g = torch.Generator().manual_seed(0)
    d = roles.get("dequantize")
    if d is None:
        acc = torch.randn(*shape, generator=g) * 3
    else:
        bound = min(int(d.spec.get("acc_bound", 1 << 20)), 1 << 24)
        acc = torch.randint(-bound, bound + 1, shape, generator=g, dtype=torch.int32)
    name = stage.inputs[0]
    env = {name: acc}
    if stage.res_name is not None:
        env[stage.res_name] = torch.randn(*shape, generator=g) * 2
    want = dict(env)
    for role in ("dequantize", "batchnorm", "add", "clamp", "quantize"):
        if role in roles:
            op = roles[role]
            local = {k: want[k].contiguous() for k in op.inputs}
            op.run(local)
            want.update({k: local[k] for k in op.outputs})
    got = {name: acc if d is None else Nhwc(acc.reshape(2, 1, 1, c) if stage.flat else
                                             acc.permute(0, 2, 3, 1).contiguous(), stage.flat)}
    if stage.res_name is not None:
        got[stage.res_name] = env[stage.res_name]
    stage.run(got)
    return all(torch.equal(reference(got[k]).contiguous(), want[k]) for k in stage.outputs)


class FloatThreshold(NativeOp):
    """A float-domain ``threshold`` op (NCHW, or ``[n, c]``) -> packed signs (``Packed``)."""

    def __init__(self, lib, ref_op, chw, flat: bool):
        super().__init__(ref_op.inputs, ref_op.outputs, ref_op.name)
        self.lib, self.chw, self.flat = lib, chw, flat
        c = chw[0]
        t, d = ref_op.t.to(torch.float32).reshape(-1), torch.where(ref_op.up, 1, -1).to(torch.int8).reshape(-1)
        if t.numel() not in (1, c) or d.numel() not in (1, c):
            raise NotNative(f"{self.name}: {t.numel()} thresholds for {c} channels")
        self.t, self.dir = t.expand(c).contiguous(), d.expand(c).contiguous()  # (one value: every channel)

    def run(self, env):
        c, h, w = self.chw
        x = reference(env[self.inputs[0]])
        if x.dtype != torch.float32 or x.numel() != x.shape[0] * c * h * w:
            raise ValueError(f"{self.name}: float input of {x.dtype} {list(x.shape)}")
        x = x.reshape(x.shape[0], c, h, w).contiguous()  # (a copy only for a channels_last input)
        n = x.shape[0]
        bits = output(self, 0, (n, h, w, sign_words(c)), torch.int64)
        L.check(self.lib.qat_threshold_nchw_avx512(L.ptr(x), n, c, h * w, L.ptr(self.t), L.ptr(self.dir),
                                                   L.ptr(bits)), self.name)
        env[self.outputs[0]] = Packed(bits, c, self.flat)
