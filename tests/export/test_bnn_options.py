"""Every bnn option, and all of them together, exports exactly (the runtime's logits equal the
model's bit for bit, so agreement is 1.0), and what can fold into integer thresholds does."""

import pytest
import torch

from qat.export import export_model
from qat.quant import binary_blocks as B
from qat.runtime import load
from tests.export.models import NORM, SHAPE, deployed, inputs

OPTIONS = {
    "scale": dict(scale=True),
    "learnable_threshold": dict(learnable_threshold=True),
    "rprelu": dict(rprelu=True),
    "bireal_shortcut": dict(bireal_shortcut=True),
    "approx_sign": dict(sign_grad="approx"),
    "all": dict(scale=True, learnable_threshold=True, rprelu=True, bireal_shortcut=True, sign_grad="approx"),
}


def _randomise_blocks(m, seed=3, negative_slopes=False):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, B.ChannelScale):
                mod.scale.copy_(torch.rand(mod.scale.shape, generator=g) * 2 + 0.05)
            elif isinstance(mod, B.ChannelShift):
                mod.shift.copy_(torch.randn(mod.shift.shape, generator=g) * 0.3)
            elif isinstance(mod, B.RPReLU):
                for p in (mod.bias_in, mod.bias_out):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
                lo = -0.5 if negative_slopes else 0.0
                mod.slope.copy_(torch.rand(mod.slope.shape, generator=g) * 0.5 + lo)


def _export(tmp_path, model, negative_slopes=False, **opts):
    m, r = deployed(model, "bnn", **opts)
    _randomise_blocks(m, negative_slopes=negative_slopes)
    res = export_model(m, tmp_path / model, input_shape=SHAPE, normalization=NORM, recipe=r, onnx=False)
    x = inputs(48)
    with torch.no_grad():
        ref = m(x)
    out = load(res.folder)(x)
    return res, out, ref


@pytest.mark.parametrize("model", ["resnet20", "vgg_small"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_option_exports_exactly(tmp_path, model, option):
    res, out, ref = _export(tmp_path, model, **OPTIONS[option])
    assert torch.equal(out, ref), f"max diff {(out - ref).abs().max()}"
    assert any(op.get("compute") == "xnor_popcount" for op in res.manifest["ops"])


def test_scales_shifts_and_rprelu_fold_into_thresholds_on_vgg(tmp_path):
    res, out, ref = _export(tmp_path, "vgg_small", scale=True, rprelu=True)
    ops = [op["op"] for op in res.manifest["ops"]]
    assert torch.equal(out, ref)
    # as plain bnn: every BN + activation before a binary layer is one threshold; the positive scale
    # after each conv moved behind its max pooling and folded, as did every RPReLU
    assert ops.count("threshold") == 8 and "rprelu" not in ops and ops.count("scale") == 1  # the logits' scale
    folds = {f for op in res.manifest["ops"] if op["op"] == "threshold" for f in op["folds"]}
    m, _ = deployed("vgg_small", "bnn", scale=True, rprelu=True)
    blocks = {n for n, mod in m.named_modules() if isinstance(mod, (B.ChannelScale, B.RPReLU))}
    assert len(blocks - folds) == 1  # all but the classifier's scale, which the logits' BatchNorm reads


def test_learnable_thresholds_fold_after_a_binary_layer(tmp_path):
    res, out, ref = _export(tmp_path, "resnet20", learnable_threshold=True)
    assert torch.equal(out, ref)
    thresholds = [op for op in res.manifest["ops"] if op["op"] == "threshold"]
    assert len(thresholds) == 9 and all(any(f.endswith(".0") for f in op["folds"]) for op in thresholds)


def test_rprelu_with_negative_slopes_stays_float_and_exact(tmp_path):
    res, out, ref = _export(tmp_path, "vgg_small", negative_slopes=True, rprelu=True)
    assert torch.equal(out, ref)
    assert "rprelu" in [op["op"] for op in res.manifest["ops"]]  # not monotone: not folded
