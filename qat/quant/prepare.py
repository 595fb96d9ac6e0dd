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
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping

import torch
from torch import nn

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


def find_conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """Map conv name -> BatchNorm2d name for every conv whose output feeds only that BN.

    Found on the traced graph (torch.fx), so it works for any model whose forward traces; models
    that do not trace fall back to adjacent pairs inside ``nn.Sequential`` containers.
    """
    modules = dict(model.named_modules())
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # tracing is best effort: data-dependent control flow cannot trace
        log.warning("torch.fx could not trace %s (%s); folding only Conv2d-BatchNorm2d pairs adjacent "
                    "in nn.Sequential", type(model).__name__, err)
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


def prepare(model: nn.Module, recipe) -> nn.Module:
    """Swap layers in place according to the recipe and return the model.

    The recipe provides ``first``, ``last``, ``overrides``, ``make_quantizers(name, layer, policy)``
    returning ``(weight_quant, input_quant)``, ``fold_bn`` (fold Conv2d + BatchNorm2d pairs into
    ``QuantConvBn2d``) and ``activation`` (a factory that replaces every ``nn.ReLU``, or None).
    """
    policies = layer_policies(model, recipe.first, recipe.last, recipe.overrides)
    pairs = find_conv_bn_pairs(model) if getattr(recipe, "fold_bn", False) else {}
    for name, layer in quantizable_layers(model):
        policy = policies[name]
        if policy == "fp32":
            continue
        wq, iq = recipe.make_quantizers(name, layer, policy)
        if isinstance(layer, nn.Conv2d) and name in pairs:
            new = QuantConvBn2d.from_float(layer, wq, iq, bn=model.get_submodule(pairs[name]))
            model.set_submodule(pairs[name], nn.Identity())
        elif isinstance(layer, nn.Conv2d):
            new = QuantConv2d.from_float(layer, wq, iq)
        else:
            new = QuantLinear.from_float(layer, wq, iq)
        model.set_submodule(name, new)
    make_act = getattr(recipe, "activation", None)
    if make_act is not None:
        for name, m in list(model.named_modules()):
            if isinstance(m, nn.ReLU):
                model.set_submodule(name, make_act())
    return model


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]
