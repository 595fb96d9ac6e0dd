"""The operations of a manifest, each built once from its entry and the export's tensors.

Values are NCHW (or NC) torch tensors: float32 activations, int32 accumulators, or integer codes.
Float operations are torch's own functions with the model's parameters, so where the manifest keeps
a value in float the runtime computes it exactly as the trained model did.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from qat.runtime import kernels, packing, quantize as Q
from qat.runtime.errors import FormatError

FLOAT_POINTWISE = ("batchnorm", "relu", "hardtanh", "scale", "shift", "rprelu")
#: per-channel float32 tensors of each pointwise op (manifest field = tensor name = the model
#: module's attribute): the better-binary-network blocks of ``qat.quant.binary_blocks`` and BatchNorm
POINTWISE_TENSORS = {"batchnorm": ("weight", "bias", "running_mean", "running_var"), "scale": ("scale",),
                     "shift": ("shift",), "rprelu": ("bias_in", "slope", "bias_out")}


def _t(tensors: dict, name: str | None, what: str, dtype=None, shape=None) -> torch.Tensor | None:
    if name is None:
        return None
    if name not in tensors:
        raise FormatError(f"{what}: tensor '{name}' is not in tensors.safetensors")
    arr = tensors[name]
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise FormatError(f"{what}: tensor '{name}' has dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise FormatError(f"{what}: tensor '{name}' has shape {list(arr.shape)}, expected {list(shape)}")
    return torch.from_numpy(np.array(arr))


def _channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-channel vector broadcast along dim 1 of an ndim tensor."""
    return v.reshape([1, -1] + [1] * (ndim - 2))


def pointwise(op: dict, params: dict, x: torch.Tensor) -> torch.Tensor:
    """Float pointwise ops with the model's own torch arithmetic (bit for bit):

    * ``batchnorm`` (eval), ``relu``, ``hardtanh``;
    * ``scale``: ``x * scale[c]`` (``ChannelScale``); ``shift``: ``x + shift[c]`` (``ChannelShift``);
    * ``rprelu``: ``prelu(x + bias_in[c], slope[c]) + bias_out[c]`` (``RPReLU``).
    """
    kind = op["op"]
    if kind == "batchnorm":
        return F.batch_norm(x, params["running_mean"], params["running_var"], params["weight"],
                            params["bias"], False, 0.0, float(op["eps"]))
    if kind == "relu":
        return F.relu(x)
    if kind == "hardtanh":
        return F.hardtanh(x, float(op["min_val"]), float(op["max_val"]))
    if kind == "scale":
        return x * _channel(params["scale"], x.dim())
    if kind == "shift":
        return x + _channel(params["shift"], x.dim())
    if kind == "rprelu":
        return F.prelu(x + _channel(params["bias_in"], x.dim()), params["slope"]) + _channel(params["bias_out"], x.dim())
    raise FormatError(f"{kind} is not a pointwise op")


def pointwise_params(op: dict, tensors: dict) -> dict:
    """The per-channel tensors of a pointwise op (BatchNorm's weight and bias may be null)."""
    who = f"{op['op']} '{op.get('name')}'"
    names = POINTWISE_TENSORS.get(op["op"], ())
    params = {k: _t(tensors, op.get(k), who, np.float32) for k in names}
    if op["op"] != "batchnorm" and any(params[k] is None for k in names):
        raise FormatError(f"{who}: needs the tensors {', '.join(names)}")
    return params


class Op:
    """Base: ``run(env)`` reads ``inputs`` from ``env`` and writes ``outputs``."""

    def __init__(self, op: dict, tensors: dict, values: dict):
        self.spec = op
        self.name = op.get("name", op["outputs"][0])
        self.inputs = list(op["inputs"])
        self.outputs = list(op["outputs"])

    def run(self, env: dict) -> None:
        env[self.outputs[0]] = self.forward(*[env[i] for i in self.inputs])

    def forward(self, *xs):  # pragma: no cover - abstract
        raise NotImplementedError


class Quantize(Op):
    def __init__(self, op, tensors, values):
        super().__init__(op, tensors, values)
        self.quant = op["quant"]
        Q.code_bounds(self.quant)

    def forward(self, x):
        return Q.quantize(x, self.quant)


