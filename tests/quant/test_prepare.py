import pytest
import torch
from torch import nn

from qat.models import mlp, resnet20, vgg_small
from qat.quant.affine import QATUint8
from qat.quant.binary import BNN, BWN
from qat.quant.layers import QuantConv2d, QuantConvBn2d, QuantLinear
from qat.quant.prepare import find_conv_bn_pairs, layer_policies, quantizable_layers
from qat.quant.quantizers import AffineQuant, Identity, SignQuant

MODELS = {"resnet20": resnet20, "vgg_small": vgg_small, "mlp": mlp}


def build(name):
    torch.manual_seed(0)
    return MODELS[name](num_classes=10, in_channels=3, image_size=(32, 32))


@pytest.mark.parametrize("name", MODELS)
def test_bnn_prepare_swaps_every_layer_and_activation(name):
    model = build(name)
    names = [n for n, _ in quantizable_layers(model)]
    BNN().prepare(model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}
    # The binarized classifier is followed by a BatchNorm1d (logit_bn), as in the paper.
    assert list(layers) == names[:-1] + [names[-1] + ".0"]
    assert isinstance(model.get_submodule(names[-1] + ".1"), nn.BatchNorm1d)
    names[-1] += ".0"
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    first, last = layers[names[0]], layers[names[-1]]
    assert isinstance(first.weight_quant, SignQuant) and isinstance(first.input_quant, Identity)  # real image
    assert isinstance(last.input_quant, SignQuant)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_bwn_keeps_first_and_last_full_precision():
    model = build("resnet20")
    BWN().prepare(model)
    assert type(model.conv1) is nn.Conv2d and type(model.fc) is nn.Linear
    assert isinstance(model.layer1[0].conv1, QuantConv2d)


def test_overrides_and_shortcuts():
    model = build("resnet20")
    BNN(first="int8", last="int8", overrides={"layer3.*": "fp32"}).prepare(model)
    assert isinstance(model.conv1.weight_quant, AffineQuant) and isinstance(model.fc.input_quant, AffineQuant)
    assert type(model.layer3[0].conv1) is nn.Conv2d
    assert isinstance(model.layer2[2].conv2.weight_quant, SignQuant)


def test_pattern_matching_nothing_is_an_error_listing_layers():
    with pytest.raises(ValueError, match="matches no layer.*layer1.0.conv1"):
        BNN(overrides={"block9.*": "fp32"}).prepare(build("resnet20"))


@pytest.mark.parametrize("bad", [dict(first="binary"), dict(overrides={"fc": "int4"})])
def test_unknown_policy_fails_at_construction(bad):
    with pytest.raises(ValueError, match="quant, weights_only, int8, fp32"):
        BNN(**bad)


def test_policies_first_last_order():
    model = build("vgg_small")
    pol = layer_policies(model, first="fp32", last="int8")
    names = list(pol)
    assert pol[names[0]] == "fp32" and pol[names[-1]] == "int8"
    assert set(pol[n] for n in names[1:-1]) == {"quant"}


def test_conv_bn_pairs_found_on_the_graph():
    assert len(find_conv_bn_pairs(build("resnet20"))) == 19
    # vgg_small pools between the second conv of each pair and its BN: only three convs fold.
    assert find_conv_bn_pairs(build("vgg_small")) == {"features.0": "features.1", "features.7": "features.8",
                                                    "features.14": "features.15"}
    assert find_conv_bn_pairs(build("mlp")) == {}


@pytest.mark.parametrize("name", MODELS)
def test_qat_uint8_folds_bn_and_matches_float_model_before_quantization(name):
    model = build(name)
    with torch.no_grad():  # non-trivial running statistics
        model.train()
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    ref = model(x)
    QATUint8().prepare(model)
    n_fold = sum(isinstance(m, QuantConvBn2d) for m in model.modules())
    assert n_fold == len(find_conv_bn_pairs(build(name)))
    for m in model.modules():
        if isinstance(m, AffineQuant):
            m.disable_fake_quant()
    assert torch.allclose(model.eval()(x), ref, atol=1e-4)


def test_bnn_logit_bn_only_after_a_binarized_classifier():
    model = BNN(logit_bn=False).prepare(build("resnet20"))
    assert isinstance(model.fc, QuantLinear)
    model = BNN(last="fp32").prepare(build("resnet20"))
    assert type(model.fc) is nn.Linear
