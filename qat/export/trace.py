"""Trace a prepared model (torch.fx) into a flat list of nodes: the export's operation graph.

Quantized layers (``QuantConv2d``, ``QuantConvBn2d``, ``QuantLinear``) and torch's own modules are
leaves; anything else (e.g. ResNet's ``PadShortcut``) is traced through to the functions it calls.
Every node records its output shape (batch dimension first), from one forward pass of a small batch.
``nn.Identity`` and ``nn.Dropout`` (identity in eval) become aliases and vanish.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from qat.export.errors import ExportError
from qat.quant.binary_blocks import ChannelScale, ChannelShift, RPReLU
from qat.quant.layers import QuantConv2d, QuantLinear

LAYER_TYPES = (nn.Conv2d, nn.Linear)  # QuantConv2d / QuantConvBn2d / QuantLinear subclass these
SUPPORTED_MODULES = ("Conv2d", "Linear", "QuantConv2d", "QuantConvBn2d", "QuantLinear", "BatchNorm1d",
                     "BatchNorm2d", "ReLU", "ReLU6", "Hardtanh", "MaxPool2d", "AvgPool2d",
                     "AdaptiveAvgPool2d(1)", "Flatten", "Identity", "Dropout", "ChannelScale", "ChannelShift",
                     "RPReLU")
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


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(t) for t in v]


def _module_node(name: str, m: nn.Module, args: list[str], shape) -> Node | str:
    """A Node for a leaf module, or the input name for an alias."""
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return args[0]
    if isinstance(m, LAYER_TYPES):
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ExportError(f"layer '{name}': only numeric zero padding exports (got padding="
                                  f"{m.padding!r}, padding_mode={m.padding_mode!r})")
        return Node(name, "layer", args, shape, m)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if not m.track_running_stats or m.running_mean is None:
            raise ExportError(f"'{name}': BatchNorm without running statistics cannot export")
        return Node(name, "batchnorm", args, shape, m, {"eps": float(m.eps)})
    if type(m) in BLOCK_OPS:  # the better-binary-network blocks: per-channel float pointwise ops
        return Node(name, BLOCK_OPS[type(m)], args, shape, m)
    if type(m) is nn.ReLU:
        return Node(name, "relu", args, shape, m)
    if isinstance(m, nn.Hardtanh):  # ReLU6 too
        return Node(name, "hardtanh", args, shape, m, {"min_val": float(m.min_val), "max_val": float(m.max_val)})
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            raise ExportError(f"'{name}': MaxPool2d(return_indices=True) does not export")
        return Node(name, "maxpool2d", args, shape, m, {
            "kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
            "padding": _pair(m.padding), "dilation": _pair(m.dilation), "ceil_mode": bool(m.ceil_mode)})
    if isinstance(m, nn.AvgPool2d):
        return Node(name, "avgpool2d", args, shape, m, {
            "kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
            "padding": _pair(m.padding), "ceil_mode": bool(m.ceil_mode),
            "count_include_pad": bool(m.count_include_pad), "divisor_override": m.divisor_override})
    if isinstance(m, nn.AdaptiveAvgPool2d):
        if _pair(m.output_size) != [1, 1]:
            raise ExportError(f"'{name}': only AdaptiveAvgPool2d(1) (global average pooling) exports, "
                              f"got output_size={m.output_size}")
        return Node(name, "global_avgpool", args, shape, m)
    if isinstance(m, nn.Flatten):
        return Node(name, "flatten", args, shape, m, {"start_dim": int(m.start_dim), "end_dim": int(m.end_dim)})
    raise ExportError(f"module '{name}' of type {type(m).__name__} is not supported by the exporter; "
                      f"supported modules: {', '.join(SUPPORTED_MODULES)} (and add, slicing, F.pad)")


def _slices(name: str, index, shape_in) -> list[list[int]]:
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in index):
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (len(shape_in) - len(index) + 1) + index[k + 1:]
    out = []
    for d, size in enumerate(shape_in):
        s = index[d] if d < len(index) else slice(None)
        if not isinstance(s, slice):
            raise ExportError(f"'{name}': only slicing with start:stop:step exports, got {index!r}")
        start, stop, step = s.indices(size)
        if step <= 0:
            raise ExportError(f"'{name}': negative slice steps do not export")
        out.append([start, stop, step])
    if out[0] != [0, shape_in[0], 1]:
        raise ExportError(f"'{name}': slicing the batch dimension does not export")
    return out


def _function_node(node, args: list, shape, shapes: dict) -> Node | str:
    name, fn = node.name, node.target
    ins = [a for a in args if isinstance(a, str)]
    if fn in (operator.add, torch.add) and len(ins) == 2 and len(args) == 2 and not node.kwargs:
        return Node(name, "add", ins, shape)
    if fn is operator.getitem and len(ins) == 1:
        return Node(name, "slice", ins, shape, attrs={"slices": _slices(name, args[1], shapes[ins[0]])})
    if fn is F.pad:
        pad = node.kwargs.get("pad", args[1] if len(args) > 1 else None)
        mode = node.kwargs.get("mode", args[2] if len(args) > 2 else "constant")
        value = node.kwargs.get("value", args[3] if len(args) > 3 else None)
        if mode != "constant":
            raise ExportError(f"'{name}': only constant F.pad exports, got mode={mode!r}")
        return Node(name, "pad", ins, shape, attrs={"pad": [int(p) for p in pad], "value": float(value or 0.0)})
    if fn in (torch.flatten,):
        start = node.kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
        end = node.kwargs.get("end_dim", args[2] if len(args) > 2 else -1)
        return Node(name, "flatten", ins, shape, attrs={"start_dim": int(start), "end_dim": int(end)})
    if fn in (F.relu, torch.relu):
        return Node(name, "relu", ins, shape)
    raise ExportError(f"function {getattr(fn, '__name__', fn)} (node '{name}') is not supported by the "
                      "exporter; supported: add, slicing, F.pad, torch.flatten, relu")


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
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    modules = dict(model.named_modules())
    alias: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    nodes: list[Node] = []
    input_name = output_name = None

    def ref(a):
        return alias.get(a.name, a.name) if isinstance(a, torch.fx.Node) else a

    for n in graph.nodes:
        meta = n.meta.get("tensor_meta")
        shape = tuple(int(s) for s in meta.shape) if meta is not None and hasattr(meta, "shape") else ()
        if n.op == "placeholder":
            if input_name is not None:
                raise ExportError("the exporter supports models with one input tensor")
            input_name = n.name
            shapes[n.name] = shape
            continue
        if n.op == "output":
            out = n.args[0]
            if not isinstance(out, torch.fx.Node):
                raise ExportError("the exporter supports models with one output tensor")
            output_name = ref(out)
            continue
        args = [ref(a) for a in n.args]
        if any(isinstance(a, torch.fx.Node) for a in n.kwargs.values()):
            raise ExportError(f"node '{n.name}': tensor keyword arguments do not export")
        if n.op == "call_module":
            made = _module_node(n.name, modules[n.target], args, shape)
            if isinstance(made, Node):
                made.attrs.setdefault("module", n.target)
        elif n.op == "call_function":
            made = _function_node(n, args, shape, shapes)
        elif n.op == "call_method" and n.target == "flatten":
            made = Node(n.name, "flatten", [args[0]], shape, attrs={
                "start_dim": int(n.kwargs.get("start_dim", args[1] if len(args) > 1 else 0)),
                "end_dim": int(n.kwargs.get("end_dim", args[2] if len(args) > 2 else -1))})
        else:
            raise ExportError(f"node '{n.name}' ({n.op} {n.target}) is not supported by the exporter")
        if isinstance(made, str):
            alias[n.name] = made
            continue
        shapes[made.name] = shape
        nodes.append(made)
    return nodes, input_name, output_name