class Pointwise(Op):
    def __init__(self, op, tensors, values):
        super().__init__(op, tensors, values)
        self.params = pointwise_params(op, tensors)

    def forward(self, x):
        return pointwise(self.spec, self.params, x)


class MaxPool(Op):
    def forward(self, x):
        s = self.spec
        return F.max_pool2d(x, s["kernel_size"], s["stride"], s["padding"], s["dilation"], s["ceil_mode"])


class AvgPool(Op):
    def forward(self, x):
        s = self.spec
        return F.avg_pool2d(x, s["kernel_size"], s["stride"], s["padding"], s["ceil_mode"],
                            s["count_include_pad"], s["divisor_override"])


class GlobalAvgPool(Op):
    def forward(self, x):
        return F.adaptive_avg_pool2d(x, 1)


class Flatten(Op):
    def forward(self, x):
        return torch.flatten(x, int(self.spec["start_dim"]), int(self.spec["end_dim"]))


class Add(Op):
    def forward(self, a, b):
        return a + b


class Slice(Op):
    def forward(self, x):
        idx = tuple(slice(a, b, c) for a, b, c in self.spec["slices"][1:])
        return x[(slice(None),) + idx]


class Pad(Op):
    def forward(self, x):
        return F.pad(x, list(self.spec["pad"]), value=float(self.spec["value"]))


class Dequantize(Op):
    """int32 accumulator -> float32 ``acc * scale[c] + bias[c]``.

    Computed in float64 and rounded once to float32; when every scale is a power of two (and the
    accumulator is below 2^24) the product is exact and float32 arithmetic gives the same single
    rounding of ``acc * scale + bias``, as the model's float layer does.
    """

    def __init__(self, op, tensors, values):
        super().__init__(op, tensors, values)
        self.scale = _t(tensors, op["scale"], f"dequantize '{self.name}'", np.float64)
        self.bias = _t(tensors, op.get("bias"), f"dequantize '{self.name}'", np.float32)
        mant, _ = np.frexp(self.scale.numpy())
        self.exact32 = bool(np.all(mant == 0.5)) and int(op.get("acc_bound", 1 << 30)) < (1 << 24)
        self.scale32 = self.scale.to(torch.float32)

    def forward(self, acc):
        if self.exact32:
            y = acc.to(torch.float32) * _channel(self.scale32, acc.dim())
            return y + _channel(self.bias, acc.dim()) if self.bias is not None else y
        y = acc.to(torch.float64) * _channel(self.scale, acc.dim())
        if self.bias is not None:
            y = y + _channel(self.bias.to(torch.float64), acc.dim())
        return y.to(torch.float32)


class Threshold(Op):
    """BatchNorm + activation + sign folded to a per-channel comparison (BNN inference).

    ``code = +1`` if ``y >= T[c]`` (``direction[c] = +1``) or ``y < T[c]`` (``direction[c] = -1``),
    else ``-1``.
    """

    def __init__(self, op, tensors, values):
        super().__init__(op, tensors, values)
        dt = np.int32 if op["domain"] == "int" else np.float32
        self.t = _t(tensors, op["threshold"], f"threshold '{self.name}'", dt)
        d = _t(tensors, op["direction"], f"threshold '{self.name}'", np.int8, self.t.shape)
        if not bool(((d == 1) | (d == -1)).all()):
            raise FormatError(f"threshold '{self.name}': directions must be +1 or -1")
        self.up = d > 0

    def forward(self, y):
        plus = (y >= _channel(self.t, y.dim())) == _channel(self.up, y.dim())
        return plus.to(torch.int8).mul_(2).sub_(1)


