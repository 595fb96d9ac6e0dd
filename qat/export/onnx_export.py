"""ONNX form of an integer-affine export (qat_uint8, and linear with ``onnx=True``): the manifest's
operations, each computed in ONNX as ``qat.runtime`` computes it, so onnxruntime gives the runtime's
codes and accumulators exactly.

The graph is built from the lowered manifest (not from the model), op by op:

| manifest op | ONNX |
| --- | --- |
| ``quantize`` (affine) | ``Mul(x, fl32(1/S))``, ``Clip``, ``QuantizeLinear(scale 1, Z)`` |
| ``conv2d`` / ``linear``, ``compute: int`` | ``ConvInteger`` / ``MatMulInteger`` (uint8 x uint8, exact int32) |
| ``requantize`` | int64 ``Mul``, ``Add``, floor shift (``Mod``, ``Sub``, ``Div``), ``Add(Z)``, ``Clip``, ``Cast`` |
| ``dequantize`` | ``Cast``, ``Mul(scale)``, ``Add(bias)`` in float64 (float32 where the runtime uses it) |
| float ops | the ONNX op, or torch's formula spelled out (SiLU, Hardswish, Hardsigmoid) |

Integer values (codes, accumulators) are exact; float ops (BatchNorm, Sigmoid, pooling means, float
layers) are onnxruntime's own kernels, which may differ from torch's in the last bit. ONNX's
``QLinearConv`` rounds the bias to the accumulator's unit and requantizes in float32, which moves a
rounding boundary on up to a few per cent of the codes of an untrained network (BENCHMARKS.md,
issue 10): this graph does not use it.

Only exports whose integer layers have 8-bit codes are supported (binary, ternary, log and tanh
codes have no ONNX integer form): ``OnnxUnsupported`` names the op that is not.
"""

from __future__ import annotations

import numpy as np
import torch

from qat.runtime import quantize as Q
from qat.runtime.ops import OPS

OPSET = 17
MAX_WINDOW_SUM = 1 << 24  # window sums of input codes are computed exactly in float32 below this


class OnnxUnsupported(ValueError):
    """The export has an op ONNX's integer operators cannot express (e.g. binary or log codes)."""


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _code_np_dtype(spec: dict):
    dt = Q.code_dtype(*Q.code_bounds(spec))
    return {torch.uint8: np.uint8, torch.int8: np.int8}.get(dt)


