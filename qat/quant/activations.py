"""Activations before a sign: what prepare replaces, and which sign inputs would only see values >= 0.

A binarized input ``sign(x)`` is constant +1 when ``x`` comes straight from a ReLU (or ReLU6, a
sigmoid, ...): the layer, and everything after it, then sees the same input for every image and the
network trains dead without an error. A recipe that binarizes activations therefore swaps every
``SIGN_FEEDING`` module for its own activation (BNN: hard tanh), and :func:`dead_sign_inputs` finds,
on the traced graph, the binarized inputs that are still fed by a non-negative activation that is no
module (``F.relu(x)`` inside a ``forward``) or that prepare does not replace (``nn.Sigmoid``), through
operations that keep values non-negative (pooling, flatten, concatenation, sums and products of such
values).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

#: Modules a recipe that binarizes activations replaces by its own activation (BNN: nn.Hardtanh).
SIGN_FEEDING = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.GELU)
#: Modules whose output is >= 0 (or nearly) whatever their input, and that prepare leaves alone.
_NONNEG_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.Softmax)
_NONNEG_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.silu, F.hardswish,
    F.gelu, torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, F.softmax, torch.softmax,
}
_NONNEG_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "softmax"}
# Operations whose output is >= 0 when every tensor they read is.
_KEEP_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Unflatten,
                 nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.Upsample, nn.ZeroPad2d, nn.ChannelShuffle)
_KEEP_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.cat, torch.concat, torch.transpose, torch.permute, torch.mean, torch.sum,
    torch.chunk, torch.split, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.avg_pool2d, F.max_pool2d,
    F.dropout, F.interpolate, F.pad, operator.add, operator.iadd, operator.mul, operator.imul, operator.getitem,
    torch.add, torch.mul,
}
_KEEP_METHODS = {"view", "reshape", "flatten", "contiguous", "permute", "transpose", "mean", "sum", "chunk",
                 "split", "__getitem__", "add", "add_", "mul", "mul_", "clone", "detach", "to"}

_ARITHMETIC = {operator.add, operator.iadd, operator.mul, operator.imul, torch.add, torch.mul, "add", "add_", "mul",
               "mul_"}


def _where(node: fx.Node, model_name: str) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, kind = list(stack.values())[-1]
        return f"{path} ({getattr(kind, '__name__', kind)}.forward)"
    return f"{model_name}.forward"


def _describe(node: fx.Node, modules: dict[str, nn.Module], model_name: str) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} module '{node.target}'"
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    call = f"x.{name}()" if node.op == "call_method" else f"{name}()"
    return f"{call} in {_where(node, model_name)}"


def dead_sign_inputs(graph: fx.Graph, modules: dict[str, nn.Module], binarized: set[str],
                     model_name: str) -> dict[str, list[str]]:
    """``{layer: [activations]}`` for every layer in ``binarized`` (its input goes through a sign)
    whose input reaches it only from non-negative activations (``SIGN_FEEDING`` modules count: run
    it after replacing them)."""
    sources: dict[fx.Node, list[str]] = {}  # node -> the non-negative activations it carries
    source_modules = _NONNEG_MODULES + SIGN_FEEDING
    dead: dict[str, list[str]] = {}
    for node in graph.nodes:
        tensors = [a for a in node.all_input_nodes]
        if node.op == "call_module":
            mod = modules.get(node.target)
            if node.target in binarized and tensors and tensors[0] in sources:
                dead[node.target] = sorted(set(sources[tensors[0]]))
            if isinstance(mod, source_modules):
                sources[node] = [_describe(node, modules, model_name)]
                continue
            keeps = isinstance(mod, _KEEP_MODULES)
        elif node.op == "call_function":
            if node.target in _NONNEG_FUNCTIONS:
                sources[node] = [_describe(node, modules, model_name)]
                continue
            keeps = node.target in _KEEP_FUNCTIONS
        elif node.op == "call_method":
            if node.target in _NONNEG_METHODS:
                sources[node] = [_describe(node, modules, model_name)]
                continue
            keeps = node.target in _KEEP_METHODS
        else:
            continue
        # x + c and c * x stay >= 0 only for c >= 0; other scalars (view(n, -1)) are shapes.
        scalars_ok = node.target not in _ARITHMETIC or all(
            not isinstance(a, (int, float)) or a >= 0 for a in node.args)
        if keeps and tensors and scalars_ok and all(t in sources for t in tensors):
            sources[node] = [s for t in tensors for s in sources[t]]
    return dead
