"""An export's manifest -> the steps of a standalone integer C program, with every constant folded
and packed and every activation buffer placed in one static arena.

The program covers chains of layers whose every value is integer: bnn and qat_uint8 exports of
VGG-small and the MLP (``docs/c-program.md``). The float image enters through a per-channel lookup
table (``fold.py``); binary layers run on packed signs, 8-bit layers on uint8 codes, and the last
layer's accumulators become fixed-point logits. Anything else is refused with an
:class:`Unsupported` error naming the operation that needs float.

Buffers: step ``k`` reads the buffer step ``k - 1`` wrote; writes alternate between the two ends
of the arena, so the arena is the largest pair of live activation buffers, no more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from qat.export.c import fold, layouts
from qat.export.errors import ExportError
from qat.runtime import packing

CTYPE_BYTES = {"uint8_t": 1, "int8_t": 1, "int16_t": 2, "int32_t": 4, "uint64_t": 8}
ACT_CTYPE = {"codes": "uint8_t", "bits": "uint64_t", "acc": "int32_t"}


class Unsupported(ExportError):
    """The export has an operation the integer C program cannot run."""


@dataclass
class Act:
    """An activation between steps: NHWC ``[h, w, c]`` of uint8 codes, packed signs or int32."""

    kind: str                  # "image" (the uint8 pixels, C x H x W), "codes", "bits", "acc"
    h: int
    w: int
    c: int
    zero_point: int = 0
    spec: dict | None = None   # quantize spec of codes / bits
    flat: bool = False         # flattened (NCHW order) for a following linear layer

    @property
    def elems(self) -> int:
        per_pixel = layouts.sign_words(self.c) if self.kind == "bits" else self.c
        return self.h * self.w * per_pixel

    @property
    def nbytes(self) -> int:
        return -(-self.elems * CTYPE_BYTES[ACT_CTYPE[self.kind]] // 8) * 8


@dataclass
class Step:
    kind: str                 # input_codes, input_conv, binary_conv, ternary_conv, int_conv, maxpool_i32,
    name: str                 # maxpool_bits, threshold, requantize, scores
    src: Act
    dst: Act | None           # None: the caller's scores
    geom: dict | None = None
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    args: dict = field(default_factory=dict)
    offset: int = 0           # of dst in the arena, bytes

    @property
    def ident(self) -> str:
        return re.sub(r"\W", "_", self.name)


@dataclass
class Plan:
    channels: int
    height: int
    width: int
    classes: int
    score_frac_bits: int
    steps: list[Step]
    arena_bytes: int
    scratch_elems: int
    recipe: str

    @property
    def flash_bytes(self) -> int:
        return sum(int(a.nbytes) for s in self.steps for a in s.consts.values())

    @property
    def ram_bytes(self) -> int:
        return self.arena_bytes + 2 * self.scratch_elems


def _who(op: dict) -> str:
    return f"{op['op']} '{op.get('name')}'"


def _weight_codes(op: dict, tensors: dict) -> np.ndarray:
    w = op["weight"]
    if w["encoding"] == "float32":
        raise Unsupported(f"{_who(op)} has float32 weights: the C program needs integer weight codes")
    return packing.unpack(np.asarray(tensors[w["tensor"]]), w, dtype=np.int64)


def _window_geom(op: dict, act: Act) -> dict:
    """Kernel, stride, padding, dilation and output size of a conv2d or maxpool2d op over ``act``."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (op[k] for k in ("kernel_size", "stride", "padding", "dilation"))
    g = {"kh": kh, "kw": kw, "sh": sh, "sw": sw, "ph": ph, "pw": pw, "dh": dh, "dw": dw,
         "ho": (act.h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, "wo": (act.w + 2 * pw - dw * (kw - 1) - 1) // sw + 1}
    return {k: int(v) for k, v in g.items()}


def _conv_geom(op: dict, act: Act) -> dict:
    """Native ``qat_conv_geom`` fields of a conv2d, or of a linear layer as the convolution of its
    (flattened) input map with a kernel of the map's size."""
    if op["op"] == "conv2d":
        if int(op.get("groups", 1)) != 1:
            raise Unsupported(f"{_who(op)} is grouped; the C program runs groups=1 convolutions")
        if int(op["in_channels"]) != act.c or act.flat:
            raise Unsupported(f"{_who(op)} expects {op['in_channels']} channels, its input has {act.c}")
        return {"n": 1, "h": act.h, "w": act.w, "c_in": act.c, "c_out": int(op["out_channels"]),
                **_window_geom(op, act)}
    if int(op["in_features"]) != act.h * act.w * act.c or not (act.flat or act.h == act.w == 1):
        raise Unsupported(f"{_who(op)} expects {op['in_features']} features, its input is "
                          f"{act.c}x{act.h}x{act.w}")
    return {"n": 1, "h": act.h, "w": act.w, "c_in": act.c, "c_out": int(op["out_features"]), "kh": act.h,
            "kw": act.w, "sh": 1, "sw": 1, "ph": 0, "pw": 0, "dh": 1, "dw": 1, "ho": 1, "wo": 1}


def _ohwi(op: dict, codes: np.ndarray, g: dict) -> np.ndarray:
    """Weight codes as ``[c_out, kh, kw, c_in]``: a linear layer's NCHW-flatten columns reordered to
    the channels-last order of the map it reads."""
    if op["op"] == "conv2d":
        return codes
    return codes.reshape(g["c_out"], g["c_in"], g["kh"], g["kw"]).transpose(0, 2, 3, 1)


def _uint8_spec(spec: dict | None) -> bool:
    return spec is not None and spec.get("kind") == "affine" and int(spec["qmin"]) >= 0 and int(spec["qmax"]) <= 255


def _acc_act(g: dict) -> Act:
    return Act("acc", g["ho"], g["wo"], g["c_out"])


class Planner:
    def __init__(self, manifest: dict, tensors: dict):
        self.m = manifest
        self.t = tensors
        self.ops = manifest["ops"]
        self.steps: list[Step] = []
        self.frac = 0

    def tensor(self, name: str | None, dtype, who: str) -> np.ndarray | None:
        if name is None:
            return None
        if name not in self.t:
            raise Unsupported(f"{who}: tensor '{name}' is not in the export")
        arr = np.asarray(self.t[name])
        if arr.dtype != np.dtype(dtype):
            raise Unsupported(f"{who}: tensor '{name}' is {arr.dtype}, expected {np.dtype(dtype)}")
        return arr

    def run(self) -> Plan:
        inp = self.m["input"]
        _, c, h, w = inp["shape"]
        act = Act("image", int(h), int(w), int(c))
        cur, i = inp["name"], 0
        while i < len(self.ops):
            op = self.ops[i]
            if list(op["inputs"]) != [cur]:
                raise Unsupported(
                    f"{_who(op)} reads {op['inputs']}, not just the previous value '{cur}': the C program "
                    "runs chains of integer layers (VGG-small, MLP); a residual network's add and its float "
                    "residual stream are not integer (docs/export-format.md)")
            handler = getattr(self, "op_" + op["op"], None)
            if handler is None:
                raise Unsupported(f"{_who(op)} computes in float; the C program has integer operations only "
                                  "(conv2d, linear, maxpool2d, threshold, requantize, flatten, and quantize "
                                  "of the input, dequantize [+ batchnorm] of the logits)")
            act, used = handler(op, act, i)
            i += used
            cur = self.ops[i - 1]["outputs"][0]
        if not self.steps or self.steps[-1].kind != "scores":
            raise Unsupported("the export's output is not the dequantized accumulator of a last integer layer")
        if cur != self.m["output"]:
            raise Unsupported(f"the program ends at '{cur}', the export's output is '{self.m['output']}'")
        return self.finish()

    # ------------------------------------------------------------------ ops
    def op_flatten(self, op, act, i):
        if int(op["start_dim"]) != 1 or int(op["end_dim"]) not in (-1, 3):
            raise Unsupported(f"{_who(op)} flattens dimensions {op['start_dim']}..{op['end_dim']}; the C "
                              "program flattens a whole map for a linear layer")
        act.flat = True
        return act, 1

    def op_quantize(self, op, act, i):
        spec = op["quant"]
        if act.kind != "image" or not _uint8_spec(spec):
            raise Unsupported(f"{_who(op)} quantizes a float value to {spec.get('kind')} codes; the C program "
                              "quantizes only the input image, to uint8 codes")
        n = self.m["input"]["normalization"]
        table = fold.input_codes_table(n["mean"], n["std"], spec)
        out = Act("codes", act.h, act.w, act.c, int(spec["zero_point"]), spec, act.flat)
        self.steps.append(Step("input_codes", op["name"], act, out, consts={"table": table}))
        return out, 1

    def op_conv2d(self, op, act, i):
        who = _who(op)
        g = _conv_geom(op, act)
        codes = _ohwi(op, _weight_codes(op, self.t), g)
        compute = op["compute"]
        if act.kind == "image":
            return self.input_conv(op, act, i, g, codes)
        if compute == "xnor_popcount" and act.kind == "bits":
            self.steps.append(Step("binary_conv", op["name"], act, _acc_act(g), g,
                                   {"w": layouts.binary_weights(codes)}))
            return _acc_act(g), 1
        if compute == "int" and act.kind == "codes" and _uint8_spec(op["input"]):
            if op["input"] != act.spec:
                raise Unsupported(f"{who} expects input codes {op['input']}, its input holds {act.spec}")
            wt = op["weight"]
            zw = self.tensor(wt.get("zero_point"), np.int32, who)
            zw = np.zeros(g["c_out"], np.int64) if zw is None else np.broadcast_to(zw.reshape(-1), (g["c_out"],))
            packed = layouts.int_weights(codes.reshape(g["c_out"], -1), zw)
            self.steps.append(Step("int_conv", op["name"], act, _acc_act(g), g, {"w": packed},
                                   {"zx": act.zero_point,
                                    "scratch": layouts.int_conv_scratch_elems(g["kh"], g["kw"], g["c_in"])}))
            return _acc_act(g), 1
        if compute == "ternary_popcount" and act.kind == "bits":
            self.steps.append(Step("ternary_conv", op["name"], act, _acc_act(g), g,
                                   {"w": layouts.ternary_weights(codes)}))
            return _acc_act(g), 1
        raise Unsupported(f"{who} computes '{compute}' on {act.kind} input ({op['input'].get('kind')}): it "
                          "needs float; the C program runs xnor_popcount and ternary_popcount layers on sign "
                          "codes and int layers on uint8 codes")

    op_linear = op_conv2d

    def input_conv(self, op, act, i, g, codes):
        """BNN's first layer: the float image convolved with +-1 (or ternary) weights, then a float
        threshold: a fixed-point table conv and an integer threshold (``fold.py``)."""
        who = _who(op)
        nxt = self.ops[i + 1] if i + 1 < len(self.ops) else None
        if (op["compute"] != "signed_sum" or nxt is None or nxt["op"] != "threshold"
                or nxt["inputs"] != op["outputs"]):
            raise Unsupported(f"{who} computes '{op['compute']}' on the float image and feeds "
                              f"{_who(nxt) if nxt else 'the output'}: it needs float; the C program folds the "
                              "input into a layer followed by a threshold (bnn) or a uint8 quantize (qat_uint8)")
        wt = op["weight"]
        scale = self.tensor(wt.get("scale"), np.float32, who)
        scale = np.ones(g["c_out"]) if scale is None else np.broadcast_to(scale.reshape(-1), (g["c_out"],))
        bias = self.tensor(op.get("bias"), np.float32, who)
        bias = np.zeros(g["c_out"]) if bias is None else bias
        n = self.m["input"]["normalization"]
        w_abs = int(np.abs(codes).reshape(g["c_out"], -1).sum(axis=1).max())
        table, frac = fold.input_fixed_table(n["mean"], n["std"], w_abs)
        t = self.tensor(nxt["threshold"], np.float32, _who(nxt))
        d = self.tensor(nxt["direction"], np.int8, _who(nxt))
        t_int, d_int = fold.fixed_thresholds(t, d, scale, bias, frac)
        acc = _acc_act(g)
        self.steps.append(Step("input_conv", op["name"], act, acc, g,
                               {"table": table, "w": codes.astype(np.int8)}, {"frac_bits": frac}))
        out = Act("bits", g["ho"], g["wo"], g["c_out"], spec=self.m["values"][nxt["outputs"][0]].get("quant"))
        self.steps.append(Step("threshold", nxt["name"], acc, out, consts={"t": t_int, "dir": d_int}))
        return out, 2

    def op_maxpool2d(self, op, act, i):
        if act.kind != "acc" or op.get("ceil_mode"):
            raise Unsupported(f"{_who(op)} pools {act.kind} values (ceil_mode={op.get('ceil_mode')}); the C "
                              "program max-pools int32 accumulators in floor mode")
        g = {"n": 1, "h": act.h, "w": act.w, "c": act.c, **_window_geom(op, act)}
        out = Act("acc", g["ho"], g["wo"], act.c)
        self.steps.append(Step("maxpool_i32", op["name"], act, out, g))
        return out, 1

    def op_threshold(self, op, act, i):
        who = _who(op)
        if act.kind != "acc" or op["domain"] != "int":
            raise Unsupported(f"{who} compares {op['domain']} values; the C program thresholds int32 "
                              "accumulators")
        t = self.tensor(op["threshold"], np.int32, who)
        d = self.tensor(op["direction"], np.int8, who)
        out = Act("bits", act.h, act.w, act.c, spec=self.m["values"][op["outputs"][0]].get("quant"))
        self.steps.append(Step("threshold", op["name"], act, out, consts={"t": t, "dir": d}))
        return out, 1

    def op_requantize(self, op, act, i):
        who = _who(op)
        spec = op["quant"]
        if act.kind != "acc" or not _uint8_spec(spec):
            raise Unsupported(f"{who} writes {spec.get('kind')} codes; the C program requantizes to uint8")
        f = self.tensor(op.get("bias_shift"), np.int8, who)
        m0 = self.tensor(op["multiplier"], np.int32, who)
        consts = {"m0": m0, "shift": self.tensor(op["shift"], np.int8, who),
                  "bias": self.tensor(op["bias"], np.int32, who),
                  "bias_shift": np.zeros(m0.shape, np.int8) if f is None else f}
        out = Act("codes", act.h, act.w, act.c, int(spec["zero_point"]), spec)
        lo, hi = (int(v) for v in op["clamp"])
        self.steps.append(Step("requantize", op["name"], act, out, consts=consts,
                               args={"zero_point": int(op["zero_point"]), "lo": lo, "hi": hi}))
        return out, 1

    def op_dequantize(self, op, act, i):
        who = _who(op)
        rest = self.ops[i + 1:]
        if act.kind != "acc" or act.h * act.w != 1 or any(r["op"] != "batchnorm" for r in rest):
            nxt = _who(rest[0]) if rest else "the output"
            raise Unsupported(f"{who} turns int32 accumulators into float values read by {nxt}: it needs "
                              "float; the C program dequantizes only the logits (optionally through a "
                              "BatchNorm)")
        a = self.tensor(op["scale"], np.float64, who).astype(np.float64)
        bias = self.tensor(op.get("bias"), np.float32, who)
        b = np.zeros_like(a) if bias is None else bias.astype(np.float64)
        for bn in rest:
            bw = _who(bn)
            gamma, beta, mu, var = (self.tensor(bn.get(k), np.float32, bw) for k in
                                    ("weight", "bias", "running_mean", "running_var"))
            alpha = (1.0 if gamma is None else gamma.astype(np.float64)) / np.sqrt(var.astype(np.float64) + bn["eps"])
            a, b = alpha * a, alpha * (b - mu) + (0.0 if beta is None else beta.astype(np.float64))
        m0, s, sb, frac = fold.score_constants(a, b, int(op.get("acc_bound", 1 << 30)))
        self.frac = frac
        self.steps.append(Step("scores", op["name"], act, None, consts={"m0": m0, "shift": s, "bias": sb},
                               args={"folds": [r["name"] for r in rest]}))
        return act, 1 + len(rest)

    # ------------------------------------------------------------------ fusion, buffers
    def fuse(self) -> None:
        """Output stages into the convolution before them: binary, ternary or input conv + threshold -> conv
        writing packed signs; binary or ternary conv + maxpool + threshold -> that, then max pooling of the bits; int conv +
        requantize -> conv writing uint8 codes."""
        out, s = [], self.steps
        i = 0
        while i < len(s):
            st = s[i]
            nxt = s[i + 1] if i + 1 < len(s) else None
            after = s[i + 2] if i + 2 < len(s) else None
            if st.kind in ("binary_conv", "ternary_conv", "input_conv") and nxt and nxt.kind == "threshold":
                st.consts.update(nxt.consts)
                st.dst = nxt.dst
                out.append(st)
                i += 2
                continue
            if (st.kind in ("binary_conv", "ternary_conv") and nxt and nxt.kind == "maxpool_i32" and after
                    and after.kind == "threshold"):
                st.consts.update(after.consts)
                st.dst = Act("bits", st.geom["ho"], st.geom["wo"], st.geom["c_out"], spec=after.dst.spec)
                up = layouts.pack_signs(after.consts["dir"] > 0)
                out += [st, Step("maxpool_bits", nxt.name, st.dst, after.dst, nxt.geom, {"up_mask": up})]
                i += 3
                continue
            if st.kind == "int_conv" and nxt and nxt.kind == "requantize":
                st.consts.update(nxt.consts)
                st.args.update(nxt.args)
                st.dst = nxt.dst
                out.append(st)
                i += 2
                continue
            out.append(st)
            i += 1
        for a, b in zip(out, out[1:]):
            b.src = a.dst
        self.steps = out

    def finish(self) -> Plan:
        self.fuse()
        arena = 8
        for st in self.steps:
            src = st.src.nbytes if st.src.kind != "image" else 0
            dst = st.dst.nbytes if st.dst is not None else 0
            arena = max(arena, src + dst)
        for k, st in enumerate(self.steps):
            if st.dst is not None:  # alternate ends: step k's source sits at the other one
                st.offset = 0 if k % 2 == 0 else arena - st.dst.nbytes
        scratch = max([st.args["scratch"] for st in self.steps if st.kind == "int_conv"], default=0)
        _, c, h, w = self.m["input"]["shape"]
        return Plan(int(c), int(h), int(w), int(self.steps[-1].src.c), self.frac, self.steps, arena, scratch,
                    self.m.get("recipe", {}).get("name", "?"))


def plan(manifest: dict, tensors: dict) -> Plan:
    """The program of an export (raises :class:`Unsupported` naming the op that needs float)."""
    try:
        return Planner(manifest, tensors).run()
    except (KeyError, TypeError, IndexError) as err:
        raise Unsupported(f"the manifest is malformed for the C program: missing or bad field {err}") from None
    except ValueError as err:  # a constant that does not fit the program's integer formats
        raise Unsupported(str(err)) from None
