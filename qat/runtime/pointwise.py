"""Float pointwise ops: BatchNorm in eval mode and the activations, as the model's own torch functions.

Each is computed by the very torch function the model calls, on a tensor of the model's shape, so a
value the manifest keeps in float is the model's value bit for bit (torch evaluates ``exp`` with
vectorised code for most elements and scalar code for a remainder; same shape, same bits).

| op | fields | computes |
| --- | --- | --- |
| ``batchnorm`` | ``weight, bias, running_mean, running_var, eps`` | ``F.batch_norm`` (eval) |
| ``relu`` | | ``max(x, 0)`` |
| ``hardtanh`` | ``min_val, max_val`` | ``clamp(x, min_val, max_val)`` (ReLU6: 0, 6) |
| ``silu`` | | ``x sigmoid(x)`` |
| ``hardswish`` | | ``x relu6(x + 3) / 6`` |
| ``hardsigmoid`` | | ``relu6(x + 3) / 6`` |
| ``sigmoid`` | | ``1 / (1 + exp(-x))`` |
| ``scale`` | ``scale`` | ``x * scale[c]`` (bnn's ``ChannelScale``) |
| ``shift`` | ``shift`` | ``x + shift[c]`` (bnn's ``ChannelShift``, a learnable sign threshold) |
| ``rprelu`` | ``bias_in, slope, bias_out`` | ``prelu(x + bias_in[c], slope[c]) + bias_out[c]`` (ReActNet's RPReLU) |

The per-channel ops (``batchnorm`` and the better-binary-network blocks of
``qat.quant.binary_blocks``) name their float32 tensors in ``TENSORS``: manifest field = tensor name
= the model module's attribute.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from qat.runtime.errors import FormatError
from qat.runtime.opbase import Op, channel, tensor

ACTIVATIONS = {
    "relu": lambda op, x: F.relu(x),
    "hardtanh": lambda op, x: F.hardtanh(x, float(op["min_val"]), float(op["max_val"])),
    "silu": lambda op, x: F.silu(x),
    "hardswish": lambda op, x: F.hardswish(x),
    "hardsigmoid": lambda op, x: F.hardsigmoid(x),
    "sigmoid": lambda op, x: torch.sigmoid(x),
}
#: activations that are monotone non-decreasing: with BatchNorm they fold into a threshold or a
#: requantization clamp (``qat.export.lower``)
CLAMPS = ("relu", "hardtanh")
#: per-channel float32 tensors of each pointwise op that has any
TENSORS = {"batchnorm": ("weight", "bias", "running_mean", "running_var"), "scale": ("scale",),
           "shift": ("shift",), "rprelu": ("bias_in", "slope", "bias_out")}
#: the per-channel ops of the bnn options (``qat.quant.binary_blocks``)
CHANNEL_OPS = {
    "scale": lambda p, x: x * channel(p["scale"], x.dim()),
    "shift": lambda p, x: x + channel(p["shift"], x.dim()),
    "rprelu": lambda p, x: (F.prelu(x + channel(p["bias_in"], x.dim()), p["slope"])
                            + channel(p["bias_out"], x.dim())),
}
#: every float pointwise op (``qat.export.lower`` keeps the ones it cannot fold as these)
FLOAT_POINTWISE = ("batchnorm", *ACTIVATIONS, *CHANNEL_OPS)


def pointwise(op: dict, params: dict, x: torch.Tensor) -> torch.Tensor:
    """Float pointwise op ``op`` (``params``: its per-channel tensors, ``TENSORS``) on ``x``."""
    kind = op["op"]
    if kind == "batchnorm":
        return F.batch_norm(x, params["running_mean"], params["running_var"], params["weight"],
                            params["bias"], False, 0.0, float(op["eps"]))
    if kind in ACTIVATIONS:
        return ACTIVATIONS[kind](op, x)
    if kind in CHANNEL_OPS:
        return CHANNEL_OPS[kind](params, x)
    raise FormatError(f"{kind} is not a pointwise op")


def pointwise_params(op: dict, tensors: dict) -> dict:
    """The per-channel tensors of a pointwise op (BatchNorm's weight and bias may be null)."""
    who = f"{op['op']} '{op.get('name')}'"
    names = TENSORS.get(op["op"], ())
    params = {k: tensor(tensors, op.get(k), who, np.float32) for k in names}
    if op["op"] != "batchnorm" and any(params[k] is None for k in names):
        raise FormatError(f"{who}: needs the tensors {', '.join(names)}")
    return params


def batchnorm_params(op: dict, tensors: dict) -> dict:
    return pointwise_params(op, tensors)


class Pointwise(Op):
    def __init__(self, op, tensors, values):
        super().__init__(op, tensors, values)
        self.params = pointwise_params(op, tensors)
        if op["op"] == "batchnorm":
            float(op["eps"])
        if op["op"] == "hardtanh" and not float(op["min_val"]) <= float(op["max_val"]):
            raise FormatError(f"hardtanh '{self.name}': min_val must not exceed max_val")

    def forward(self, x):
        return pointwise(self.spec, self.params, x)


OPS = {name: Pointwise for name in FLOAT_POINTWISE}
