"""Trace a prepared model (torch.fx) into canonical operations: the export's operation graph.

Quantized layers (``QuantConv2d``, ``QuantConvBn2d``, ``QuantLinear``) and torch's own modules are
leaves; anything else (torchvision's blocks, ResNet's ``PadShortcut``) is traced through to the
functions it calls. Many spellings compute one thing (``nn.ReLU``, ``F.relu``, ``x.relu()``;
``nn.Flatten``, ``x.view(x.size(0), -1)``, ``torch.flatten``; ``nn.AdaptiveAvgPool2d(1)``,
``x.mean([2, 3])``): each fx node is first reduced to one canonical function and its arguments bound
to one signature (``SPELLINGS``), then made into one manifest op (``CANONICAL``).

The model is run twice on the traced graph (batches of 2 and 3), recording every node's value:

* values that are not tensors (``x.shape``, ``x.size(1) // 2``) are resolved at trace time;
* reshapes (``view``, ``reshape``, ``flatten``, ``squeeze``, ...) take their target shape from the
  recorded output, whatever expression computed it;
* every tensor keeps the batch as its first dimension in both runs, so the manifest's ``null``
  batch dimension is sound, and a trace-time constant that depends on the batch may only size a
  reshape.

An op that does not export is named with the module path of the layer that calls it.
"""

from __future__ import annotations

import inspect
import math
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Interpreter
from torch.fx.node import map_aggregate
from torchvision.ops import StochasticDepth, stochastic_depth

from qat.export.errors import ExportError
from qat.quant.binary_blocks import ChannelScale, ChannelShift, RPReLU
from qat.quant.layers import QuantConv2d, QuantLinear

LAYER_TYPES = (nn.Conv2d, nn.Linear)  # QuantConv2d / QuantConvBn2d / QuantLinear subclass these
BATCHES = (2, 3)
#: the better-binary-network blocks (bnn's options): leaves, each one per-channel float pointwise op
BLOCK_OPS = {ChannelScale: "scale", ChannelShift: "shift", RPReLU: "rprelu"}


@dataclass
class Node:
    """One operation: ``op`` is a manifest op name (``layer`` for Conv2d / Linear)."""

    name: str
    op: str
    inputs: list[str]
    shape: tuple[int, ...]
    module: nn.Module | None = None
    attrs: dict = field(default_factory=dict)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (QuantConv2d, QuantLinear)) or type(m) in BLOCK_OPS:
            return True
        return super().is_leaf_module(m, qualname)


# --------------------------------------------------------------------------- spellings -> functions
def _identity(input):  # noqa: A002 - torch's argument names
    return input


def _reshape(input, *shape):  # noqa: A002 - every view-like spelling; the shape comes from the trace
    return input


def _max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,  # noqa: A002
                return_indices=False):
    ...


def _avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,  # noqa: A002
                count_include_pad=True, divisor_override=None):
    ...


def _dropout(input, p=0.5, training=True, inplace=False):  # noqa: A002
    ...


def _stochastic_depth(input, p, mode, training=True):  # noqa: A002
    ...


def _mean(input, dim=None, keepdim=False, dtype=None):  # noqa: A002
    ...


def _transpose(input, dim0, dim1):  # noqa: A002
    ...


def _permute(input, *dims):  # noqa: A002
    ...


def _cat(tensors, dim=0):
    ...


def _pad(input, pad, mode="constant", value=None):  # noqa: A002
    ...


def _hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):  # noqa: A002
    ...


def _relu6(input, inplace=False):  # noqa: A002
    ...


def _batchnorm(input, eps):  # noqa: A002 - a BatchNorm module in eval mode (its tensors are the module's)
    ...


def _adaptive_avg_pool2d(input, output_size):  # noqa: A002
    ...


def _split(input, split_size_or_sections, dim=0):  # noqa: A002 - chunk, split: a tuple of slices
    ...


def _binary(input, other, alpha=1):  # noqa: A002 - add / mul
    ...


def _unary(input, inplace=False):  # noqa: A002 - an activation without parameters
    ...


def _channel_block(input, op):  # noqa: A002 - a bnn block (its per-channel tensors are the module's)
    ...