class Requantize(Op):
    """int32 accumulator -> output codes (Jacob et al. 2018, section 2.2)::

        q = clamp(Z + (((acc << f[c]) + bias[c]) * M0[c] + 2^(n[c]-1)) >> n[c], lo, hi)

    ``bias`` is int32 in units of ``S_x S_w 2^-f`` (``f = bias_shift``, 0 when absent).
    """

    def __init__(self, op, tensors, values):
        super().__init__(op, tensors, values)
        who = f"requantize '{self.name}'"
        self.m0 = _t(tensors, op["multiplier"], who, np.int32).to(torch.int64)
        self.n = _t(tensors, op["shift"], who, np.int8, self.m0.shape).to(torch.int64)
        self.bias = _t(tensors, op["bias"], who, np.int32, self.m0.shape).to(torch.int64)
        f = _t(tensors, op.get("bias_shift"), who, np.int8, self.m0.shape)
        self.f = torch.zeros_like(self.n) if f is None else f.to(torch.int64)
        if bool(((self.n < 0) | (self.n > 62)).any()) or bool(((self.f < 0) | (self.f > 30)).any()):
            raise FormatError(f"{who}: shifts must be in [0, 62] and bias shifts in [0, 30]")
        self.rnd = torch.where(self.n > 0, torch.ones_like(self.n) << (self.n - 1).clamp_min(0), 0)
        self.zp = int(op["zero_point"])
        self.lo, self.hi = (int(v) for v in op["clamp"])
        self.quant = op["quant"]
        self.dtype = Q.code_dtype(*Q.code_bounds(self.quant))

    def forward(self, acc):
        d = acc.dim()
        v = torch.bitwise_left_shift(acc.to(torch.int64), _channel(self.f, d))
        v = v.add_(_channel(self.bias, d)).mul_(_channel(self.m0, d)).add_(_channel(self.rnd, d))
        q = torch.bitwise_right_shift(v, _channel(self.n, d)).add_(self.zp)
        return q.clamp_(self.lo, self.hi).to(self.dtype)


