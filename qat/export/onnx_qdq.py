"""ONNX QDQ form of an integer-affine model (qat_uint8): the layout onnxruntime fuses into its
fastest integer kernels (``QLinearConv``), built from the traced model. Not what ``qat.runtime``
computes: the standard QDQ bias is int32 at ``S_x S_w`` and onnxruntime requantizes in float32, so
codes near a rounding boundary differ (on an untrained network, a few per cent of them after a dozen
layers; BENCHMARKS.md, issue 10). ``export_model(..., onnx_form="qdq")`` writes it as ``model.onnx``
(speed baselines use it); the default is ``qat.export.onnx_export``'s exact form.

Every quantized layer becomes ``QuantizeLinear -> DequantizeLinear`` on its input, ``DequantizeLinear``
on its uint8 weight codes (per output channel, ``axis=0``) and on its int32 bias (scale
``S_x * S_w[c]``, zero point 0), then a float ``Conv`` / ``Gemm``. The float operations between layers
(BatchNorm that does not fold, ReLU, pooling, adds) are the model's own. Only layers whose inputs and
weights are 8-bit affine (or float) are supported.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from qat.export.onnx_export import OPSET, OnnxUnsupported
from qat.export.quantspec import input_spec, weight_codes
from qat.export.trace import Node



def _np(t: torch.Tensor, dtype) -> np.ndarray:
    return t.detach().cpu().numpy().astype(dtype)


def to_qdq_onnx(model: nn.Module, nodes: list[Node], input_name: str, output_name: str,
                input_shape: tuple[int, int, int]) -> bytes:
    """Serialized ONNX model of the traced ``nodes`` (see the module docstring)."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as err:  # optional dependency
        raise OnnxUnsupported(f"the onnx package is not installed ({err}); pip install onnx") from None

    inits, graph_nodes = [], []
    counter = [0]

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def add(op: str, ins: list[str], out: str | None = None, **attrs) -> str:
        counter[0] += 1
        out = out or f"{op.lower()}_{counter[0]}"
        graph_nodes.append(helper.make_node(op, ins, [out], name=f"{op}_{counter[0]}", **attrs))
        return out

    qdq_cache: dict[tuple, str] = {}

    def qdq(v: str, spec: dict, who: str) -> str:
        if spec["kind"] != "affine" or spec["bits"] != 8 or (spec["qmin"], spec["qmax"]) != (0, 255):
            raise OnnxUnsupported(f"{who}: input quantizer {spec['kind']} ({spec['bits']} bits, "
                                  f"[{spec.get('qmin')}, {spec.get('qmax')}]) has no QuantizeLinear form")
        key = (v, spec["scale"], spec["zero_point"])
        if key not in qdq_cache:
            s = const(f"{v}.in_scale", np.float32(spec["scale"]))
            z = const(f"{v}.in_zero_point", np.uint8(spec["zero_point"]))
            q = add("QuantizeLinear", [v, s, z], f"{v}.q")
            qdq_cache[key] = add("DequantizeLinear", [q, s, z], f"{v}.dq")
        return qdq_cache[key]

    for n in nodes:
        out = n.name
        mod = n.attrs.get("module", n.name)
        if n.op == "layer":
            m = n.module
            who = f"layer '{mod}'"
            spec, _ = input_spec(m, who)
            x = n.inputs[0] if spec is None else qdq(n.inputs[0], spec, who)
            codes, effective, bias = weight_codes(m, who)
            if codes is None:
                w = const(f"{mod}.weight", _np(effective, np.float32))
                b = const(f"{mod}.bias", _np(bias, np.float32)) if bias is not None else None
            else:
                if codes.kind != "affine" or codes.bits != 8:
                    raise OnnxUnsupported(f"{who}: {codes.kind} weight codes have no DequantizeLinear form")
                dt = np.uint8 if int(codes.codes.min()) >= 0 else np.int8
                wq = const(f"{mod}.weight_q", _np(codes.codes, dt))
                per = codes.axis is not None
                ws = const(f"{mod}.weight_scale", _np(codes.scale.reshape(-1) if per else codes.scale.reshape(()),
                                                      np.float32))
                wz = const(f"{mod}.weight_zero_point", _np(codes.zero_point.reshape(-1) if per else
                                                           codes.zero_point.reshape(()), dt))
                w = add("DequantizeLinear", [wq, ws, wz], f"{mod}.weight", **({"axis": 0} if per else {}))
                b = None
                if bias is not None:
                    if spec is None:
                        b = const(f"{mod}.bias", _np(bias, np.float32))
                    else:
                        s_b = (np.float32(spec["scale"]) * codes.scale.detach().float().reshape(-1).numpy())
                        s_b = np.broadcast_to(s_b, bias.shape).astype(np.float32)
                        b_int = np.rint(bias.detach().double().numpy() / s_b.astype(np.float64))
                        bq = const(f"{mod}.bias_q", b_int.astype(np.int32))
                        bs = const(f"{mod}.bias_scale", s_b)
                        bz = const(f"{mod}.bias_zero_point", np.zeros(s_b.shape, np.int32))
                        b = add("DequantizeLinear", [bq, bs, bz], f"{mod}.bias", axis=0)
            ins = [x, w] + ([b] if b is not None else [])
            if isinstance(m, nn.Conv2d):
                p = list(m.padding)
                add("Conv", ins, out, strides=list(m.stride), pads=p + p, dilations=list(m.dilation),
                    group=int(m.groups), kernel_shape=list(m.kernel_size))
            else:
                add("Gemm", ins, out, transB=1)
        elif n.op == "batchnorm":
            m = n.module
            c = m.running_mean.numel()
            g = _np(m.weight, np.float32) if m.weight is not None else np.ones(c, np.float32)
            bb = _np(m.bias, np.float32) if m.bias is not None else np.zeros(c, np.float32)
            add("BatchNormalization", [n.inputs[0], const(f"{mod}.gamma", g), const(f"{mod}.beta", bb),
                                       const(f"{mod}.mean", _np(m.running_mean, np.float32)),
                                       const(f"{mod}.var", _np(m.running_var, np.float32))], out,
                epsilon=float(m.eps))
        elif n.op == "relu":
            add("Relu", [n.inputs[0]], out)
        elif n.op == "hardtanh":
            add("Clip", [n.inputs[0], const(f"{out}.min", np.float32(n.attrs["min_val"])),
                         const(f"{out}.max", np.float32(n.attrs["max_val"]))], out)
        elif n.op == "maxpool2d":
            a = n.attrs
            add("MaxPool", [n.inputs[0]], out, kernel_shape=a["kernel_size"], strides=a["stride"],
                pads=a["padding"] + a["padding"], dilations=a["dilation"], ceil_mode=int(a["ceil_mode"]))
        elif n.op == "avgpool2d":
            a = n.attrs
            if a["divisor_override"]:
                raise OnnxUnsupported(f"'{mod}': AvgPool2d(divisor_override) has no ONNX form")
            add("AveragePool", [n.inputs[0]], out, kernel_shape=a["kernel_size"], strides=a["stride"],
                pads=a["padding"] + a["padding"], ceil_mode=int(a["ceil_mode"]),
                count_include_pad=int(a["count_include_pad"]))
        elif n.op == "global_avgpool":
            add("GlobalAveragePool", [n.inputs[0]], out)
        elif n.op in ("sigmoid", "hardswish"):
            add({"sigmoid": "Sigmoid", "hardswish": "HardSwish"}[n.op], [n.inputs[0]], out)
        elif n.op == "hardsigmoid":  # torch's relu6(x + 3) / 6
            add("HardSigmoid", [n.inputs[0]], out, alpha=1.0 / 6.0, beta=0.5)
        elif n.op == "silu":
            add("Mul", [n.inputs[0], add("Sigmoid", [n.inputs[0]])], out)
        elif n.op == "mul":
            add("Mul", list(n.inputs), out)
        elif n.op == "concat":
            add("Concat", list(n.inputs), out, axis=int(n.attrs["dim"]))
        elif n.op == "reshape":
            add("Reshape", [n.inputs[0], const(f"{out}.shape", np.array([-1] + n.attrs["shape"][1:], np.int64))],
                out)
        elif n.op == "permute":
            add("Transpose", [n.inputs[0]], out, perm=list(n.attrs["dims"]))
        elif n.op == "flatten":
            if n.attrs["start_dim"] != 1 or len(n.shape) != 2:
                raise OnnxUnsupported(f"'{mod}': only flatten(start_dim=1) to [N, features] has an ONNX form")
            add("Flatten", [n.inputs[0]], out, axis=1)
        elif n.op == "add":
            add("Add", list(n.inputs), out)
        elif n.op == "slice":
            sl = n.attrs["slices"]
            axes = [d for d, s in enumerate(sl) if d > 0]
            add("Slice", [n.inputs[0], const(f"{out}.starts", np.array([sl[d][0] for d in axes], np.int64)),
                          const(f"{out}.ends", np.array([sl[d][1] for d in axes], np.int64)),
                          const(f"{out}.axes", np.array(axes, np.int64)),
                          const(f"{out}.steps", np.array([sl[d][2] for d in axes], np.int64))], out)
        elif n.op == "pad":
            pad, rank = n.attrs["pad"], len(n.shape)
            begins, ends = [0] * rank, [0] * rank
            for i in range(len(pad) // 2):  # F.pad pairs run from the last dimension backwards
                begins[rank - 1 - i], ends[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
            add("Pad", [n.inputs[0], const(f"{out}.pads", np.array(begins + ends, np.int64)),
                        const(f"{out}.value", np.float32(n.attrs["value"]))], out, mode="constant")
        else:
            raise OnnxUnsupported(f"'{mod}': op {n.op} has no ONNX mapping")

    c, h, w = input_shape
    graph = helper.make_graph(
        graph_nodes, "qat_export",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT,
                                       ["N"] + list(next(x.shape for x in nodes if x.name == output_name)[1:]))],
        initializer=inits)
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                    producer_name="qat")
    model_proto.ir_version = 8
    onnx.checker.check_model(model_proto)
    return model_proto.SerializeToString()
