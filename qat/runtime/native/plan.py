"""Which ops of a program run natively, and how they are fused.

``NativeProgram`` walks the manifest once per mode: ``fused`` (conv -> [maxpool] -> threshold becomes
one binary or ternary layer writing packed bits, max pooling done on the bits; int conv -> requantize one int
layer writing codes; on AVX-512, a ResNet block's float chain dequantize -> ... -> quantize one
``residual.ResidualStage``) for speed, ``unfused`` (every manifest value computed, for ``run(keep=True)``).
An op without a native kernel runs as the reference op on reference-layout inputs; values convert
between the layouts only where a reference op meets a native one.
"""

from __future__ import annotations

from collections import Counter

import torch

from qat.runtime.native import ops as N
from qat.runtime.shape_ops import OPS as SHAPE_OPS
from qat.runtime.native.residual import FloatThreshold, residual_stage
from qat.runtime.native.values import NATIVE, reference


# the popcount compute kinds and their native layers (same inputs, outputs and fused stages)
POPCOUNT_LAYERS = {"xnor_popcount": N.BinaryLayer, "ternary_popcount": N.TernaryLayer}

# A large batch runs in chunks of this many images: a ResNet-20 block's activations for 16 images
# (about 1 MiB) stay in the core's cache between the ops of a block, where those of 64 images go
# to memory and back at every op. Every op computes each image alone, so the result does not depend
# on the chunking.
CHUNK = 16

# ops whose every output element is computed alone from the same elements of the inputs: their
# result does not depend on the memory format, so they may read channels_last views; any other op
# (reductions, convolutions, BatchNorm) reads contiguous NCHW, as in the reference runtime
ELEMENTWISE = {"dequantize", "quantize", "threshold", "requantize", "add", "mul", "relu", "hardtanh"}
# and the ops that only move values (qat.runtime.shape_ops): a copy of each element or a constant
ANY_FORMAT = ELEMENTWISE | set(SHAPE_OPS)


class RefStep:
    """A reference op, fed reference-layout inputs."""

    def __init__(self, op):
        self.op, self.inputs, self.outputs = op, op.inputs, op.outputs
        self.any_format = op.spec["op"] in ANY_FORMAT

    def run(self, env):
        local = {name: reference(env[name]) for name in self.inputs}
        if not self.any_format:
            local = {k: v.contiguous() for k, v in local.items()}
        self.op.run(local)
        for name in self.outputs:
            env[name] = local[name]


def _chw(values: dict, name: str) -> tuple[int, int, int]:
    shape = values[name]["shape"][1:]
    return (int(shape[0]), int(shape[1]), int(shape[2])) if len(shape) == 3 else (int(shape[0]), 1, 1)