class Layer(Op):
    """conv2d / linear. ``compute`` says how:

    * ``xnor_popcount``: ±1 inputs and weights, int32 accumulator by XNOR-popcount;
    * ``int``: integer codes, exact int32 accumulator of ``(x - zx)(w - zw)``;
    * ``signed_sum``: float inputs, weights in {-1, 0, +1}: ``scale[c] * sum(±x) + bias``;
    * ``float``: float32 arithmetic on decoded inputs and weights (full precision, or codebook kinds).
    """

    def __init__(self, op, tensors, values):
        super().__init__(op, tensors, values)
        self.conv = op["op"] == "conv2d"
        self.compute = op["compute"]
        self.in_spec = op["input"]
        w = op["weight"]
        who = f"{op['op']} '{self.name}'"
        if self.conv:
            o, i, (kh, kw) = int(op["out_channels"]), int(op["in_channels"]), op["kernel_size"]
            self.groups = int(op.get("groups", 1))
            shape = [o, kh, kw, i // self.groups]
            self.geom = (op["kernel_size"], op["stride"], op["padding"], op["dilation"])
        else:
            o, i = int(op["out_features"]), int(op["in_features"])
            self.groups = 1
            shape = [o, i]
        if list(w["shape"]) != shape:
            raise FormatError(f"{who}: weight shape {w['shape']} does not match the layer ({shape})")
        self.out = o
        self.bias = _t(tensors, op.get("bias"), who, np.float32, (o,))
        buf = tensors.get(w["tensor"])
        if buf is None:
            raise FormatError(f"{who}: tensor '{w['tensor']}' is not in tensors.safetensors")
        if w["encoding"] == "float32":
            codes = None
            self.w_float = self._to_torch_layout(_t(tensors, w["tensor"], who, np.float32, shape))
        else:
            try:
                codes = packing.unpack(buf, w, dtype=np.int64)
            except packing.PackingError as err:
                raise FormatError(f"{who}: {err}") from err
            self.w_float = self._decode_weight(codes, w, tensors, who)
        if codes is None and self.compute != "float":
            raise FormatError(f"{who}: compute {self.compute!r} needs integer weight codes, not float32")
        if self.compute == "xnor_popcount":
            if w["encoding"] != "bits" or w["bits"] != 1 or self.in_spec["kind"] != "sign":
                raise FormatError(f"{who}: xnor_popcount needs 1-bit weights and sign inputs")
            k = int(np.prod(shape[1:]))
            words = kernels.words64_from_file(np.asarray(buf), o, packing.matrix_shape(shape)[2])
            self.kernel = (kernels.BinaryConv2d(words, i, *self.geom) if self.conv
                           else kernels.BinaryMatmul(words, k))
        elif self.compute == "int":
            zw = _t(tensors, w.get("zero_point"), who, np.int32)
            zw = np.zeros(1, np.int64) if zw is None else zw.numpy().astype(np.int64)
            zw = np.broadcast_to(zw.reshape(-1), (o,)).copy()
            _, zx = Q.scale_and_zero_point(self.in_spec)
            self.kernel = kernels.IntMatmul(codes.reshape(o, -1), zw, Q.code_bounds(self.in_spec), zx)
        elif self.compute == "signed_sum":
            if w["kind"] not in ("sign", "binary", "ternary"):
                raise FormatError(f"{who}: signed_sum needs sign, binary or ternary weights")
            self.w_codes = self._to_torch_layout(torch.from_numpy(codes).to(torch.float32))
            scale = _t(tensors, w.get("scale"), who, np.float32)
            self.post_scale = None if scale is None or bool((scale == 1).all()) else scale.reshape(-1)
        elif self.compute != "float":
            raise FormatError(f"{who}: unknown compute {self.compute!r}")

    def _to_torch_layout(self, t: torch.Tensor) -> torch.Tensor:
        return t.permute(0, 3, 1, 2).contiguous() if self.conv else t

    def _decode_weight(self, codes: np.ndarray, w: dict, tensors: dict, who: str) -> torch.Tensor:
        """Float32 weights in torch layout, decoded as the library's ``dequantize`` does."""
        if w["kind"] in Q.CODEBOOK_KINDS:  # the formula, on the model's own (OIHW) layout
            spec = {"kind": w["kind"], "bits": int(w["bits"]), "sf": w.get("sf", 0)}
            return Q.dequantize(self._to_torch_layout(torch.from_numpy(codes)).contiguous(), spec)
        if w["kind"] == "sign":
            return self._to_torch_layout(torch.from_numpy(codes).to(torch.float32))
        scale = _t(tensors, w["scale"], who, np.float32)
        zp = _t(tensors, w["zero_point"], who)
        shape = [-1] + [1] * (codes.ndim - 1)
        s = scale.reshape(shape) if scale.dim() else scale
        z = zp.to(torch.float32)
        z = z.reshape(shape) if z.dim() else z
        return self._to_torch_layout(s * (torch.from_numpy(codes).to(torch.float32) - z))

    def _float_input(self, x):
        if self.in_spec["kind"] == "float":
            return x
        return Q.dequantize(x, self.in_spec)

    def forward(self, x):
        if self.compute == "xnor_popcount":
            return self.kernel(x) if self.conv else self.kernel.linear(x)
        if self.compute == "int":
            xi = self.kernel.prepare(x)
            if not self.conv:
                return self.kernel(xi)
            rows, ho, wo = kernels.im2col(xi, *self.geom, pad_value=self.kernel.pad_value())
            out = self.kernel(rows)
            return out.reshape(x.shape[0], ho, wo, self.out).permute(0, 3, 1, 2).contiguous()
        if self.compute == "signed_sum":
            y = self._apply(x, self.w_codes, None)
            if self.post_scale is not None:
                y = y * _channel(self.post_scale, y.dim())
            return y + _channel(self.bias, y.dim()) if self.bias is not None else y
        return self._apply(self._float_input(x), self.w_float, self.bias)

    def _apply(self, x, w, b):
        if self.conv:
            k, s, p, d = self.geom
            return F.conv2d(x, w, b, s, p, d, self.groups)
        return F.linear(x, w, b)


class DynamicQuantizeDecode(Op):
    """Quantize then decode with a range taken from the tensor itself (min-max, ``range: dynamic``):
    the codes and the values they decode to both depend on the whole batch, so one op does both."""

    def __init__(self, op, tensors, values):
        super().__init__(op, tensors, values)
        self.quant = op["quant"]

    def forward(self, x):
        return Q.dequantize(Q.quantize(x, self.quant), self.quant, x=x)


OPS = {
    "quantize": Quantize, "conv2d": Layer, "linear": Layer, "dequantize": Dequantize,
    "threshold": Threshold, "requantize": Requantize, "batchnorm": Pointwise, "relu": Pointwise,
    "hardtanh": Pointwise, "scale": Pointwise, "shift": Pointwise, "rprelu": Pointwise, "maxpool2d": MaxPool, "avgpool2d": AvgPool, "global_avgpool": GlobalAvgPool,
    "flatten": Flatten, "add": Add, "slice": Slice, "pad": Pad, "fake_quantize": DynamicQuantizeDecode,
}