def _module_call(m: nn.Module) -> tuple[object, dict] | None:
    """``(canonical function, keyword arguments)`` that a leaf module computes, or None."""
    if isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout2d, StochasticDepth)):
        return _identity, {}
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if not m.track_running_stats or m.running_mean is None:
            raise _Unsupported("BatchNorm without running statistics does not export")
        return _batchnorm, {"eps": m.eps}
    if type(m) in BLOCK_OPS:
        return _channel_block, {"op": BLOCK_OPS[type(m)]}
    if isinstance(m, nn.Hardtanh):  # ReLU6 too
        return _hardtanh, {"min_val": m.min_val, "max_val": m.max_val}
    unary = {nn.ReLU: "relu", nn.SiLU: "silu", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
             nn.Sigmoid: "sigmoid"}
    if type(m) in unary:
        return _unary, {"op": unary[type(m)]}
    if isinstance(m, nn.MaxPool2d):
        return _max_pool2d, {k: getattr(m, k) for k in ("kernel_size", "stride", "padding", "dilation",
                                                         "ceil_mode", "return_indices")}
    if isinstance(m, nn.AvgPool2d):
        return _avg_pool2d, {k: getattr(m, k) for k in ("kernel_size", "stride", "padding", "ceil_mode",
                                                         "count_include_pad", "divisor_override")}
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return _adaptive_avg_pool2d, {"output_size": m.output_size}
    if isinstance(m, nn.Flatten):
        return _reshape, {}
    return None


#: call_function targets and call_method names -> canonical function (a signature stub above)
SPELLINGS = {
    operator.add: _binary, torch.add: _binary, "add": _binary,
    operator.mul: _binary, torch.mul: _binary, "mul": _binary,
    F.relu: _unary, torch.relu: _unary, "relu": _unary, F.relu6: _relu6, F.hardtanh: _hardtanh,
    F.silu: _unary, F.hardswish: _unary, F.hardsigmoid: _unary,
    torch.sigmoid: _unary, F.sigmoid: _unary, "sigmoid": _unary,
    torch.flatten: _reshape, torch.reshape: _reshape, torch.squeeze: _reshape, torch.unsqueeze: _reshape,
    "flatten": _reshape, "view": _reshape, "reshape": _reshape, "squeeze": _reshape,
    "unsqueeze": _reshape, "unflatten": _reshape, "view_as": _reshape, "reshape_as": _reshape,
    "contiguous": _identity, F.dropout: _dropout,
    torch.transpose: _transpose, "transpose": _transpose, torch.permute: _permute, "permute": _permute,
    torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat,
    torch.mean: _mean, "mean": _mean, F.adaptive_avg_pool2d: _adaptive_avg_pool2d,
    F.max_pool2d: _max_pool2d, F.avg_pool2d: _avg_pool2d, F.pad: _pad,
    torch.chunk: _split, "chunk": _split, torch.split: _split, "split": _split,
    stochastic_depth: _stochastic_depth,
}

# --------------------------------------------------------------------------- canonical ops
def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(t) for t in v]


def _dims(dims, ndim: int) -> list[int]:
    dims = [dims] if isinstance(dims, int) else list(dims)
    return sorted(int(d) % ndim for d in dims)


class _Unsupported(Exception):
    """Raised by a canonical op for arguments it cannot export; the caller adds the module path."""


def _slices(index, shape_in) -> list[list[int]]:
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in index):
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (len(shape_in) - len(index) + 1) + index[k + 1:]
    out = []
    for d, size in enumerate(shape_in):
        s = index[d] if d < len(index) else slice(None)
        if not isinstance(s, slice):
            raise _Unsupported(f"only slicing with start:stop:step exports, got {index!r}")
        start, stop, step = s.indices(size)
        if step <= 0:
            raise _Unsupported("negative slice steps do not export")
        out.append([start, stop, step])
    if out[0] != [0, shape_in[0], 1]:
        raise _Unsupported("slicing the batch dimension does not export")
    return out


