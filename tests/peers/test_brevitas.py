"""The Brevitas peers build the same network as qat's recipe: for bnn and bwn, whose definitions
coincide, the same logits and the same gradients, bit for bit."""

import copy

import pytest
import torch
from torch import nn

from qat.models import resnet20
from qat.quant.binary import BNN, BWN
from qat.quant.ternary import TWN

pytest.importorskip("brevitas", reason="the peers extra: pip install -e '.[peers]'")
from qat.peers.brevitas import brevitas_prepare  # noqa: E402


def _pair(recipe, method):
    torch.manual_seed(0)
    base = resnet20(10, width=8)
    ours = recipe.prepare(copy.deepcopy(base))
    peer = brevitas_prepare(copy.deepcopy(base), method, recipe.first, recipe.last, recipe.overrides)
    return ours, peer


@pytest.mark.parametrize("recipe,method", [(BNN(), "bnn"), (BWN(), "bwn")])
def test_same_logits_and_gradients_as_qat(recipe, method):
    ours, peer = _pair(recipe, method)
    recipe.on_train_start(ours)  # bnn clips latent weights to [-1, 1], as Brevitas' clamp does
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ya, yb = ours(x), peer(x)
    assert torch.equal(ya, yb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    ga = [p.grad for n, p in sorted(ours.named_parameters()) if n.endswith("weight")]
    gb = [p.grad for n, p in sorted(peer.named_parameters()) if n.endswith("weight")]
    assert len(ga) == len(gb) and all(torch.equal(a, b) for a, b in zip(ga, gb))


def test_layer_policy_follows_the_recipe():
    import brevitas.nn as qnn

    _, peer = _pair(TWN(), "ternary")  # TWN: first and last layers in full precision
    assert type(peer.conv1) is nn.Conv2d and type(peer.fc) is nn.Linear
    assert isinstance(peer.layer1[0].conv1, qnn.QuantConv2d)
    w = peer.layer1[0].conv1.quant_weight().value
    assert len(torch.unique(w)) <= 3  # 2-bit narrow range: {-s, 0, s}


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="choose one of"):
        brevitas_prepare(resnet20(10), "xnor", "quant", "quant")
