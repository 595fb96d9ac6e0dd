import copy

import pytest
import torch
from torch import nn

from qat.quant.layers import QuantConv2d, QuantConvBn2d, QuantLinear
from qat.quant.quantizers import AffineQuant, Identity, SignQuant


def _grads(module):
    return [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("bias", [True, False])
def test_identity_quant_conv_equals_torch_exactly(bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=bias)
    q = QuantConv2d.from_float(copy.deepcopy(conv))
    x = torch.randn(4, 3, 9, 9)
    a, b = conv(x), q(x)
    assert torch.equal(a, b)
    a.square().sum().backward()
    b.square().sum().backward()
    for ga, gb in zip(_grads(conv), _grads(q)):
        assert torch.equal(ga, gb)


def test_identity_quant_linear_equals_torch_exactly():
    torch.manual_seed(0)
    lin = nn.Linear(20, 7)
    q = QuantLinear.from_float(copy.deepcopy(lin))
    x = torch.randn(5, 20, requires_grad=True)
    assert torch.equal(lin(x), q(x))
    assert isinstance(q.weight_quant, Identity) and isinstance(q.input_quant, Identity)


def test_from_float_shares_parameters_and_quantizes():
    conv = nn.Conv2d(2, 4, 3, padding=1)
    q = QuantConv2d.from_float(conv, SignQuant(), SignQuant())
    assert q.weight is conv.weight and q.bias is conv.bias
    x = torch.randn(2, 2, 5, 5)
    ref = nn.functional.conv2d(torch.where(x >= 0, 1.0, -1.0), torch.where(conv.weight >= 0, 1.0, -1.0),
                               conv.bias, padding=1)
    assert torch.allclose(q(x), ref)


def _conv_bn(seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return conv, bn


def test_conv_bn_fold_eval_matches_conv_then_bn():
    conv, bn = _conv_bn()
    ref = nn.Sequential(copy.deepcopy(conv), copy.deepcopy(bn)).eval()
    q = QuantConvBn2d.from_float(conv, bn=bn).eval()
    x = torch.randn(4, 3, 8, 8)
    assert torch.allclose(q(x), ref(x), atol=1e-5)


def test_conv_bn_fold_training_matches_conv_then_bn_and_updates_running_stats():
    conv, bn = _conv_bn(1)
    ref = nn.Sequential(copy.deepcopy(conv), copy.deepcopy(bn)).train()
    q = QuantConvBn2d.from_float(conv, bn=bn).train()
    x = torch.randn(8, 3, 8, 8)
    assert torch.allclose(q(x), ref(x), atol=1e-5)
    assert torch.allclose(q.bn.running_mean, ref[1].running_mean, atol=1e-6)
    assert torch.allclose(q.bn.running_var, ref[1].running_var, atol=1e-6)


def test_frozen_bn_uses_running_statistics_in_training():
    conv, bn = _conv_bn(2)
    q = QuantConvBn2d.from_float(conv, bn=bn)
    q.bn_frozen.fill_(True)
    q.train()
    before = q.bn.running_mean.clone()
    x = torch.randn(4, 3, 8, 8)
    y_train = q(x)
    assert torch.equal(q.bn.running_mean, before)
    assert torch.allclose(y_train, q.eval()(x))


def test_conv_bn_quantized_weight_is_folded_then_quantized():
    conv, bn = _conv_bn(3)
    q = QuantConvBn2d.from_float(conv, AffineQuant(8, per_channel=True, observer="current"), bn=bn).eval()
    w, _ = q.folded_weight_and_bias()
    wq = q.quantized_weight()
    for c in range(w.shape[0]):
        assert wq[c].unique().numel() <= 256
    assert torch.allclose(wq, w, atol=float((w.amax() - w.amin()).detach() / 255))


def test_conv_bn_rejects_a_non_affine_bn():
    conv, _ = _conv_bn()
    with pytest.raises(ValueError, match="affine"):
        QuantConvBn2d.from_float(conv, bn=nn.BatchNorm2d(6, affine=False))


def _uint8_layers():
    """A QuantConv2d, QuantConvBn2d and QuantLinear with calibrated 8-bit input and weight quantizers."""
    torch.manual_seed(0)
    conv = QuantConv2d.from_float(nn.Conv2d(16, 24, 3, padding=1), AffineQuant(8, per_channel=True, observer="current"),
                                  AffineQuant(8, per_channel=False))
    convbn = QuantConvBn2d.from_float(nn.Conv2d(16, 24, 3, padding=1, bias=False),
                                      AffineQuant(8, per_channel=True, observer="current"),
                                      AffineQuant(8, per_channel=False), bn=nn.BatchNorm2d(24))
    lin = QuantLinear.from_float(nn.Linear(300, 10), AffineQuant(8, per_channel=True, observer="current"),
                                 AffineQuant(8, per_channel=False))
    with torch.no_grad():
        convbn.bn.running_mean.uniform_(-0.5, 0.5)
        convbn.bn.running_var.uniform_(0.5, 2.0)
        for m, shape in ((conv, (8, 16, 12, 12)), (convbn, (8, 16, 12, 12)), (lin, (8, 300))):
            m.train()(torch.randn(shape))  # calibrate the input observer
            m.eval()
    return [(conv, (8, 16, 12, 12)), (convbn, (8, 16, 12, 12)), (lin, (8, 300))]


@torch.no_grad()
def test_exact_accumulation_sums_quantized_products_in_float64():
    from qat.quant.layers import exact_accumulation
    import torch.nn.functional as F

    for m, shape in _uint8_layers():
        x = torch.randn(shape) * 1.5
        xq = m.input_quant(x)
        if isinstance(m, QuantConvBn2d):
            w, b = m.folded_weight_and_bias()
            w = m.weight_quant(w)
        else:
            w, b = m.quantized_weight(), m.bias
        if isinstance(m, QuantLinear):
            exact = (F.linear(xq.double(), w.double()) + b.double()).float()
        else:
            exact = (m._conv_forward(xq.double(), w.double(), None) + b.double().reshape(1, -1, 1, 1)).float()
        plain = m(x)
        with exact_accumulation():
            got = m(x)
        assert got.dtype == torch.float32
        assert torch.equal(got, exact)
        assert not torch.equal(plain, exact)  # float32 sums round differently (the reason for the mode)
        assert torch.allclose(plain, exact, rtol=0, atol=1e-4 * float(exact.abs().max()))
        assert torch.equal(m(x), plain)  # outside the context: unchanged


@torch.no_grad()
def test_exact_accumulation_leaves_float_input_layers_and_resets_on_error():
    from qat.quant.layers import _EXACT, exact_accumulation

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    q = QuantConv2d.from_float(copy.deepcopy(conv)).eval()
    x = torch.randn(2, 3, 8, 8)
    with exact_accumulation():
        assert torch.equal(q(x), conv(x))  # an unquantized input keeps torch's own float32 layer
    with pytest.raises(RuntimeError), exact_accumulation():
        raise RuntimeError("boom")
    assert _EXACT.get() is False