def canonical(fn, a: dict, ins: list[str], shapes: dict, shape: tuple) -> tuple[str, dict] | str:
    """The manifest op ``(op, attrs)`` of a canonical function with bound arguments ``a``, or the
    input name when the op is an identity at inference."""
    x_shape = shapes[ins[0]] if ins else ()
    if fn is _identity:
        return ins[0]
    if fn in (_dropout, _stochastic_depth):
        if a.get("training", True) and a.get("p", 0.5) != 0:
            raise _Unsupported("dropout in training mode (training=True) does not export; call it with "
                               "training=self.training")
        return ins[0]
    if fn is _unary:
        return a.get("op") or a["__name__"], {}  # a module's op, or the function / method name
    if fn is _batchnorm:
        return "batchnorm", {"eps": float(a["eps"])}
    if fn is _channel_block:
        return a["op"], {}
    if fn is _relu6:
        return "hardtanh", {"min_val": 0.0, "max_val": 6.0}
    if fn is _hardtanh:
        return "hardtanh", {"min_val": float(a["min_val"]), "max_val": float(a["max_val"])}
    if fn is _binary:
        if len(ins) != 2 or a.get("alpha", 1) != 1:
            raise _Unsupported("only the sum or product of two tensors exports (not with a constant)")
        return ("add" if a["__name__"] == "add" else "mul"), {}
    if fn is _reshape:
        if x_shape == shape:
            return ins[0]
        if len(shape) == 2 and shape[1] == math.prod(x_shape[1:]):
            return "flatten", {"start_dim": 1, "end_dim": -1}
        return "reshape", {"shape": [None] + [int(s) for s in shape[1:]]}
    if fn in (_transpose, _permute):
        nd = len(x_shape)
        if fn is _transpose:
            dims = list(range(nd))
            d0, d1 = int(a["dim0"]) % nd, int(a["dim1"]) % nd
            dims[d0], dims[d1] = dims[d1], dims[d0]
        else:
            raw = a["dims"]
            dims = [int(d) % nd for d in (raw[0] if len(raw) == 1 and not isinstance(raw[0], int) else raw)]
        if dims[0] != 0:
            raise _Unsupported("moving the batch dimension does not export")
        return ("permute", {"dims": dims}) if dims != list(range(nd)) else ins[0]
    if fn is _cat:
        dim = int(a.get("dim", 0)) % len(shape)
        if dim == 0:
            raise _Unsupported("concatenating along the batch dimension does not export")
        return "concat", {"dim": dim}
    if fn is _mean or fn is _adaptive_avg_pool2d:
        if len(x_shape) != 4:
            raise _Unsupported(f"average pooling of a {len(x_shape)}-d value does not export")
        if fn is _mean:
            if a.get("dtype") is not None or a["dim"] is None or _dims(a["dim"], 4) != [2, 3]:
                raise _Unsupported("only the mean over H and W (dims 2, 3) exports")
            return "global_avgpool", {"keepdim": bool(a["keepdim"])}
        if tuple(shape[2:]) == (1, 1):
            return "global_avgpool", {"keepdim": True}
        if tuple(x_shape[2:]) == tuple(shape[2:]):  # pooling to the input's own size
            return ins[0]
        raise _Unsupported(f"adaptive average pooling to {a['output_size']} does not export (only to 1 x 1)")
    if fn is _max_pool2d:
        if a.get("return_indices"):
            raise _Unsupported("max pooling with return_indices=True does not export")
        return "maxpool2d", {
            "kernel_size": _pair(a["kernel_size"]), "stride": _pair(a.get("stride") or a["kernel_size"]),
            "padding": _pair(a.get("padding", 0)), "dilation": _pair(a.get("dilation", 1)),
            "ceil_mode": bool(a.get("ceil_mode", False))}
    if fn is _avg_pool2d:
        return "avgpool2d", {
            "kernel_size": _pair(a["kernel_size"]), "stride": _pair(a.get("stride") or a["kernel_size"]),
            "padding": _pair(a.get("padding", 0)), "ceil_mode": bool(a.get("ceil_mode", False)),
            "count_include_pad": bool(a.get("count_include_pad", True)),
            "divisor_override": a.get("divisor_override")}
    if fn is _pad:
        if a.get("mode", "constant") != "constant":
            raise _Unsupported(f"only constant padding exports, got mode={a['mode']!r}")
        return "pad", {"pad": [int(p) for p in a["pad"]], "value": float(a.get("value") or 0.0)}
    raise _Unsupported(f"{getattr(fn, '__name__', fn)} is not supported by the exporter")


