"""Brevitas versions of qat's recipes on the same float model, as Brevitas' own docs build them.

``brevitas.nn.QuantConv2d`` / ``QuantLinear`` replace the layers that qat's recipe quantizes (the
same first/last-layer policy, read from the qat recipe), with ``weight_quant=`` and ``input_quant=``
injectors; everything else (BatchNorm, activations, shortcuts) is the float model's own. The float
weights are copied, so both implementations start from the same initialisation.

=================  =================================================================================
method             Brevitas quantizers
=================  =================================================================================
``bnn``            weights ``SignedBinaryWeightPerTensorConst`` (scale 1, in-place clamp to [-1, 1]),
                   inputs ``SignedBinaryActPerTensorConst`` (clamp to [-1, 1], sign STE); ReLU
                   becomes a hard tanh and a BatchNorm follows the binary classifier, as in qat's bnn
``bwn``            binary weights with a per-output-channel mean-abs scale (``StatsOp.AVE``)
``ternary``        2-bit narrow-range weights ``Int8WeightPerTensorFloat`` (``bit_width=2``) with a
                   mean-abs scale (``StatsOp.AVE``); ``ternary_max`` keeps the docs' max-abs scale
``int8``           weights ``Int8WeightPerChannelFloat``, inputs ``ShiftedUint8ActPerTensorFloat``
                   (asymmetric uint8, as qat_uint8)
=================  =================================================================================
"""

from __future__ import annotations

from torch import nn

from qat.quant.prepare import layer_policies, quantizable_layers

METHODS = ("bnn", "bwn", "ternary", "ternary_max", "int8")


def _quantizers(method: str):
    try:
        from brevitas.core.function_wrapper import TensorClampSte
        from brevitas.inject.enum import ScalingImplType, ScalingPerOutputType, StatsOp
        from brevitas.quant import (Int8WeightPerChannelFloat, Int8WeightPerTensorFloat,
                                    ShiftedUint8ActPerTensorFloat, SignedBinaryActPerTensorConst,
                                    SignedBinaryWeightPerTensorConst)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the Brevitas peer needs brevitas: pip install -e '.[peers]'") from err

    class BinaryWeightUnit(SignedBinaryWeightPerTensorConst):
        scaling_const = 1.0  # BNN: weights in {-1, +1}, latent weights clamped to [-1, 1]

    class BinaryWeightMeanAbs(SignedBinaryWeightPerTensorConst):
        tensor_clamp_impl = TensorClampSte  # the in-place clamp breaks autograd once the scale reads W
        scaling_impl_type = ScalingImplType.STATS
        scaling_stats_op = StatsOp.AVE
        scaling_per_output_type = ScalingPerOutputType.CHANNEL

    class TernaryWeightMeanAbs(Int8WeightPerTensorFloat):
        bit_width = 2
        scaling_stats_op = StatsOp.AVE

    class TernaryWeightMaxAbs(Int8WeightPerTensorFloat):
        bit_width = 2

    return {
        "bnn": (BinaryWeightUnit, SignedBinaryActPerTensorConst),
        "bwn": (BinaryWeightMeanAbs, None),
        "ternary": (TernaryWeightMeanAbs, None),
        "ternary_max": (TernaryWeightMaxAbs, None),
        "int8": (Int8WeightPerChannelFloat, ShiftedUint8ActPerTensorFloat),
    }[method]


def brevitas_prepare(model: nn.Module, method: str, first: str, last: str, overrides=None) -> nn.Module:
    """Swap ``model``'s Conv2d / Linear layers for Brevitas layers in place and return it.

    ``first`` / ``last`` / ``overrides`` are qat's layer policies (``qat.quant.prepare``): ``quant``
    quantizes weights and input, ``weights_only`` the weights, ``fp32`` leaves the layer alone.
    """
    import brevitas.nn as qnn

    if method not in METHODS:
        raise ValueError(f"unknown Brevitas method {method!r}; choose one of {', '.join(METHODS)}")
    weight_quant, input_quant = _quantizers(method)
    policies = layer_policies(model, first, last, overrides)
    layers = quantizable_layers(model)
    for name, layer in layers:
        policy = policies[name]
        if policy == "fp32":
            continue
        if policy not in ("quant", "weights_only"):
            raise ValueError(f"layer '{name}': policy {policy!r} has no Brevitas counterpart here")
        iq = input_quant if policy == "quant" else None
        kw = {"bias": layer.bias is not None, "weight_quant": weight_quant, "input_quant": iq}
        if isinstance(layer, nn.Conv2d):
            new = qnn.QuantConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                                  padding=layer.padding, dilation=layer.dilation, groups=layer.groups, **kw)
        else:
            new = qnn.QuantLinear(layer.in_features, layer.out_features, **kw)
        new.weight.data.copy_(layer.weight.data)
        if layer.bias is not None:
            new.bias.data.copy_(layer.bias.data)
        model.set_submodule(name, new)
    if method == "bnn":  # the architecture of qat's bnn (qat.quant.binary.BNN): hard tanh, logit BatchNorm
        for name, m in list(model.named_modules()):
            if isinstance(m, nn.ReLU):
                model.set_submodule(name, nn.Hardtanh())
        name, last_layer = layers[-1][0], model.get_submodule(layers[-1][0])
        if isinstance(last_layer, qnn.QuantLinear) and policies[name] != "fp32":
            model.set_submodule(name, nn.Sequential(last_layer, nn.BatchNorm1d(last_layer.out_features)))
    return model
