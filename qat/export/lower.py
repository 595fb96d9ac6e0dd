"""Lowering: traced nodes -> the manifest's ordered operations and their tensors.

Each quantized layer becomes ``quantize`` (its input quantizer) + ``conv2d`` / ``linear`` with a
``compute`` mode chosen from what its operands are (``qat.runtime.ops.Layer``). Layers that produce an
exact integer accumulator are followed by one of:

* ``threshold`` — when every reader of the value after ``[maxpool] BatchNorm act`` is a layer with a
  sign input quantizer: BN + act + sign fold into a per-channel integer comparison (BNN inference;
  ``qat.export.thresholds``);
* ``requantize`` — when every reader is a layer with the same uint8 (affine) input quantizer:
  ``[maxpool] [BatchNorm] [ReLU]`` and the quantizer fold into ``q = clamp(Z + M (acc + b))`` with a
  fixed-point ``M = M0 2^-n`` and an int32 bias ``b`` (Jacob et al. 2018, section 2.2);
* ``dequantize`` — otherwise (the value feeds a float op, e.g. a residual add): ``acc * scale + bias``.

Operations the model computes in float (BatchNorm that does not fold, activations such as SiLU, adds,
products, pooling of float values) stay float ops with the model's parameters, and every op that
needs float arithmetic is marked ``"float": true`` (``runs_in_float``; listed in summary.md).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from qat.export.errors import ExportError
from qat.export.quantspec import INTEGER_KINDS, input_spec, weight_codes
from qat.export.thresholds import find_thresholds
from qat.export.trace import Node
from qat.export.weights import encode, weight_codebook
from qat.runtime import quantize as RQ
from qat.runtime.fixedpoint import quantize_multiplier
from qat.runtime.pointwise import CLAMPS, TENSORS as POINTWISE_TENSORS

OUTPUT = "<output>"
STRUCTURAL = ("maxpool2d", "flatten")
#: pointwise ops a threshold / requantization chain may hold: BatchNorm, the clamps, and the bnn
#: options' per-channel blocks (``scale``, ``shift``, ``rprelu``; these fold into thresholds only)
POINTWISE = ("batchnorm",) + CLAMPS + ("scale", "shift", "rprelu")
MOVES = ("flatten", "reshape", "permute", "concat", "slice", "pad")  # data movement, no arithmetic
#: sign inputs against these weight codes: the popcount compute kinds (``qat.runtime.ops.Layer``); their
#: model value is exactly ``float32(scale * acc)`` (products of +-1 and the float32 weight scale)
POPCOUNT = {"sign": "xnor_popcount", "binary": "xnor_popcount", "ternary": "ternary_popcount"}
INTEGER_COMPUTE = ("xnor_popcount", "ternary_popcount", "int")  # computes that give an exact int32 accumulator
ACC_LIMIT = 1 << 30  # |acc| and |bias| bound for requantization in int64 (see fixedpoint)
BIAS_FRAC_BITS = 16  # most fractional bits a requantization bias keeps below the accumulator's unit


@dataclass
class LayerInfo:
    """One row of summary.md."""

    name: str
    op: str
    compute: str
    weight_kind: str
    weight_bits: int
    input_bits: int
    params: int
    weight_bytes: int
    macs: int

    @property
    def mac_class(self) -> str:
        if self.weight_kind == "float":
            return "fp32"
        if self.weight_bits == 1:
            return "binary" if self.input_bits == 1 else "binary-weight"
        if self.weight_kind == "ternary":
            return "ternary"
        if self.weight_bits <= 8 and self.input_bits <= 8:
            return "8-bit"
        return "other"


def runs_in_float(op: dict, values: dict) -> bool:
    """Whether an op needs float arithmetic: it reads or writes a float32 value and is more than data
    movement (quantize and dequantize too, which convert between float and integers)."""
    if op["op"] in MOVES:
        return False
    return any(values[v]["dtype"] == "float32" for v in op["inputs"] + op["outputs"] if v in values)


def _key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


def _bs(shape) -> list:
    """Shape with the batch dimension as null."""
    return [None] + [int(s) for s in shape[1:]]


def _pointwise_tensors(node: Node) -> dict:
    """The float32 tensors of a pointwise node (``POINTWISE_TENSORS``), read from its module."""
    return {k: (None if getattr(node.module, k) is None else getattr(node.module, k).detach().float())
            for k in POINTWISE_TENSORS.get(node.op, ())}


def _monotone(node: Node) -> bool:
    """Whether a chain op keeps ``sign(f(acc))`` a step function: all do, but an RPReLU with a
    negative slope (then its values stay float ops)."""
    return node.op != "rprelu" or bool((node.module.slope >= 0).all())


class Lowering:
    def __init__(self, nodes: list[Node], input_name: str, output_name: str, input_shape,
                 ternary_packing: str = "bits"):
        if ternary_packing not in ("bits", "trits"):
            raise ExportError(f"ternary_packing must be 'bits' or 'trits', got {ternary_packing!r}")
        self.nodes = nodes
        self.input_name = input_name
        self.output_name = output_name
        self.ternary_packing = ternary_packing
        self.shape = {n.name: n.shape for n in nodes}
        self.shape[input_name] = tuple(input_shape)
        self.consumers: dict[str, list] = defaultdict(list)
        for n in nodes:
            for i in n.inputs:
                self.consumers[i].append(n)
        self.consumers[output_name].append(OUTPUT)
        self.ops: list[dict] = []
        self.values: dict[str, dict] = {input_name: {"dtype": "float32", "shape": _bs(input_shape)}}
        self.tensors: dict[str, np.ndarray] = {}
        self.float_of = {input_name: input_name}
        self.acc_of: dict[str, dict] = {}
        self.codes_of: dict[tuple[str, str], str] = {}
        self.fused: set[str] = set()
        self.layers: list[LayerInfo] = []
        self._specs: dict[str, tuple] = {}
        self._n = 0

    # ------------------------------------------------------------------ bookkeeping
    def _tensor(self, name: str, arr: np.ndarray) -> str:
        if name in self.tensors and not np.array_equal(self.tensors[name], arr):
            raise ExportError(f"internal: tensor name '{name}' used twice")
        self.tensors[name] = np.ascontiguousarray(arr)
        return name

    def _value(self, name: str, dtype: str, shape, quant: dict | None = None) -> str:
        if name in self.values:
            raise ExportError(f"internal: value '{name}' defined twice")
        self.values[name] = {"dtype": dtype, "shape": _bs(shape)}
        if quant is not None:
            self.values[name]["quant"] = quant
        return name

    def _fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}.{self._n}"

    def in_spec(self, node: Node) -> tuple[dict | None, np.ndarray | None]:
        if node.name not in self._specs:
            spec, book = input_spec(node.module, f"layer '{node.attrs['module']}'")
            if spec is not None and book is not None:
                spec["codebook"] = f"codebook.{spec['kind']}{spec['bits']}" + (
                    f".sf{spec['sf']}" if "sf" in spec else "")
            self._specs[node.name] = (spec, book)
        return self._specs[node.name]

    # ------------------------------------------------------------------ value access
    def need_float(self, v: str) -> str:
        if v in self.float_of:
            return self.float_of[v]
        if v in self.acc_of:
            a = self.acc_of[v]
            op = {"op": "dequantize", "name": a["module"], "inputs": [a["acc"]], "outputs": [v],
                  "scale": self._tensor(f"{a['module']}.acc_scale", a["scale"]),
                  "bias": (self._tensor(f"{a['module']}.bias", a["bias"]) if a["bias"] is not None else None),
                  "acc_bound": int(a["bound"])}
            self._value(v, "float32", self.shape[v])
            self.ops.append(op)
            self.float_of[v] = v
            return v
        raise ExportError(f"internal: no float value for '{v}'")

    def need_codes(self, v: str, spec: dict, book: np.ndarray | None) -> str:
        key = (v, _key(spec))
        if key in self.codes_of:
            return self.codes_of[key]
        x = self.need_float(v)
        q = self._value(self._fresh(f"{v}.q"), "codes", self.shape[v], spec)
        if book is not None:
            self._tensor(spec["codebook"], book)
        self.ops.append({"op": "quantize", "name": f"{v}.quantize", "inputs": [x], "outputs": [q],
                         "quant": spec})
        self.codes_of[key] = q
        return q

    def need_fake_quant(self, v: str, spec: dict) -> str:
        key = (v, "fq" + _key(spec))
        if key not in self.codes_of:
            x = self.need_float(v)
            out = self._value(self._fresh(f"{v}.fq"), "float32", self.shape[v])
            self.ops.append({"op": "fake_quantize", "name": f"{v}.fake_quantize", "inputs": [x],
                             "outputs": [out], "quant": spec})
            self.codes_of[key] = out
        return self.codes_of[key]

    # ------------------------------------------------------------------ main loop
    def run(self) -> dict:
        for node in self.nodes:
            if node.name in self.fused:
                continue
            if node.op == "layer":
                self.lower_layer(node)
            else:
                self.lower_float(node)
        out = self.need_float(self.output_name)
        for op in self.ops:
            if runs_in_float(op, self.values):
                op["float"] = True
        return {"ops": self.ops, "values": self.values, "tensors": self.tensors, "output": out,
                "layers": self.layers}

    def lower_float(self, node: Node) -> None:
        ins = [self.need_float(i) for i in node.inputs]
        mod = node.attrs.get("module", node.name)
        op = {"op": node.op, "name": mod, "inputs": ins, "outputs": [node.name]}
        op.update({k: v for k, v in node.attrs.items() if k != "module"})
        for k, t in _pointwise_tensors(node).items():
            op[k] = None if t is None else self._tensor(f"{mod}.{k}", t.numpy())
        self.ops.append(op)
        self._value(node.name, "float32", node.shape)
        self.float_of[node.name] = node.name

    # ------------------------------------------------------------------ layers
    def lower_layer(self, node: Node) -> None:
        m, mod = node.module, node.attrs["module"]
        who = f"layer '{mod}'"
        conv = isinstance(m, nn.Conv2d)
        spec, book = self.in_spec(node)
        codes, effective, bias = weight_codes(m, who)
        dynamic = spec is not None and spec.get("range") == "dynamic"

        w_int = codes is not None and codes.kind in INTEGER_KINDS
        if spec is None or dynamic:
            compute = ("signed_sum" if not dynamic and codes is not None and
                       codes.kind in ("sign", "binary", "ternary") else "float")
        elif spec["kind"] in ("sign", "affine", "linear") and w_int:
            compute = POPCOUNT.get(codes.kind, "int") if spec["kind"] == "sign" else "int"
        else:
            compute = "float"

        k = int(np.prod(effective.shape[1:]))
        acc_bound = 0
        if compute in INTEGER_COMPUTE:
            s_in, z_in = RQ.scale_and_zero_point(spec)
            lo, hi = RQ.code_bounds(spec)
            x_max = max(abs(lo - z_in), abs(hi - z_in))
            zw = codes.zero_point.to(torch.int64)
            zw = zw.reshape([-1] + [1] * (codes.codes.dim() - 1)) if zw.dim() else zw
            # |sum_k x_k w_ok| <= max|x| sum_k |w_ok|, per output channel
            bounds = (x_max * (codes.codes.to(torch.int64) - zw).abs().reshape(codes.codes.shape[0], -1)
                      .sum(dim=1)).numpy()
            acc_bound = int(bounds.max(initial=0))
            if acc_bound >= ACC_LIMIT:  # too wide for the int32 accumulator: compute in float
                compute = "float"

        if spec is None:
            x, in_field = self.need_float(node.inputs[0]), {"kind": "float"}
        elif dynamic:
            x, in_field = self.need_fake_quant(node.inputs[0], spec), {"kind": "float"}
        else:
            x, in_field = self.need_codes(node.inputs[0], spec, book), dict(spec)

        packing = "planes" if compute == "ternary_popcount" and self.ternary_packing == "bits" else self.ternary_packing
        wspec, wtensors = encode(mod, codes, effective, packing, weight_codebook(codes))
        for name, arr in wtensors.items():
            self._tensor(name, arr)
        op = {"op": "conv2d" if conv else "linear", "name": mod, "inputs": [x]}
        if conv:
            op.update({"in_channels": int(m.in_channels), "out_channels": int(m.out_channels),
                       "kernel_size": list(m.kernel_size), "stride": list(m.stride),
                       "padding": list(m.padding), "dilation": list(m.dilation), "groups": int(m.groups)})
        else:
            op.update({"in_features": int(m.in_features), "out_features": int(m.out_features)})
        op.update({"input": in_field, "weight": wspec, "compute": compute})
        out_ch = int(effective.shape[0])
        if compute in INTEGER_COMPUTE:
            acc = self._value(f"{node.name}.acc", "int32", node.shape)
            op.update({"bias": None, "outputs": [acc], "acc_bound": int(acc_bound)})
            s_w = codes.scale.detach().double().reshape(-1)
            scale = np.broadcast_to((s_in * s_w).numpy(), (out_ch,)).astype(np.float64)
            self.acc_of[node.name] = {"acc": acc, "scale": scale, "module": mod, "bound": acc_bound,
                                      "popcount": compute in POPCOUNT.values(),
                                      "bounds": np.broadcast_to(bounds, (out_ch,)).astype(np.int64),
                                      "bias": None if bias is None else bias.float().numpy()}
        else:
            op["bias"] = self._tensor(f"{mod}.bias", bias.float().numpy()) if bias is not None else None
            op["outputs"] = [self._value(node.name, "float32", node.shape)]
            self.float_of[node.name] = node.name
        self.ops.append(op)
        self._record(node, m, conv, compute, codes, spec, wtensors, k)
        self.try_fuse(node)

    def _record(self, node, m, conv, compute, codes, spec, wtensors, k) -> None:
        spatial = int(np.prod(node.shape[2:])) if conv else 1
        wk = "float" if codes is None else codes.kind
        self.layers.append(LayerInfo(
            name=node.attrs["module"], op="conv2d" if conv else "linear", compute=compute, weight_kind=wk,
            weight_bits=32 if codes is None else (2 if wk == "ternary" else int(codes.bits)),
            input_bits=32 if spec is None else int(spec["bits"]),
            params=int(m.weight.numel()) + (int(m.bias.numel()) if m.bias is not None else 0),
            weight_bytes=int(wtensors[f"{node.attrs['module']}.weight"].nbytes),
            macs=int(node.shape[1]) * spatial * k))

    # ------------------------------------------------------------------ fusion
    def _common_spec(self, readers) -> dict | None:
        if not readers or any(r is OUTPUT or r.op != "layer" for r in readers):
            return None
        specs = [self.in_spec(r)[0] for r in readers]
        first = specs[0]
        if first is None or first["kind"] not in ("sign", "affine") or any(s != first for s in specs):
            return None
        return first

    def _follow(self, start: str):
        chain, v = [], start
        while True:
            readers = self.consumers.get(v, [])
            spec = self._common_spec(readers)
            if spec is not None:
                return chain, v, spec
            if len(readers) != 1 or readers[0] is OUTPUT or readers[0].op not in STRUCTURAL + POINTWISE:
                return None
            chain.append(readers[0])
            v = readers[0].name

    @staticmethod
    def _split(chain: list[Node]):
        """``(pre, mid, post)``: structural ops, pointwise ops, trailing flattens; None if interleaved.

        A positive per-channel scale right before a max pooling moves behind it: ``fl(a x)`` is
        increasing in ``x`` for ``a > 0``, so ``max_i fl(a x_i) = fl(a max_i x_i)`` exactly."""
        chain = list(chain)
        i = 0
        while i + 1 < len(chain):
            a, b = chain[i], chain[i + 1]
            if a.op == "scale" and b.op == "maxpool2d" and bool((a.module.scale > 0).all()):
                chain[i], chain[i + 1] = b, a
                i = max(0, i - 1)
            else:
                i += 1
        pre, mid, post = [], [], []
        for n in chain:
            if n.op in STRUCTURAL and not mid:
                pre.append(n)
            elif n.op in POINTWISE and not post:
                mid.append(n)
            elif n.op == "flatten" and mid:
                post.append(n)
            else:
                return None
        return pre, mid, post

    def _emit_structural(self, nodes: list[Node], src: str, dtype: str, suffix: str, quant=None) -> str:
        for n in nodes:
            out = self._value(f"{n.name}{suffix}", dtype, n.shape, quant)
            op = {"op": n.op, "name": n.attrs.get("module", n.name), "inputs": [src], "outputs": [out]}
            op.update({k: v for k, v in n.attrs.items() if k != "module"})
            self.ops.append(op)
            if dtype == "float32":
                self.float_of[n.name] = out
            src = out
        return src

    def try_fuse(self, node: Node) -> None:
        found = self._follow(node.name)
        if found is None:
            return
        chain, end, spec = found
        parts = self._split(chain)
        if parts is None or not all(_monotone(n) for n in chain):
            return  # the values stay float ops, computed as the model computes them
        if spec["kind"] == "sign":
            self._fuse_threshold(node, parts, end, spec)
        elif node.name in self.acc_of:
            self._fuse_requantize(node, parts, end, spec)

    def _pointwise_params(self, nodes: list[Node]) -> list[tuple[dict, dict]]:
        return [({"op": n.op, **{k: v for k, v in n.attrs.items() if k != "module"}}, _pointwise_tensors(n))
                for n in nodes]

    def _fuse_threshold(self, node: Node, parts, end: str, spec: dict) -> None:
        pre, mid, post = parts
        acc = self.acc_of.get(node.name)
        lead = []
        if acc is not None:
            # exact when the model's value is the accumulator itself (unit scale, no bias) or, for the
            # popcount kinds, float32(scale * acc) with a positive float32 scale (ternary and XNOR-Net
            # weights: alpha): that is the chain's first op, one rounding as in the model, and moves
            # behind a max pooling as a positive scale does (_split)
            scale32 = acc["scale"].astype(np.float32)
            if acc["bias"] is not None or acc["bound"] >= (1 << 24):
                return
            if not np.all(acc["scale"] == 1.0):
                if not (acc["popcount"] and np.all(acc["scale"] > 0) and np.all(scale32 == acc["scale"])):
                    return
                lead = [({"op": "scale"}, {"scale": torch.from_numpy(scale32)})]
            domain, bound = "int", acc["bound"]
        else:
            domain, bound = "float", 0
        shape = (pre[-1] if pre else node).shape
        t, d = find_thresholds(lead + self._pointwise_params(mid), shape[1:], domain, bound,
                               who=f"layer '{node.attrs['module']}'")
        mod = node.attrs["module"]
        if domain == "int":
            src = self._emit_structural(pre, acc["acc"], "int32", ".acc")
        else:
            src = self._emit_structural(pre, self.float_of[node.name], "float32", "")
        q = self._value(f"{(mid[-1] if mid else node).name}.sign", "codes", shape, spec)
        self.ops.append({"op": "threshold", "name": mod, "inputs": [src], "outputs": [q], "domain": domain,
                         "threshold": self._tensor(f"{mod}.threshold", t),
                         "direction": self._tensor(f"{mod}.threshold_direction", d),
                         "folds": [n.attrs.get("module", n.name) for n in mid]})
        q = self._emit_structural(post, q, "codes", ".sign", spec)
        self.fused.update(n.name for n in pre + mid + post)
        self.codes_of[(end, _key(spec))] = q

    def _fuse_requantize(self, node: Node, parts, end: str, spec: dict) -> None:
        pre, mid, post = parts
        acc = self.acc_of[node.name]
        if any(n.op in POINTWISE_TENSORS and n.op != "batchnorm" for n in mid):
            return  # the binary-network blocks fold only into sign thresholds
        bns = [n for n in mid if n.op == "batchnorm"]
        if any(n.op == "batchnorm" for n in mid[len(bns):]):
            return  # a clamp before a BatchNorm is not one affine map + clamp
        a = acc["scale"].astype(np.float64)
        b = np.zeros_like(a) if acc["bias"] is None else acc["bias"].astype(np.float64)
        bounds = acc["bounds"]
        for n in pre:
            if n.op == "flatten":
                if n.attrs["start_dim"] != 1 or n.attrs["end_dim"] not in (-1, len(node.shape) - 1):
                    return
                reps = int(np.prod(node.shape[2:]))
                a, b, bounds = np.repeat(a, reps), np.repeat(b, reps), np.repeat(bounds, reps)
        for n in bns:
            m = n.module
            g = m.weight.detach().double().numpy() if m.weight is not None else 1.0
            beta = m.bias.detach().double().numpy() if m.bias is not None else 0.0
            alpha = g / np.sqrt(m.running_var.detach().double().numpy() + m.eps)
            shift = beta - m.running_mean.detach().double().numpy() * alpha
            a, b = alpha * a, alpha * b + shift
        if a.shape[0] != int((pre[-1] if pre else node).shape[1]) or np.any(a == 0):
            return
        lo, hi = -math.inf, math.inf
        for n in mid[len(bns):]:
            if n.op == "relu":
                lo = max(lo, 0.0)
            else:
                lo, hi = max(lo, n.attrs["min_val"]), min(hi, n.attrs["max_val"])
        if acc["bound"] >= ACC_LIMIT:
            return
        # The bias keeps f extra fractional bits (units of S_x S_w 2^-f) where the accumulator leaves
        # room: acc << f and the bias stay below 2^30, so (acc << f) + bias fits int32.
        f = np.array([min(BIAS_FRAC_BITS, max(0, 30 - int(v).bit_length())) for v in bounds], np.int64)
        b_int = np.rint(b / a * np.exp2(f))
        while np.any(big := np.abs(b_int) >= ACC_LIMIT):
            if np.any(f[big] == 0):
                return  # the bias itself does not fit int32 at the accumulator's scale
            f = np.where(big, f - 1, f)
            b_int = np.rint(b / a * np.exp2(f))
        qmin, qmax = int(spec["qmin"]), int(spec["qmax"])

        def code(v: float) -> int:
            return int(RQ.quantize(torch.tensor([v], dtype=torch.float32), spec)[0])

        c_lo = qmin if lo == -math.inf else max(qmin, code(lo))
        c_hi = qmax if hi == math.inf else min(qmax, code(hi))
        # The model quantizes as round(y * (1/S)) with 1/S rounded to float32 (torch's convention), so
        # the multiplier uses that reciprocal, not the exact 1/S: a systematic 2^-24 relative offset
        # otherwise moves codes whose value lies within it of a rounding boundary.
        mult = a * np.float64(np.float32(1.0) / np.float32(spec["scale"])) * np.exp2(-f)
        m0, n = zip(*(quantize_multiplier(v) for v in mult))
        mod = node.attrs["module"]
        shape = (pre[-1] if pre else node).shape
        src = self._emit_structural(pre, acc["acc"], "int32", ".acc")
        q = self._value(f"{(mid[-1] if mid else node).name}.q", "codes", shape, spec)
        self.ops.append({"op": "requantize", "name": mod, "inputs": [src], "outputs": [q],
                         "multiplier": self._tensor(f"{mod}.requant_multiplier", np.array(m0, np.int32)),
                         "shift": self._tensor(f"{mod}.requant_shift", np.array(n, np.int8)),
                         "bias": self._tensor(f"{mod}.requant_bias", b_int.astype(np.int32)),
                         "bias_shift": self._tensor(f"{mod}.requant_bias_shift", f.astype(np.int8)),
                         "zero_point": int(spec["zero_point"]), "clamp": [c_lo, c_hi], "quant": spec,
                         "folds": [n_.attrs.get("module", n_.name) for n_ in mid]})
        q = self._emit_structural(post, q, "codes", ".q", spec)
        self.fused.update(n_.name for n_ in pre + mid + post)
        self.codes_of[(end, _key(spec))] = q