# --------------------------------------------------------------------------- tracing
class _Record(Interpreter):
    """Runs the graph and keeps every node's value: tensors as ``(shape, dtype)``, the rest as is."""

    def __init__(self, gm):
        super().__init__(gm)
        self.values: dict[str, object] = {}

    def run_node(self, n):
        out = super().run_node(n)
        self.values[n.name] = map_aggregate(
            out, lambda v: _TensorMeta(tuple(int(s) for s in v.shape), v.dtype) if isinstance(v, torch.Tensor)
            else v)
        return out


@dataclass(frozen=True)
class _TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype


def _has_tensor(v) -> bool:
    found = []
    map_aggregate(v, lambda t: found.append(isinstance(t, _TensorMeta)))
    return any(found)


def _path(n: torch.fx.Node) -> str:
    """The module path of the layer that calls ``n`` ("" for the model's own forward)."""
    stack = n.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


def _where(n: torch.fx.Node) -> str:
    return f"'{_path(n)}'" if _path(n) else "the model's top-level forward"


def _spelling(n: torch.fx.Node, modules: dict) -> tuple[object, dict | None]:
    """``(canonical function, arguments bound to its signature)``; the dict is None for a layer."""
    if n.op == "call_module":
        m = modules[n.target]
        if isinstance(m, LAYER_TYPES):
            return "layer", None
        made = _module_call(m)
        if made is None:
            raise _Unsupported(f"module {type(m).__name__} is not supported by the exporter")
        fn, kwargs = made
        return fn, {"input": n.args[0], **kwargs}
    key = n.target
    fn = SPELLINGS.get(key)
    if fn is None:
        name = key if isinstance(key, str) else getattr(key, "__name__", str(key))
        raise _Unsupported(f"{'method' if n.op == 'call_method' else 'function'} {name} is not supported "
                           "by the exporter")
    try:
        bound = inspect.signature(fn).bind(*n.args, **n.kwargs)
    except TypeError as err:
        raise _Unsupported(f"arguments {n.args[1:]} {n.kwargs} not understood ({err})") from None
    bound.apply_defaults()
    args = dict(bound.arguments)
    for k in ("shape", "dims"):
        if k in args and isinstance(args[k], tuple):
            args[k] = list(args[k])
    args["__name__"] = key if isinstance(key, str) else getattr(key, "__name__", "")
    return fn, args


