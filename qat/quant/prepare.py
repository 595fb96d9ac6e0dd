"""``prepare(model, recipe)``: swap a float model's Conv2d and Linear layers for quantized ones.

A module swap with a filter, done once when the model is built. Every layer gets a *policy*:

- ``quant``: the recipe's weight and input quantizers;
- ``weights_only``: the recipe's weight quantizer, full-precision input (BNN's first layer, which
  sees the real-valued image);
- ``int8``: 8-bit affine weights (per channel) and inputs (per tensor), whatever the recipe;
- ``fp32``: left as the float layer.

The recipe's ``first`` and ``last`` policies apply to the first and last quantizable layer in module
order; ``overrides`` maps glob patterns of module names (``layer3.*``, ``fc``) to policies and wins
over both. A pattern that matches no layer is an error that lists the layer names.

A recipe that binarizes activations replaces every activation module that may feed a sign (see
``qat.quant.activations``). prepare logs a table of the layers and their policies, and warns for every
convolution or linear layer it cannot quantize (``strict``: an error).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping

import torch
from torch import nn

from qat.quant.activations import SIGN_FEEDING, dead_sign_inputs
from qat.quant.layers import QuantConv2d, QuantConvBn2d, QuantLinear

log = logging.getLogger(__name__)

POLICIES = ("quant", "weights_only", "int8", "fp32")
QUANTIZABLE = (nn.Conv2d, nn.Linear)


def check_policy(value: str, where: str) -> str:
    if value not in POLICIES:
        raise ValueError(f"{where}: unknown layer policy '{value}'; choose one of {', '.join(POLICIES)}")
    return value


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Float Conv2d / Linear layers (exact types: already-quantized layers are skipped), in order."""
    return [(n, m) for n, m in model.named_modules() if type(m) in QUANTIZABLE]


def layer_policies(model: nn.Module, first: str = "quant", last: str = "quant",
                   overrides: Mapping[str, str] | None = None, default: str = "quant") -> dict[str, str]:
    layers = [n for n, _ in quantizable_layers(model)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")
    policies = {n: default for n in layers}
    policies[layers[0]] = check_policy(first, "first")
    policies[layers[-1]] = check_policy(last, "last")
    for pattern, policy in (overrides or {}).items():
        check_policy(policy, f"overrides['{pattern}']")
        hits = [n for n in layers if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(f"override pattern '{pattern}' matches no layer; quantizable layers are: "
                             f"{', '.join(layers)}")
        for n in hits:
            policies[n] = policy
    return policies


def trace_graph(model: nn.Module) -> torch.fx.Graph | None:
    """The model's torch.fx graph, or None (with a warning) when its forward does not trace."""
    try:
        return torch.fx.symbolic_trace(model).graph
    except Exception as err:  # tracing is best effort: data-dependent control flow cannot trace
        log.warning("torch.fx could not trace %s (%s): Conv2d-BatchNorm2d folding falls back to pairs adjacent in "
                    "nn.Sequential, and activations called as functions inside forward are not checked",
                    type(model).__name__, err)
        return None


def find_conv_bn_pairs(model: nn.Module, graph: torch.fx.Graph | None = None) -> dict[str, str]:
    """Map conv name -> BatchNorm2d name for every conv whose output feeds only that BN.

    Found on the traced graph (torch.fx; ``graph`` if given), so it works for any model whose forward
    traces; models that do not trace fall back to adjacent pairs inside ``nn.Sequential`` containers.
    """
    modules = dict(model.named_modules())
    if graph is None:
        graph = trace_graph(model)
    if graph is None:
        pairs = {}
        for name, m in modules.items():
            if isinstance(m, nn.Sequential):
                kids = list(m.named_children())
                for (a, ma), (b, mb) in zip(kids, kids[1:]):
                    if type(ma) is nn.Conv2d and isinstance(mb, nn.BatchNorm2d):
                        pre = f"{name}." if name else ""
                        pairs[pre + a] = pre + b
        return pairs
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and type(modules.get(src.target)) is nn.Conv2d and len(src.users) == 1):
            pairs[src.target] = node.target
    return pairs


def float_layers_left(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Convolutions and linear layers that prepare does not quantize (Conv1d, Conv3d, ConvTranspose,
    subclasses of Conv2d / Linear, Bilinear), other than qat's own quantized layers."""
    from qat.quant.layers import QuantMixin

    kinds = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear)
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, kinds) and not isinstance(m, QuantMixin) and type(m) not in QUANTIZABLE]


def _bits(q: nn.Module) -> str:
    bits = getattr(q, "bits", None)
    return "float" if bits in (None, 32) else f"{type(q).__name__} {bits}b"