class _Graph:
    """The ONNX nodes and initializers of one export, built op by op."""

    def __init__(self, manifest: dict):
        from onnx import TensorProto

        self.tp = TensorProto
        self.values = manifest["values"]
        self.nodes, self.inits = [], []
        self.n = 0

    # ------------------------------------------------------------------ helpers
    def const(self, hint: str, arr) -> str:
        from onnx import numpy_helper

        self.n += 1
        name = f"{hint}#{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def add(self, op: str, ins: list[str], out: str | None = None, **attrs) -> str:
        from onnx import helper

        self.n += 1
        out = out or f"{op.lower()}#{self.n}"
        self.nodes.append(helper.make_node(op, ins, [out], name=f"{op}#{self.n}", **attrs))
        return out

    def channel(self, hint: str, v, rank: int, dtype) -> str:
        """A per-channel constant broadcast along dim 1 of a rank-``rank`` value."""
        return self.const(hint, np.asarray(v, dtype).reshape([-1] + [1] * (rank - 2)))

    def rank(self, v: str) -> int:
        return len(self.values[v]["shape"])

    def shape(self, v: str) -> list[int]:
        return [int(s) for s in self.values[v]["shape"][1:]]

    def as_uint8(self, x: str, spec: dict, who: str) -> tuple[str, int]:
        """Codes as uint8 and their zero point (int8 codes are shifted by 128)."""
        dt = _code_np_dtype(spec)
        _, z = Q.scale_and_zero_point(spec)
        if dt is np.uint8:
            return x, z
        if dt is np.int8:
            s = self.add("Add", [self.add("Cast", [x], to=self.tp.INT32), self.const("128", np.int32(128))])
            return self.add("Cast", [s], to=self.tp.UINT8), z + 128
        raise OnnxUnsupported(f"{who}: {spec['kind']} codes of {spec['bits']} bits have no 8-bit ONNX form")

    def dequantize_codes(self, x: str, spec: dict, who: str) -> str:
        """``S (code - Z)`` in float32, as ``qat.runtime.quantize.dequantize`` computes it."""
        if spec["kind"] not in ("affine", "linear"):
            raise OnnxUnsupported(f"{who}: {spec['kind']} codes have no ONNX decoding")
        s, z = Q.scale_and_zero_point(spec)
        c = self.add("Sub", [self.add("Cast", [x], to=self.tp.FLOAT), self.const("zero_point", np.float32(z))])
        return self.add("Mul", [c, self.const("scale", np.float32(s))])

    # ------------------------------------------------------------------ ops
    def quantize(self, op, rt, x, out):
        spec, who = op["quant"], f"quantize '{rt.name}'"
        lo, hi = Q.code_bounds(spec)
        dt = _code_np_dtype(spec)
        if dt is None or spec["kind"] not in ("affine", "linear"):
            raise OnnxUnsupported(f"{who}: {spec['kind']} codes ({spec['bits']} bits) have no ONNX form")
        if spec["kind"] == "affine":  # clamping before rounding: the bounds are integers
            s, z = Q.scale_and_zero_point(spec)
            v = self.add("Mul", [x, self.const("inv_scale", np.float32(1.0) / np.float32(s))])
            v = self.add("Clip", [v, self.const("lo", np.float32(lo - z)), self.const("hi", np.float32(hi - z))])
            self.add("QuantizeLinear", [v, self.const("one", np.float32(1.0)), self.const("zp", dt(z))], out)
        else:  # floor(x 2^sf + 0.5)
            v = self.add("Div", [x, self.const("step", np.float32(2.0 ** -int(spec["sf"])))])
            v = self.add("Floor", [self.add("Add", [v, self.const("half", np.float32(0.5))])])
            v = self.add("Clip", [v, self.const("lo", np.float32(lo)), self.const("hi", np.float32(hi))])
            self.add("Cast", [v], out, to=self.tp.INT8)

    def layer(self, op, rt, x, out):
        who = f"{op['op']} '{rt.name}'"
        if rt.compute == "int":
            return self.int_layer(op, rt, x, out, who)
        if rt.compute != "float":
            raise OnnxUnsupported(f"{who}: compute '{rt.compute}' ({op['weight']['kind']} weights) has no "
                                  "ONNX integer form")
        if rt.in_spec["kind"] != "float":
            x = self.dequantize_codes(x, rt.in_spec, who)
        ins = [x, self.const(f"{rt.name}.weight", _np(rt.w_float).astype(np.float32))]
        if rt.bias is not None:
            ins.append(self.const(f"{rt.name}.bias", _np(rt.bias).astype(np.float32)))
        if rt.conv:
            k, s, p, d = rt.geom
            self.add("Conv", ins, out, kernel_shape=list(k), strides=list(s), pads=list(p) * 2,
                     dilations=list(d), group=rt.groups)
        else:
            self.add("Gemm", ins, out, transB=1)

    def int_layer(self, op, rt, x, out, who):
        """``sum (x - Zx)(w - Zw[o])`` exactly: ``ConvInteger`` / ``MatMulInteger`` with one zero point
        ``Z0`` for every channel (onnxruntime takes no per-channel one), then ``+ (Z0 - Zw[o]) * S``,
        ``S`` the window sum of ``x - Zx`` (exact in float32 below 2^24)."""
        xu, zx = self.as_uint8(x, rt.in_spec, who)
        shift = 128 if rt.int_codes.min(initial=0) < 0 else 0  # int8 codes as uint8, zero points with them
        codes, zw = rt.int_codes + shift, rt.int_zero.astype(np.int64) + shift
        if codes.min(initial=0) < 0 or codes.max(initial=0) > 255:
            raise OnnxUnsupported(f"{who}: weight codes wider than 8 bits have no ONNX integer form")
        k = int(np.prod(codes.shape[1:]))
        if k * 255 * 255 >= (1 << 31) or k * 255 >= MAX_WINDOW_SUM:
            raise OnnxUnsupported(f"{who}: {k} products per output may overflow onnxruntime's int32 sums")
        vals, counts = np.unique(zw, return_counts=True)
        z0 = int(vals[np.argmax(counts)])
        if not 0 <= z0 <= 255:
            raise OnnxUnsupported(f"{who}: weight zero points outside [0, 255]")
        zx_c, z0_c = self.const("x_zero_point", np.uint8(zx)), self.const("w_zero_point", np.uint8(z0))
        one_zero = bool(np.all(zw == z0))
        if rt.conv:
            kh, kw = codes.shape[1:3]
            w = self.const(f"{rt.name}.weight_q", codes.transpose(0, 3, 1, 2).astype(np.uint8))  # OHWI -> OIHW
            _, s, p, d = rt.geom
            geom = dict(kernel_shape=[int(kh), int(kw)], strides=list(s), pads=list(p) * 2, dilations=list(d))
            acc = self.add("ConvInteger", [xu, w, zx_c, z0_c], out if one_zero else None, group=rt.groups, **geom)
        else:
            w = self.const(f"{rt.name}.weight_q", codes.T.astype(np.uint8))
            acc = self.add("MatMulInteger", [xu, w, zx_c, z0_c], out if one_zero else None)
        if one_zero:
            return
        # window sums of x - Zx per group, then (Z0 - Zw[o]) times the group's sum
        xf = self.add("Sub", [self.add("Cast", [xu], to=self.tp.FLOAT), self.const("zx", np.float32(zx))])
        corr = (z0 - zw).astype(np.int32)
        if not rt.conv:
            sx = self.add("Cast", [self.add("ReduceSum", [xf, self.const("axes", np.array([1], np.int64))],
                                            keepdims=1)], to=self.tp.INT32)
            term = self.add("Mul", [sx, self.const("dz", corr)])
        else:
            g, (c, h, wd) = rt.groups, self.shape(x)
            o = rt.out
            ho, wo = self.shape(out)[1:]
            grouped = self.add("Reshape", [xf, self.const("shape", np.array([0, g, c // g, h, wd], np.int64))])
            sums = self.add("ReduceSum", [grouped, self.const("axes", np.array([2], np.int64))], keepdims=0)
            win = self.add("Conv", [sums, self.const("ones", np.ones((g, 1, int(kh), int(kw)), np.float32))],
                           group=g, **geom)
            win = self.add("Reshape", [self.add("Cast", [win], to=self.tp.INT32),
                                       self.const("shape", np.array([0, g, 1, ho, wo], np.int64))])
            term = self.add("Mul", [win, self.const("dz", corr.reshape(g, o // g, 1, 1))])
            term = self.add("Reshape", [term, self.const("shape", np.array([0, o, ho, wo], np.int64))])
        self.add("Add", [acc, term], out)

    def requantize(self, op, rt, x, out):
        """``((acc << f) + b) M0 + 2^(n-1)`` is ``acc (M0 2^f) + (b M0 + 2^(n-1))``, below 2^63 in
        magnitude (|(acc << f) + b| < 2^31, M0 < 2^31); ``>> n`` is floor division by 2^n."""
        r = self.rank(x)
        m0, n, b, f = (_np(t).astype(np.int64) for t in (rt.m0, rt.n, rt.bias, rt.f))
        v = self.add("Cast", [x], to=self.tp.INT64)
        v = self.add("Mul", [v, self.channel("m0_shifted", m0 << f, r, np.int64)])
        v = self.add("Add", [v, self.channel("bias_rounding", b * m0 + _np(rt.rnd).astype(np.int64), r, np.int64)])
        d = self.channel("two_pow_n", np.left_shift(np.int64(1), n), r, np.int64)
        v = self.add("Div", [self.add("Sub", [v, self.add("Mod", [v, d], fmod=0)]), d])
        v = self.add("Add", [v, self.const("zp", np.int64(rt.zp))])
        v = self.add("Clip", [v, self.const("lo", np.int64(rt.lo)), self.const("hi", np.int64(rt.hi))])
        dt = _code_np_dtype(rt.quant)
        if dt is None:
            raise OnnxUnsupported(f"requantize '{rt.name}': codes wider than 8 bits")
        self.add("Cast", [v], out, to=self.tp.UINT8 if dt is np.uint8 else self.tp.INT8)

    def dequantize(self, op, rt, x, out):
        r = self.rank(x)
        if rt.exact32:  # the product is exact: float32, one rounding of acc * scale + bias
            y = self.add("Mul", [self.add("Cast", [x], to=self.tp.FLOAT),
                                 self.channel("scale", _np(rt.scale32), r, np.float32)])
            if rt.bias is None:
                self.add("Identity", [y], out)
            else:
                self.add("Add", [y, self.channel("bias", _np(rt.bias), r, np.float32)], out)
            return
        y = self.add("Mul", [self.add("Cast", [x], to=self.tp.DOUBLE),
                             self.channel("scale", _np(rt.scale), r, np.float64)])
        if rt.bias is not None:
            y = self.add("Add", [y, self.channel("bias", _np(rt.bias).astype(np.float64), r, np.float64)])
        self.add("Cast", [y], out, to=self.tp.FLOAT)

    def pointwise(self, op, rt, x, out):
        kind, r = op["op"], self.rank(x)
        p = {k: (None if v is None else _np(v)) for k, v in rt.params.items()}
        if kind == "batchnorm":
            c = p["running_mean"].size
            g = p["weight"] if p["weight"] is not None else np.ones(c, np.float32)
            b = p["bias"] if p["bias"] is not None else np.zeros(c, np.float32)
            self.add("BatchNormalization", [x, self.const("gamma", g), self.const("beta", b),
                                            self.const("mean", p["running_mean"]),
                                            self.const("var", p["running_var"])], out, epsilon=float(op["eps"]))
        elif kind == "relu":
            self.add("Relu", [x], out)
        elif kind == "hardtanh":
            self.add("Clip", [x, self.const("min", np.float32(op["min_val"])),
                              self.const("max", np.float32(op["max_val"]))], out)
        elif kind == "sigmoid":
            self.add("Sigmoid", [x], out)
        elif kind == "silu":  # torch: x / (1 + exp(-x))
            e = self.add("Exp", [self.add("Neg", [x])])
            self.add("Div", [x, self.add("Add", [e, self.const("one", np.float32(1))])], out)
        elif kind in ("hardswish", "hardsigmoid"):  # torch: [x *] clamp(x + 3, 0, 6) / 6
            t = self.add("Clip", [self.add("Add", [x, self.const("three", np.float32(3))]),
                                  self.const("zero", np.float32(0)), self.const("six", np.float32(6))])
            if kind == "hardswish":
                t = self.add("Mul", [x, t])
            self.add("Div", [t, self.const("six", np.float32(6))], out)
        elif kind == "scale":
            self.add("Mul", [x, self.channel("scale", p["scale"], r, np.float32)], out)
        elif kind == "shift":
            self.add("Add", [x, self.channel("shift", p["shift"], r, np.float32)], out)
        elif kind == "rprelu":
            t = self.add("Add", [x, self.channel("bias_in", p["bias_in"], r, np.float32)])
            t = self.add("PRelu", [t, self.channel("slope", p["slope"], r, np.float32)])
            self.add("Add", [t, self.channel("bias_out", p["bias_out"], r, np.float32)], out)
        else:
            raise OnnxUnsupported(f"{kind} '{rt.name}' has no ONNX mapping")

    def maxpool(self, op, rt, x, out):
        k, s, p, d = rt.args
        attrs = dict(kernel_shape=k, strides=s, pads=p * 2, dilations=d, ceil_mode=int(rt.ceil_mode))
        if self.values[x]["dtype"] == "int32":  # ONNX MaxPool has no int32: float64 holds it exactly
            y = self.add("MaxPool", [self.add("Cast", [x], to=self.tp.DOUBLE)], **attrs)
            self.add("Cast", [y], out, to=self.tp.INT32)
        else:
            self.add("MaxPool", [x], out, **attrs)

    def avgpool(self, op, rt, x, out):
        if rt.divisor is not None:
            raise OnnxUnsupported(f"avgpool2d '{rt.name}': divisor_override has no ONNX form")
        k, s, p = rt.args
        self.add("AveragePool", [x], out, kernel_shape=k, strides=s, pads=p * 2, ceil_mode=int(rt.flags[0]),
                 count_include_pad=int(rt.flags[1]))

    def reshape_to(self, x, out):
        self.add("Reshape", [x, self.const("shape", np.array([-1] + self.shape(out), np.int64))], out)

    def slice(self, op, rt, x, out):
        sl = op["slices"]
        axes = list(range(1, len(sl)))
        arr = lambda i: self.const("slice", np.array([sl[d][i] for d in axes], np.int64))  # noqa: E731
        self.add("Slice", [x, arr(0), arr(1), self.const("axes", np.array(axes, np.int64)), arr(2)], out)

    def pad(self, op, rt, x, out):
        pad, r = op["pad"], self.rank(x)
        begins, ends = [0] * r, [0] * r
        for i in range(len(pad) // 2):  # F.pad pairs run from the last dimension backwards
            begins[r - 1 - i], ends[r - 1 - i] = pad[2 * i], pad[2 * i + 1]
        dt = self.values[x]["dtype"]
        val = (np.float32 if dt == "float32" else np.int32 if dt == "int32" else
               _code_np_dtype(self.values[x]["quant"]))(op["value"])
        self.add("Pad", [x, self.const("pads", np.array(begins + ends, np.int64)), self.const("value", val)], out,
                 mode="constant")

    def emit(self, op, rt) -> None:
        kind, ins, out = op["op"], op["inputs"], op["outputs"][0]
        x = ins[0]
        if kind == "quantize":
            self.quantize(op, rt, x, out)
        elif kind in ("conv2d", "linear"):
            self.layer(op, rt, x, out)
        elif kind == "requantize":
            self.requantize(op, rt, x, out)
        elif kind == "dequantize":
            self.dequantize(op, rt, x, out)
        elif kind == "maxpool2d":
            self.maxpool(op, rt, x, out)
        elif kind == "avgpool2d":
            self.avgpool(op, rt, x, out)
        elif kind == "global_avgpool":
            self.add("GlobalAveragePool", [x], out)
        elif kind in ("add", "mul"):
            self.add(kind.capitalize(), list(ins), out)
        elif kind == "concat":
            self.add("Concat", list(ins), out, axis=int(op["dim"]))
        elif kind in ("reshape", "flatten"):
            self.reshape_to(x, out)
        elif kind == "permute":
            self.add("Transpose", [x], out, perm=list(op["dims"]))
        elif kind == "slice":
            self.slice(op, rt, x, out)
        elif kind == "pad":
            self.pad(op, rt, x, out)
        elif hasattr(rt, "params"):
            self.pointwise(op, rt, x, out)
        else:
            raise OnnxUnsupported(f"{kind} '{rt.name}' has no ONNX form (binary thresholds and dynamic "
                                  "ranges are not integer-affine)")


def to_onnx(manifest: dict, tensors: dict) -> bytes:
    """Serialized ONNX model of an export's manifest and tensors (see the module docstring)."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError as err:  # optional dependency
        raise OnnxUnsupported(f"the onnx package is not installed ({err}); pip install onnx") from None

    g = _Graph(manifest)
    values = manifest["values"]
    for op in manifest["ops"]:
        g.emit(op, OPS[op["op"]](op, tensors, values))
    inp, out = manifest["input"], manifest["output"]
    graph = helper.make_graph(
        g.nodes, "qat_export",
        [helper.make_tensor_value_info(inp["name"], TensorProto.FLOAT, ["N"] + list(inp["shape"][1:]))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N"] + list(values[out]["shape"][1:]))],
        initializer=g.inits)
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qat")
    model_proto.ir_version = 8
    onnx.checker.check_model(model_proto)
    return model_proto.SerializeToString()


def session(path_or_bytes, threads: int | None = None):
    """An onnxruntime CPU session for an exported model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    src = str(path_or_bytes) if not isinstance(path_or_bytes, (bytes, bytearray)) else bytes(path_or_bytes)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run(sess, x: torch.Tensor) -> torch.Tensor:
    name = sess.get_inputs()[0].name
    return torch.from_numpy(sess.run(None, {name: x.numpy()})[0])
