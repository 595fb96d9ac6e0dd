"""What every runtime op shares: the ``Op`` base class and typed access to the export's tensors.

An op is one class: its constructor reads and checks the manifest entry's fields (the op's schema)
and its ``forward`` is the reference kernel. ``qat.runtime.ops.OPS`` maps manifest op names to them.
"""

from __future__ import annotations

import numpy as np
import torch

from qat.runtime.errors import FormatError


def tensor(tensors: dict, name: str | None, what: str, dtype=None, shape=None) -> torch.Tensor | None:
    """The export's tensor ``name`` as torch, checked against ``dtype`` and ``shape``; None for None."""
    if name is None:
        return None
    if name not in tensors:
        raise FormatError(f"{what}: tensor '{name}' is not in tensors.safetensors")
    arr = tensors[name]
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise FormatError(f"{what}: tensor '{name}' has dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise FormatError(f"{what}: tensor '{name}' has shape {list(arr.shape)}, expected {list(shape)}")
    return torch.from_numpy(np.array(arr))


def channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-channel vector broadcast along dim 1 of an ndim tensor."""
    return v.reshape([1, -1] + [1] * (ndim - 2))


def int_list(op: dict, key: str, n: int | None = None, what: str = "") -> list[int]:
    """Field ``key`` of ``op`` as a list of ints (of length ``n`` when given)."""
    v = op[key]
    if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v) or (
            n is not None and len(v) != n):
        raise FormatError(f"{what or op.get('op')} '{op.get('name')}': field '{key}' must be a list of "
                          f"{n or 'some'} integers, got {v!r}")
    return v


class Op:
    """Base: ``run(env)`` reads ``inputs`` from ``env`` and writes ``outputs``."""

    #: number of inputs the op reads (None: any number)
    arity: int | None = 1

    def __init__(self, op: dict, tensors: dict, values: dict):
        self.spec = op
        self.name = op.get("name", op["outputs"][0])
        self.inputs = list(op["inputs"])
        self.outputs = list(op["outputs"])
        if self.arity is not None and len(self.inputs) != self.arity:
            raise FormatError(f"{op['op']} '{self.name}' reads {len(self.inputs)} values, expected "
                              f"{self.arity}")

    def run(self, env: dict) -> None:
        env[self.outputs[0]] = self.forward(*[env[i] for i in self.inputs])

    def forward(self, *xs):  # pragma: no cover - abstract
        raise NotImplementedError