def layer_table(rows: list[tuple[str, str, str, str, str]]) -> str:
    """A plain-text table: layer, type, policy, weights, inputs."""
    head = ("layer", "type", "policy", "weights", "inputs")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(tuple("-" * w for w in widths)), *map(line, rows)])


def prepare(model: nn.Module, recipe) -> nn.Module:
    """Swap layers in place according to the recipe and return the model.

    The recipe provides ``first``, ``last``, ``overrides``, ``make_quantizers(name, layer, policy)``
    returning ``(weight_quant, input_quant)``, ``fold_bn`` (fold Conv2d + BatchNorm2d pairs into
    ``QuantConvBn2d``), ``activation`` (a factory that replaces every ``SIGN_FEEDING`` activation
    module, or None) and ``strict``.

    It tells the truth about the result: it logs a table of every layer with its policy and
    quantizers; it raises when a binarized input would see only non-negative values (an activation
    it cannot replace feeds a sign); it warns for every convolution or linear layer it leaves in
    float for want of support (``strict``: raises).
    """
    policies = layer_policies(model, recipe.first, recipe.last, recipe.overrides)
    layers = quantizable_layers(model)
    quantizers = {name: recipe.make_quantizers(name, layer, policies[name])
                  for name, layer in layers if policies[name] != "fp32"}
    make_act = getattr(recipe, "activation", None)
    replaced = []
    if make_act is not None:
        for name, m in list(model.named_modules()):
            if isinstance(m, SIGN_FEEDING):
                model.set_submodule(name, make_act())
                replaced.append(type(m).__name__)
    binarized = {name for name, (_, iq) in quantizers.items() if getattr(iq, "bits", 32) == 1}
    fold = getattr(recipe, "fold_bn", False)
    graph = trace_graph(model) if (binarized or fold) else None
    if binarized and graph is not None:
        dead = dead_sign_inputs(graph, dict(model.named_modules()), binarized, type(model).__name__)
        if dead:
            lines = "; ".join(f"'{layer}' gets its input from {', '.join(src)}" for layer, src in dead.items())
            raise ValueError(
                f"{getattr(recipe, 'name', type(recipe).__name__)} binarizes the inputs of these layers, but they "
                f"would only ever see values >= 0, so their sign would be +1 for every image: {lines}. Use an "
                f"activation module ({', '.join(t.__name__ for t in SIGN_FEEDING)}; prepare replaces those) instead "
                f"of a function call inside forward, or keep these layers' inputs in float with "
                f"quant.overrides={{'<layer>': weights_only}}")
    pairs = find_conv_bn_pairs(model, graph) if fold else {}
    rows = []
    for name, layer in layers:
        policy = policies[name]
        if policy == "fp32":
            rows.append((name, type(layer).__name__, policy, "float", "float"))
            continue
        wq, iq = quantizers[name]
        if isinstance(layer, nn.Conv2d) and name in pairs:
            new = QuantConvBn2d.from_float(layer, wq, iq, bn=model.get_submodule(pairs[name]))
            model.set_submodule(pairs[name], nn.Identity())
        elif isinstance(layer, nn.Conv2d):
            new = QuantConv2d.from_float(layer, wq, iq)
        else:
            new = QuantLinear.from_float(layer, wq, iq)
        if name:
            model.set_submodule(name, new)
        else:  # the model is a single layer: the result is its quantized version
            model = new
        rows.append((name, type(new).__name__, policy, _bits(wq), _bits(iq)))
    left = float_layers_left(model)
    rows += [(n, type(m).__name__, "float (unsupported)", "float", "float") for n, m in left]
    log.info("prepare (%s): %d layers quantized, %d kept in float by policy, %d unsupported%s\n%s",
             getattr(recipe, "name", type(recipe).__name__), len(quantizers), len(layers) - len(quantizers),
             len(left), f"; activations replaced by {make_act().__class__.__name__}: " + ", ".join(
                 f"{replaced.count(k)} {k}" for k in sorted(set(replaced))) if replaced else "", layer_table(rows))
    if left:
        names = ", ".join(f"{n} ({type(m).__name__})" for n, m in left)
        msg = (f"prepare quantizes Conv2d and Linear layers only (exact types); these stay in float: {names}")
        if getattr(recipe, "strict", False):
            raise ValueError(msg + ". quant.strict=true makes this an error: replace them by nn.Conv2d / nn.Linear, "
                             "or set quant.strict=false to train them in float")
        log.warning("%s (quant.strict=true makes this an error)", msg)
    return model


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]
