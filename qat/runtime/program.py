"""``Program``: a verified export folder, ready to run on float32 NCHW input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qat.runtime.artifact import load_artifact
from qat.runtime.errors import FormatError
from qat.runtime.native import choose, load_library
from qat.runtime.native.library import ISA_NAMES
from qat.runtime.native.plan import NativeProgram
from qat.runtime.ops import OPS


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 network input ``x * 1/(255 std) - mean/std``, the constants
    computed in float64 and rounded to float32 (as ``qat.data.augment.BatchPreprocess`` does)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != len(mean):
        raise ValueError(f"expected uint8 images [N, {len(mean)}, H, W], got {images.dtype} "
                         f"{tuple(images.shape)}")
    std64 = torch.tensor(std, dtype=torch.float64)
    mean64 = torch.tensor(mean, dtype=torch.float64)
    scale = (1.0 / (255.0 * std64)).to(torch.float32).view(1, -1, 1, 1)
    shift = (mean64 / std64).to(torch.float32).view(1, -1, 1, 1)
    return images.to(torch.float32).mul_(scale).sub_(shift)


class Program:
    """The operations of a manifest in order. ``program(x)`` returns the float32 output (logits).

    ``backend`` says what runs the integer ops: ``native-avx2`` / ``native-scalar`` (the C kernels,
    bit-identical to the reference) or ``reference`` (the ops of ``qat.runtime.ops``); ``isa`` which
    path of the C library: ``avx512-vpopcntdq+vnni``, ``avx2``, ``scalar``, or None (reference)."""

    def __init__(self, manifest: dict, tensors: dict[str, np.ndarray], backend: str | None = None,
                 isa: str | None = None):
        self.manifest = manifest
        self.input_name = manifest["input"]["name"]
        self.input_shape = manifest["input"]["shape"]
        self.output_name = manifest["output"]
        values = manifest["values"]
        defined = {self.input_name}
        self.ops = []
        for i, op in enumerate(manifest["ops"]):
            kind = op.get("op")
            if kind not in OPS:
                raise FormatError(f"manifest op #{i} has unknown type {kind!r}; known: {sorted(OPS)}")
            for name in op.get("inputs", []):
                if name not in defined:
                    raise FormatError(f"op #{i} ({kind} '{op.get('name')}') reads '{name}' before it is "
                                      "computed")
            for name in op.get("outputs", []):
                if name not in values:
                    raise FormatError(f"op #{i} writes '{name}', which is not in the manifest's values")
            if kind in ("conv2d", "linear") and op["input"]["kind"] != "float":
                src = values.get(op["inputs"][0], {}).get("quant")
                if src != op["input"]:
                    raise FormatError(f"{kind} '{op.get('name')}' expects input codes {op['input']}, but "
                                      f"'{op['inputs'][0]}' holds {src}")
            try:
                self.ops.append(OPS[kind](op, tensors, values))
            except (KeyError, TypeError, IndexError) as err:
                raise FormatError(f"op #{i} ({kind} '{op.get('name')}') is malformed: missing or bad "
                                  f"field {err}") from None
            defined.update(op["outputs"])
        if self.output_name not in defined:
            raise FormatError(f"the output '{self.output_name}' is never computed")
        # free each value after its last reader
        last = {}
        for i, op in enumerate(self.ops):
            for name in op.inputs:
                last[name] = i
        self._free = [[n for n, j in last.items() if j == i and n != self.output_name]
                      for i in range(len(self.ops))]
        self.backend, isa_key = choose(backend, isa)
        self.isa = None if isa_key is None else ISA_NAMES[isa_key]
        self.native = (None if isa_key is None else NativeProgram(self, tensors, load_library(), isa_key))

    @classmethod
    def load(cls, folder: str | Path, backend: str | None = None, isa: str | None = None) -> "Program":
        manifest, tensors = load_artifact(folder)
        return cls(manifest, tensors, backend, isa)

    @property
    def normalization(self) -> dict:
        return self.manifest["input"]["normalization"]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the float32 input this export expects."""
        n = self.normalization
        return normalize(images, n["mean"], n["std"])

    @torch.no_grad()
    def run(self, x: torch.Tensor, keep: bool = False) -> dict[str, torch.Tensor]:
        """Every value (``keep=True``) or just the output, by name."""
        want = self.input_shape[1:]
        if x.dtype != torch.float32 or list(x.shape[1:]) != list(want):
            raise ValueError(f"input must be float32 [N, {', '.join(map(str, want))}], got {x.dtype} "
                             f"{list(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("the input batch is empty")
        if self.native is not None:
            return self.native.run(x, keep)
        env = {self.input_name: x}
        for op, free in zip(self.ops, self._free):
            op.run(env)
            if not keep:
                for name in free:
                    env.pop(name, None)
        return env if keep else {self.output_name: env[self.output_name]}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[self.output_name]


def load(folder: str | Path, backend: str | None = None, isa: str | None = None) -> Program:
    """Load and verify an export folder (checksums, format version, every tensor).

    ``backend``: ``native-avx2``, ``native-scalar`` or ``reference`` (default: ``QAT_RUNTIME``, else
    the native kernels when they are built; see ``qat.runtime.native``). ``isa``: ``avx512``,
    ``avx2`` or ``scalar`` forces one path of the C library (default: ``QAT_NATIVE_ISA``, else the
    best this CPU runs)."""
    return Program.load(folder, backend, isa)
