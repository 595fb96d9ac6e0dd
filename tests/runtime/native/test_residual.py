"""The fused float stage of a ResNet block: its load-time probe tells torch's BatchNorm rounding
apart (exactly one of the two variants agrees with the reference), and a stage that disagrees is
not used."""

import pytest
import torch

from qat.export import export_model
from qat.runtime import load
from qat.runtime.native import library as L
from qat.runtime.native import residual as R
from qat.runtime.program import Program
from tests.export.models import NORM, SHAPE, deployed, inputs

pytestmark = pytest.mark.skipif("avx512" not in L.available_isas(),
                                reason="the fused float stage runs on AVX-512 only (this CPU or build lacks it)")


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    m, r = deployed("resnet20", "bnn")
    res = export_model(m, tmp_path_factory.mktemp("residual") / "bnn", input_shape=SHAPE, normalization=NORM,
                       recipe=r, onnx=False)
    return load(res.folder, isa="avx512")


def test_probe_tells_the_batchnorm_roundings_apart(program):
    plan = program.native
    ops = program.ops
    i = next(k for k, op in enumerate(ops) if op.spec["op"] == "dequantize" and op.name == "layer1.0.conv2")
    roles, value, gaps, used = R._match(plan, ops, i)
    assert set(roles) == {"dequantize", "batchnorm", "add", "clamp", "quantize"} and not gaps
    chw = tuple(plan.values[ops[i].inputs[0]]["shape"][1:])
    agree = [R._agrees(R.ResidualStage(plan.lib, roles, value, chw, True, fma), roles, plan, chw)
             for fma in (True, False)]
    assert sum(agree) == 1


def test_downsampling_blocks_run_their_shortcut_first(program):
    """The shortcut (slice, pad) sits between the block's BatchNorm and its add in the manifest: it
    runs before the fused stage that adds it, and the output is the reference's."""
    steps = program.native.plans[True]
    at = [getattr(s, "name", None) for s in steps].index("layer2.0.conv2 (fused float stage)")
    before = {s.op.spec["op"] for s in steps[at - 2:at] if hasattr(s, "op")}
    assert before == {"slice", "pad"}
    ref = Program(program.manifest, program.native.tensors, backend="reference")
    x = inputs(3)
    assert torch.equal(program(x), ref(x))