class NativeProgram:
    def __init__(self, program, tensors: dict, lib, isa: str):
        self.program, self.tensors, self.lib, self.isa = program, tensors, lib, isa
        self.values = program.manifest["values"]
        self.readers = Counter(n for op in program.ops for n in op.inputs)
        self.readers[program.output_name] += 1  # the caller reads the output
        self.plans = {fuse: self._plan(fuse) for fuse in (True, False)}
        self.free = self._free_lists(self.plans[True])  # values to drop after each fused step

    def _free_lists(self, steps) -> list[list[str]]:
        last = {}
        for i, s in enumerate(steps):
            for name in s.inputs:
                last[name] = i
        return [[n for n in s.inputs if last[n] == i and n != self.program.output_name]
                for i, s in enumerate(steps)]

    # ----------------------------------------------------------------- planning
    def _in_chw(self, op, producers) -> tuple[int, int, int]:
        """The ``[c, h, w]`` map a layer reads (a linear layer after a flatten reads the 4-d map)."""
        src = op.inputs[0]
        prod = producers.get(src)
        if op.spec["op"] == "linear" and prod is not None and prod.spec["op"] == "flatten":
            pre = self.values[prod.inputs[0]]["shape"]
            if len(pre) == 4 and int(prod.spec["start_dim"]) == 1 and int(prod.spec["end_dim"]) in (-1, 3):
                return _chw(self.values, prod.inputs[0])
        return _chw(self.values, src)

    def _single(self, name: str, reader_index: int, ops) -> bool:
        return self.readers[name] == 1 and name != self.program.output_name and reader_index < len(ops)

    def _plan(self, fuse: bool) -> list:
        ops = self.program.ops
        producers, native_i32, native_vals, steps = {}, set(), set(), []
        i = 0
        while i < len(ops):
            op = ops[i]
            kind = op.spec["op"]
            step, used = None, 1
            try:
                if kind in ("conv2d", "linear") and op.compute in POPCOUNT_LAYERS:
                    step, used = self._binary(op, ops, i, producers, fuse)
                elif kind in ("conv2d", "linear") and op.compute == "int":
                    step, used = self._int(op, ops, i, producers, fuse)
                elif (fuse and self.isa == "avx512" and len(self.values[op.inputs[0]]["shape"]) in (2, 4) and (
                        (kind == "dequantize" and op.inputs[0] in native_i32) or
                        (kind in ("batchnorm", "quantize") and self.values[op.inputs[0]]["dtype"] == "float32"))):
                    gaps, step, used = residual_stage(self, ops, i, _chw(self.values, op.inputs[0]),
                                                      len(self.values[op.inputs[0]]["shape"]) == 2) or ([], None, 1)
                    steps += [RefStep(g) for g in gaps]  # a shortcut the stage adds, computed first
                elif kind == "maxpool2d" and op.inputs[0] in native_i32:
                    step = N.MaxPoolI32(self.lib, op.spec, _chw(self.values, op.inputs[0]))
                elif kind == "threshold" and op.inputs[0] in native_i32:
                    step = N.ThresholdPack(self.lib, op, _chw(self.values, op.inputs[0]), self._flat(op))
                elif (kind == "threshold" and op.spec["domain"] == "float" and fuse and self.isa == "avx512"
                      and len(self.values[op.inputs[0]]["shape"]) in (2, 4)):
                    step = FloatThreshold(self.lib, op, _chw(self.values, op.inputs[0]), self._flat(op))
                elif kind == "requantize" and op.inputs[0] in native_i32:
                    step = N.Requantize(self.lib, op, _chw(self.values, op.inputs[0]), self._flat(op))
                elif (kind == "flatten" and op.inputs[0] in native_vals and int(op.spec["start_dim"]) == 1
                      and int(op.spec["end_dim"]) in (-1, 3)):
                    step = N.Flatten(op.inputs, op.outputs, op.name)
            except N.NotNative:
                step, used = None, 1
            if step is None:
                step = RefStep(op)
            else:
                native_vals.update(step.outputs)
            if isinstance(step, N.NativeOp) and any(self.values[o]["dtype"] == "int32" for o in step.outputs):
                native_i32.update(step.outputs)
            for j in range(i, i + used):
                for o in ops[j].outputs:
                    producers[o] = ops[j]
            steps.append(step)
            i += used
        return steps

    def _flat(self, op) -> bool:
        return len(self.values[op.outputs[0]]["shape"]) == 2

    def _binary(self, op, ops, i, producers, fuse):
        layer_cls = POPCOUNT_LAYERS[op.compute]
        in_chw = self._in_chw(op, producers)
        out = op.outputs[0]
        if fuse and self._single(out, i + 1, ops):
            nxt = ops[i + 1]
            pool = None
            if nxt.spec["op"] == "maxpool2d" and self._single(nxt.outputs[0], i + 2, ops):
                pool, nxt = nxt, ops[i + 2]
            if nxt.spec["op"] == "threshold" and nxt.spec["domain"] == "int" and nxt.inputs[0] == (
                    pool.outputs[0] if pool else out):
                thr = N.threshold_tensors(nxt)
                layer = layer_cls(self.lib, self.isa, op.spec, self.tensors, in_chw, nxt.outputs, thr,
                                  pool.spec if pool else None)
                return layer, 3 if pool else 2
        return layer_cls(self.lib, self.isa, op.spec, self.tensors, in_chw, op.outputs), 1

    def _int(self, op, ops, i, producers, fuse):
        in_chw = self._in_chw(op, producers)
        out = op.outputs[0]
        if fuse and self._single(out, i + 1, ops) and ops[i + 1].spec["op"] == "requantize":
            rq = ops[i + 1]
            return N.IntLayer(self.lib, self.isa, op.spec, self.tensors, in_chw, rq.outputs, rq), 2
        return N.IntLayer(self.lib, self.isa, op.spec, self.tensors, in_chw, op.outputs), 1

    # ----------------------------------------------------------------- running
    def native_ops(self, fused: bool = True) -> list[str]:
        """Names of the ops (or fused groups) that run natively."""
        return [s.name for s in self.plans[fused] if isinstance(s, N.NativeOp)]

    @torch.no_grad()
    def run(self, x: torch.Tensor, keep: bool) -> dict:
        if keep:
            env = {self.program.input_name: x}
            for s in self.plans[False]:
                s.run(env)
            return {k: reference(v).contiguous() for k, v in env.items()}
        out = self.program.output_name
        chunks = [x[i:i + CHUNK] for i in range(0, x.shape[0], CHUNK)]
        threads = min(torch.get_num_threads(), len(chunks))
        if threads == 1:  # (one chunk on several threads: each kernel call splits its rows instead)
            parts = [self._run_fused(c) for c in chunks]
        else:  # chunks on separate threads: every step runs in parallel, not just the kernel calls
            parts = [None] * len(chunks)

            def work(first):
                with N.serial():
                    for j in range(first, len(chunks), threads):
                        parts[j] = self._run_fused(chunks[j])

            N.on_threads(work, threads)
        return {out: parts[0] if len(parts) == 1 else torch.cat(parts)}

    def _run_fused(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.program.input_name: x}
        with N.reuse():
            for s, free in zip(self.plans[True], self.free):
                s.run(env)
                for name in free:
                    env.pop(name, None)
        # a copy: the output may be (a view of) a buffer its op writes again at the next call
        return reference(env[self.program.output_name]).clone(memory_format=torch.contiguous_format)


__all__ = ["NativeProgram", "NATIVE"]
