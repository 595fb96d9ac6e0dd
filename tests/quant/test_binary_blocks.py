"""The better-binary-network options of bnn: the blocks, where the recipe puts them, ApproxSign."""

import pytest
import torch
from torch import nn

from qat.models import resnet20, vgg_small
from qat.quant import binary_blocks as B
from qat.quant.binary import BNN
from qat.quant.functional import approx_sign
from qat.quant.layers import QuantConv2d
from qat.quant.quantizers import SignQuant

ALL = dict(scale=True, learnable_threshold=True, rprelu=True, bireal_shortcut=True, sign_grad="approx")


def test_approx_sign_forward_is_sign_and_gradient_is_bireal_polynomial():
    x = torch.tensor([-1.5, -1.0, -0.75, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0], requires_grad=True)
    y = approx_sign(x)
    y.backward(torch.ones_like(x))
    assert y.tolist() == [-1, -1, -1, -1, 1, 1, 1, 1, 1]
    assert x.grad.tolist() == [0.0, 0.0, 0.5, 1.5, 2.0, 1.5, 1.0, 0.0, 0.0]


def test_sign_quant_validates_gradient_choice():
    with pytest.raises(ValueError, match="ApproxSign"):
        SignQuant(grad="tanh")
    with pytest.raises(ValueError, match="stochastic"):
        BNN(stochastic=True, sign_grad="approx")


def test_blocks_math():
    x = torch.randn(2, 3, 4, 4)
    s, b, r = B.ChannelScale(3), B.ChannelShift(3), B.RPReLU(3)
    with torch.no_grad():
        s.scale.copy_(torch.tensor([0.5, 2.0, 3.0]))
        b.shift.copy_(torch.tensor([0.1, -0.2, 0.3]))
        r.bias_in.copy_(torch.tensor([-0.5, 0.0, 0.5]))
        r.bias_out.copy_(torch.tensor([1.0, 0.0, -1.0]))
    assert torch.equal(s(x), x * s.scale.view(1, 3, 1, 1))
    assert torch.equal(b(x), x + b.shift.view(1, 3, 1, 1))
    z = x + r.bias_in.view(1, 3, 1, 1)
    assert torch.allclose(r(x), torch.where(z > 0, z, 0.25 * z) + r.bias_out.view(1, 3, 1, 1))
    with torch.no_grad():
        s.scale.fill_(-1.0)
    s.clamp_positive()
    assert bool((s.scale > 0).all())


def _count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


def test_options_off_by_default_leave_the_2016_network():
    m = BNN().prepare(resnet20(10))
    for kind in (B.ChannelScale, B.ChannelShift, B.RPReLU, B.BiRealConv):
        assert _count(m, kind) == 0
    assert all(q.grad == "ste" for q in m.modules() if isinstance(q, SignQuant))


def test_resnet20_with_every_option_places_each_block():
    m = BNN(**ALL).prepare(resnet20(10))
    assert _count(m, B.BiRealConv) == 18  # every binary conv (not the first, which sees the image)
    assert _count(m, B.RPReLU) == 19 and _count(m, nn.Hardtanh) == 0
    assert _count(m, B.ChannelShift) == 19  # before every sign: 18 convs and the classifier
    assert _count(m, B.ChannelScale) == 20  # after every binary-weight layer
    assert all(q.grad == "approx" for n, q in m.named_modules()
               if n.endswith("input_quant") and isinstance(q, SignQuant))
    y = m(torch.randn(4, 3, 32, 32))
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_bireal_shortcut_adds_the_real_input_after_batchnorm():
    conv = QuantConv2d(4, 8, 3, stride=2, padding=1, bias=False)
    block = B.BiRealConv(conv, nn.BatchNorm2d(8).eval())
    x = torch.randn(2, 4, 8, 8)
    sub = torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))
    assert torch.equal(block(x), block.bn(conv(x)) + sub)


def test_vgg_small_bireal_includes_the_pool():
    m = BNN(bireal_shortcut=True).prepare(vgg_small(10))
    blocks = [b for b in m.modules() if isinstance(b, B.BiRealConv)]
    assert len(blocks) == 5 and sum(isinstance(b.pool, nn.MaxPool2d) for b in blocks) == 3
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_scale_stays_positive_after_a_step():
    m = BNN(scale=True).prepare(resnet20(10))
    with torch.no_grad():
        for s in m.modules():
            if isinstance(s, B.ChannelScale):
                s.scale.fill_(-3.0)
    BNN(scale=True).after_optimizer_step(m, 1)
    assert all(bool((s.scale > 0).all()) for s in m.modules() if isinstance(s, B.ChannelScale))
