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
