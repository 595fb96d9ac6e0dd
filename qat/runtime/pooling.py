"""Pooling ops, torch's own functions with the model's arguments.

| op | fields | computes |
| --- | --- | --- |
| ``maxpool2d`` | ``kernel_size, stride, padding, dilation, ceil_mode`` | ``F.max_pool2d`` (also on int32 accumulators) |
| ``avgpool2d`` | ``kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override`` | ``F.avg_pool2d`` |
| ``global_avgpool`` | | mean over H and W, keeping them (``[N, C, 1, 1]``) |

``global_avgpool`` is what ``nn.AdaptiveAvgPool2d(1)``, ``F.adaptive_avg_pool2d(x, 1)`` and
``x.mean((2, 3), keepdim=True)`` compute; torch evaluates all three as the same mean.
"""

from __future__ import annotations

import torch.nn.functional as F

from qat.runtime.errors import FormatError
from qat.runtime.opbase import Op, int_list


class MaxPool(Op):
    def __init__(self, op, tensors, values):
        super().__init__(op, tensors, values)
        self.args = [int_list(op, k, 2) for k in ("kernel_size", "stride", "padding", "dilation")]
        self.ceil_mode = bool(op["ceil_mode"])

    def forward(self, x):
        return F.max_pool2d(x, *self.args, self.ceil_mode)


class AvgPool(Op):
    def __init__(self, op, tensors, values):
        super().__init__(op, tensors, values)
        self.args = [int_list(op, k, 2) for k in ("kernel_size", "stride", "padding")]
        self.flags = (bool(op["ceil_mode"]), bool(op["count_include_pad"]))
        self.divisor = op.get("divisor_override")
        if self.divisor is not None and (not isinstance(self.divisor, int) or self.divisor <= 0):
            raise FormatError(f"avgpool2d '{self.name}': divisor_override must be a positive integer")

    def forward(self, x):
        return F.avg_pool2d(x, *self.args, *self.flags, self.divisor)


class GlobalAvgPool(Op):
    def forward(self, x):
        return F.adaptive_avg_pool2d(x, 1)


OPS = {"maxpool2d": MaxPool, "avgpool2d": AvgPool, "global_avgpool": GlobalAvgPool}
