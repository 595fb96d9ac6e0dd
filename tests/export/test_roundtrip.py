"""The runtime computes what the fake-quant model computes, for every recipe and model."""

import numpy as np
import pytest
import torch
from torch.fx import Interpreter

from qat.export import export_model
from qat.export.trace import _Tracer
from qat.runtime import load
from tests.export.models import EXACT, NORM, RECIPES, SHAPE, deployed, inputs

MODELS = ("resnet20", "vgg_small", "mlp")


def export(tmp_path, model, recipe, **kw):
    m, r = deployed(model, recipe)
    res = export_model(m, tmp_path / f"{recipe}_{model}", input_shape=SHAPE, normalization=NORM,
                       recipe=r, onnx=False, **kw)
    return m, res


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_runtime_matches_fake_quant(tmp_path, recipe, model):
    m, res = export(tmp_path, model, recipe)
    program = load(res.folder)  # from disk: checksums, parsing, unpacking
    x = inputs(48)
    with torch.no_grad():
        ref = m(x)
    out = program(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    if recipe in EXACT:
        assert torch.equal(out, ref), f"max diff {(out - ref).abs().max()}"
    elif recipe in ("bwn", "twn", "admm_ternary"):
        # signed sums scaled once per output vs the model's scaled products: float rounding only
        scale = ref.abs().max()
        assert (out - ref).abs().max() <= 1e-5 * scale
        margin = ref.topk(2, dim=1).values
        clear = (margin[:, 0] - margin[:, 1]) > 1e-4 * scale
        assert torch.equal(out.argmax(1)[clear], ref.argmax(1)[clear])
    else:  # qat_uint8: integer requantization, codes within one step (see test_uint8_codes)
        assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    kinds = {op["compute"] for op in res.manifest["ops"] if op["op"] in ("conv2d", "linear")}
    expect = {"bnn": "xnor_popcount", "bwn": "signed_sum", "twn": "signed_sum",
              "admm_ternary": "signed_sum", "qat_uint8": "int", "linear": "int"}
    if recipe in expect:
        assert expect[recipe] in kinds


def _model_codes(m, x):
    """The input codes each quantized layer of ``m`` computes, keyed by the value it reads."""
    gm = torch.fx.GraphModule(m, _Tracer().trace(m))
    mods = dict(m.named_modules())
    codes = {}

    class Run(Interpreter):
        def run_node(self, n):
            if n.op == "call_module" and hasattr(mods[n.target], "input_quant"):
                codes[n.args[0].name] = mods[n.target].input_quant.quantize(self.env[n.args[0]]).codes
            return super().run_node(n)

    with torch.no_grad():
        Run(gm).run(x)
    return codes


@pytest.mark.parametrize("model", MODELS)
def test_uint8_codes(tmp_path, model):
    """qat_uint8: the first requantization sees exactly the model's input codes, so its output codes
    differ from the model's only where float rounding moves a value across a rounding boundary:
    by one step, rarely."""
    m, res = export(tmp_path, model, "qat_uint8")
    program = load(res.folder)
    x = inputs(64)
    env = program.run(x, keep=True)
    ref = _model_codes(m, x)
    ops = res.manifest["ops"]
    first_q = next(op for op in ops if op["op"] == "quantize")
    assert torch.equal(env[first_q["outputs"][0]].int(), ref[first_q["inputs"][0]].int())
    req = next(op for op in ops if op["op"] == "requantize")
    base = req["outputs"][0].rsplit(".", 1)[0]
    diff = env[req["outputs"][0]].int() - ref[base].int()
    assert diff.abs().max() <= 1
    assert (diff != 0).float().mean() < 1e-3


def test_bnn_folds_batchnorm_into_thresholds(tmp_path):
    _, res = export(tmp_path, "vgg_small", "bnn")
    ops = res.manifest["ops"]
    thresholds = [op for op in ops if op["op"] == "threshold"]
    # every BN + hardtanh feeding a binary layer folds; a float BatchNorm is left only where the recipe
    # normalises the logits (bnn's logit_bn), which the output reads
    assert len(thresholds) == 8
    assert all(op["outputs"][0] == res.manifest["output"] for op in ops if op["op"] == "batchnorm")
    assert thresholds[0]["domain"] == "float" and thresholds[1]["domain"] == "int"
    xnor = [op for op in ops if op.get("compute") == "xnor_popcount"]
    assert len(xnor) == 8  # all layers but the first (real-valued image input)


def test_uint8_folds_requantization(tmp_path):
    _, res = export(tmp_path, "vgg_small", "qat_uint8")
    req = [op for op in res.manifest["ops"] if op["op"] == "requantize"]
    assert len(req) == 8
    for op in req:
        m0 = res.tensors[op["multiplier"]].astype(np.int64)
        assert np.all((np.abs(m0) >= 2 ** 30) & (np.abs(m0) < 2 ** 31))
        assert res.tensors[op["bias"]].dtype == np.int32
    # conv -> maxpool -> BN -> relu: the BatchNorm that could not fold into the conv folds here
    assert any("features.5" in op["folds"] for op in req)


def test_ternary_trits_equal_bits(tmp_path):
    m, bits = export(tmp_path, "resnet20", "twn")
    _, trits = export(tmp_path / "t", "resnet20", "twn", ternary_packing="trits")
    x = inputs(8)
    assert torch.equal(load(bits.folder)(x), load(trits.folder)(x))
    enc = {op["weight"]["encoding"] for op in trits.manifest["ops"]
           if op["op"] in ("conv2d", "linear") and op["weight"]["kind"] == "ternary"}
    assert enc == {"trits"}
    assert trits.size_bytes < bits.size_bytes


def test_binary_weight_bytes_are_one_32nd(tmp_path):
    _, res = export(tmp_path, "vgg_small", "bnn")
    checked = 0
    for op in res.manifest["ops"]:
        w = op.get("weight") if op["op"] in ("conv2d", "linear") else None
        if w and w["bits"] == 1 and np.prod(w["shape"][1:]) % 32 == 0:
            n = int(np.prod(w["shape"]))
            assert res.tensors[w["tensor"]].nbytes * 32 == 4 * n
            checked += 1
    assert checked >= 6


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("recipe", ["twn", "admm_ternary"])
def test_ternary_weights_with_sign_inputs_are_exact(tmp_path, recipe, model):
    """Ternary weights x sign inputs: ternary_popcount accumulators (weights as bit planes), BatchNorm +
    hard tanh + sign folded into integer thresholds through the weight scale alpha: the runtime's
    logits are the model's own (its products summed exactly, as verification evaluates it)."""
    from qat.quant.layers import exact_accumulation

    m, r = deployed(model, recipe, activations="sign")
    res = export_model(m, tmp_path / "e", input_shape=SHAPE, normalization=NORM, recipe=r, onnx=False)
    program = load(res.folder, backend="reference")
    x = inputs(48)
    with torch.no_grad(), exact_accumulation():
        ref = m(x)
    assert torch.equal(program(x), ref)
    ops = res.manifest["ops"]
    popcount = [op for op in ops if op.get("compute") == "ternary_popcount"]
    assert popcount and all(op["weight"]["encoding"] == "planes" for op in popcount)
    # every sign input comes from a threshold: no float BatchNorm or quantize between ternary layers
    assert not any(op["op"] == "quantize" and op["quant"]["kind"] == "sign" for op in ops if model != "resnet20")
    assert sum(op["op"] == "threshold" for op in ops) >= len(popcount) // 2