def trace(model: nn.Module, example: torch.Tensor) -> tuple[list[Node], str, str]:
    """``(nodes, input_name, output_name)`` of an eval-mode model on ``example`` (a small batch)."""
    if model.training:
        raise ExportError("trace needs the model in eval mode (call model.eval())")
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # data-dependent control flow, unsupported Python
        raise ExportError(f"torch.fx could not trace {type(model).__name__}: {err}. The exporter needs a "
                          "forward pass without data-dependent control flow") from err
    gm = torch.fx.GraphModule(model, graph)
    runs = []
    for b in BATCHES:
        x = example[:1].expand(b, *example.shape[1:]) if example.shape[0] < b else example[:b]
        rec = _Record(gm)
        with torch.no_grad():
            rec.run(x.contiguous())
        runs.append(rec.values)
    values, other = runs
    modules = dict(model.named_modules())
    alias: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    splits: dict[str, tuple[str, int, list[int]]] = {}
    nodes: list[Node] = []
    input_name = output_name = None

    for n in graph.nodes:
        v = values.get(n.name)
        if n.op == "placeholder":
            if input_name is not None:
                raise ExportError("the exporter supports models with one input tensor")
            input_name = n.name
            shapes[n.name] = v.shape
            continue
        if n.op == "output":
            out = n.args[0]
            if not isinstance(out, torch.fx.Node) or out.name in splits or not isinstance(values[out.name],
                                                                                         _TensorMeta):
                raise ExportError("the exporter supports models with one output tensor")
            output_name = alias.get(out.name, out.name)
            continue
        where = _where(n)
        if n.op == "get_attr":
            raise ExportError(f"{where} reads the tensor attribute '{n.target}' directly in forward "
                              f"(node '{n.name}'); only layers and the ops listed in docs/export-format.md "
                              "export")
        if not _has_tensor(v):  # shape arithmetic: resolved at trace time
            continue
        tensor_args, batch_dependent = [], []

        def arg(a):
            if not isinstance(a, torch.fx.Node):
                return a
            if isinstance(values[a.name], _TensorMeta):
                tensor_args.append(alias.get(a.name, a.name))
                return tensor_args[-1]
            if a.name in splits:
                raise _Unsupported("the outputs of chunk / split export only when indexed one by one")
            if values[a.name] != other[a.name]:
                batch_dependent.append(a.name)
            return values[a.name]

        if isinstance(v, _TensorMeta):
            if v.dtype != torch.float32:
                raise ExportError(f"{where}: node '{n.name}' computes a {v.dtype} tensor; the exporter "
                                  "handles float32 values only")
            if v.shape[:1] != (BATCHES[0],) or other[n.name].shape[:1] != (BATCHES[1],):
                raise ExportError(f"{where}: node '{n.name}' ({n.op} {getattr(n.target, '__name__', n.target)})"
                                  " does not keep the batch as the first dimension, so it cannot export")
        try:
            if n.op == "call_function" and n.target is operator.getitem:
                src = n.args[0]
                if src.name in splits:  # an output of chunk / split: a slice of its input
                    x, dim, bounds = splits[src.name]
                    i = n.args[1]
                    if not isinstance(i, int):
                        raise _Unsupported("only single outputs of chunk / split export (index them one by one)")
                    sl = [[0, s, 1] for s in shapes[x]]
                    sl[dim] = [bounds[i], bounds[i + 1], 1]
                    made = ("slice", {"slices": sl}), [x]
                else:
                    made = ("slice", {"slices": _slices(map_aggregate(n.args[1], arg), shapes[
                        alias.get(src.name, src.name)])}), [alias.get(src.name, src.name)]
            else:
                fn, bound = _spelling(n, modules)
                if fn == "layer":
                    m = modules[n.target]
                    if isinstance(m, nn.Conv2d) and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
                        raise _Unsupported(f"only numeric zero padding exports (got padding={m.padding!r}, "
                                           f"padding_mode={m.padding_mode!r})")
                    made = None
                    nodes.append(Node(n.name, "layer", [alias.get(n.args[0].name, n.args[0].name)], v.shape, m,
                                      {"module": n.target}))
                    shapes[n.name] = v.shape
                    continue
                tensor_args.clear()
                a = {k: map_aggregate(val, arg) if k != "__name__" else val for k, val in bound.items()}
                if fn is _split:
                    x = tensor_args[0]
                    dim = int(a.get("dim", 0)) % len(shapes[x])
                    if dim == 0:
                        raise _Unsupported("splitting the batch dimension does not export")
                    sizes = [t.shape[dim] for t in v]
                    splits[n.name] = (x, dim, [sum(sizes[:i]) for i in range(len(sizes) + 1)])
                    continue
                if batch_dependent and fn is not _reshape:
                    raise _Unsupported(f"an argument ({batch_dependent[0]}) depends on the batch size")
                made = canonical(fn, a, list(tensor_args), shapes, v.shape), list(tensor_args)
        except _Unsupported as err:
            raise ExportError(f"{where}: {err} (node '{n.name}': {n.op} "
                              f"{getattr(n.target, '__name__', n.target)}; the ops that export are listed in "
                              "docs/export-format.md)") from None
        result, ins = made
        if isinstance(result, str):
            alias[n.name] = result
            continue
        op, attrs = result
        # the op's name: its module, or for a function "<module that calls it>:<node>"
        attrs["module"] = n.target if n.op == "call_module" else (f"{_path(n)}:{n.name}" if _path(n) else n.name)
        if op == "global_avgpool" and not attrs.pop("keepdim"):
            pooled = Node(f"{n.name}.pool", "global_avgpool", ins, v.shape + (1, 1), modules.get(n.target),
                          dict(attrs))
            nodes.append(pooled)
            shapes[pooled.name] = pooled.shape
            op, ins, attrs = "flatten", [pooled.name], {"start_dim": 1, "end_dim": -1, "module": attrs["module"]}
        shapes[n.name] = v.shape
        nodes.append(Node(n.name, op, ins, v.shape, modules.get(n.target) if n.op == "call_module" else None,
                          attrs))
    return nodes, input_name, output_name
