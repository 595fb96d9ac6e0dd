"""The operations of a manifest, each built once from its entry and the export's tensors.

Values are NCHW (or NC) torch tensors: float32 activations, int32 accumulators, or integer codes.
Float operations are torch's own functions with the model's parameters, so where the manifest keeps
a value in float the runtime computes it exactly as the trained model did.

This module holds the layers and the integer ops (quantize, dequantize, threshold, requantize);
every other op family has a module of its own (``pointwise``, ``pooling``, ``shape_ops``,
``elementwise``) with its fields and its kernel side by side, merged into ``OPS`` here.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from qat.runtime import elementwise, kernels, packing, pointwise, pooling, quantize as Q, shape_ops
from qat.runtime.errors import FormatError
from qat.runtime.opbase import Op, channel as _channel, tensor as _t


class Quantize(Op):
    def __init__(self, op, tensors, values):
        super().__init__(op, tensors, values)
        self.quant = op["quant"]
        Q.code_bounds(self.quant)

    def forward(self, x):
        return Q.quantize(x, self.quant)


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
    * ``ternary_popcount``: ±1 inputs, weights in {-1, 0, +1}, int32 accumulator from the weights'
      non-zero and positive bit planes (``kernels.TernaryConv2d``);
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
            if self.groups < 1 or i % self.groups or o % self.groups:
                raise FormatError(f"{op['op']} '{op.get('name')}': groups={self.groups} must divide "
                                  f"in_channels={i} and out_channels={o}")
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
            self.kernel = (kernels.BinaryConv2d(words, i, *self.geom, groups=self.groups) if self.conv
                           else kernels.BinaryMatmul(words, k))
        elif self.compute == "ternary_popcount":
            if w["kind"] != "ternary" or self.in_spec["kind"] != "sign":
                raise FormatError(f"{who}: ternary_popcount needs ternary weights and sign inputs")
            rows = codes.reshape(o, -1)
            if np.any(np.abs(rows) > 1):
                raise FormatError(f"{who}: ternary_popcount weight codes must be -1, 0 or +1")
            self.kernel = (kernels.TernaryConv2d(rows, i, *self.geom, groups=self.groups) if self.conv
                           else kernels.TernaryMatmul(rows))
        elif self.compute == "int":
            zw = _t(tensors, w.get("zero_point"), who, np.int32)
            zw = np.zeros(1, np.int64) if zw is None else zw.numpy().astype(np.int64)
            zw = np.broadcast_to(zw.reshape(-1), (o,)).copy()
            _, zx = Q.scale_and_zero_point(self.in_spec)
            self.int_codes, self.int_zero = codes, zw  # OHWI / OI int64 and [O]; the ONNX form reads them
            if self.groups > 1:
                self.kernel = kernels.GroupedIntMatmul(codes.reshape(o, -1), zw, zx, self.groups, i)
            else:
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
        if self.compute in ("xnor_popcount", "ternary_popcount"):
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
    "threshold": Threshold, "requantize": Requantize, "fake_quantize": DynamicQuantizeDecode,
    **pointwise.OPS, **pooling.OPS, **shape_ops.OPS, **elementwise.OPS,
}
