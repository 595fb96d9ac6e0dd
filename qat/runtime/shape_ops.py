"""Ops that move values without arithmetic (any value: float32, int32 accumulators or codes).

Shapes here are without the batch dimension, which is always first and never moves.

| op | fields | computes |
| --- | --- | --- |
| ``flatten`` | ``start_dim, end_dim`` | ``torch.flatten`` |
| ``reshape`` | ``shape``: ``[null, d1, ...]`` | ``x.reshape(N, d1, ...)`` (C order) |
| ``permute`` | ``dims``: ``[0, ...]`` | ``x.permute(dims)`` (channel shuffle's transpose) |
| ``concat`` | ``dim`` (not 0) | ``torch.cat`` of every input along ``dim`` |
| ``slice`` | ``slices``: ``[start, stop, step]`` per dimension | strided slice |
| ``pad`` | ``pad`` (torch ``F.pad`` order), ``value`` | constant padding |
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qat.runtime.errors import FormatError
from qat.runtime.opbase import Op, int_list


class Flatten(Op):
    def forward(self, x):
        return torch.flatten(x, int(self.spec["start_dim"]), int(self.spec["end_dim"]))


class Reshape(Op):
    def __init__(self, op, tensors, values):
        super().__init__(op, tensors, values)
        shape = op["shape"]
        if not isinstance(shape, list) or not shape or shape[0] is not None:
            raise FormatError(f"reshape '{self.name}': shape must be [null, ...] (batch first)")
        self.shape = [-1] + int_list({**op, "shape": shape[1:]}, "shape", what="reshape")
        if any(s <= 0 for s in self.shape[1:]):
            raise FormatError(f"reshape '{self.name}': dimensions must be positive, got {shape}")

    def forward(self, x):
        if x.numel() != x.shape[0] * int(torch.tensor(self.shape[1:]).prod()):
            raise ValueError(f"reshape '{self.name}': cannot reshape {list(x.shape)} to {self.shape}")
        return x.reshape(self.shape)


class Permute(Op):
    def __init__(self, op, tensors, values):
        super().__init__(op, tensors, values)
        self.dims = int_list(op, "dims", what="permute")
        if sorted(self.dims) != list(range(len(self.dims))) or self.dims[0] != 0:
            raise FormatError(f"permute '{self.name}': dims must be a permutation starting with 0, "
                              f"got {self.dims}")

    def forward(self, x):
        return x.permute(self.dims)


class Concat(Op):
    arity = None

    def __init__(self, op, tensors, values):
        super().__init__(op, tensors, values)
        self.dim = op["dim"]
        if not isinstance(self.dim, int) or self.dim < 1 or not self.inputs:
            raise FormatError(f"concat '{self.name}': needs inputs and an integer dim >= 1 (not the batch)")

    def forward(self, *xs):
        return torch.cat(xs, dim=self.dim)


class Slice(Op):
    def forward(self, x):
        idx = tuple(slice(a, b, c) for a, b, c in self.spec["slices"][1:])
        return x[(slice(None),) + idx]


class Pad(Op):
    def forward(self, x):
        return F.pad(x, list(self.spec["pad"]), value=float(self.spec["value"]))


OPS = {"flatten": Flatten, "reshape": Reshape, "permute": Permute, "concat": Concat, "slice": Slice,
       "pad": Pad}
