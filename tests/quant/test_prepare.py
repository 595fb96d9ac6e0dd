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


class ReLU6Net(nn.Module):
    """MobileNet-style: every activation a ReLU6 module, so a sign after it would always be +1."""

    def __init__(self, act=nn.ReLU6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), act(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), act(),
            nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), act())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.GELU])
def test_bnn_replaces_every_activation_that_feeds_a_sign(act):
    model = BNN().prepare(ReLU6Net(act))
    assert not any(isinstance(m, act) for m in model.modules())
    assert sum(isinstance(m, nn.Hardtanh) for m in model.modules()) == 3


def test_bnn_on_a_relu6_network_trains_alive():
    torch.manual_seed(0)
    recipe = BNN()
    model = recipe.prepare(ReLU6Net())
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 4, (64,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    recipe.on_train_start(model)
    for step in range(1, 6):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        recipe.after_optimizer_step(model, step)
    model.eval()
    with torch.no_grad():
        out = model(x)
        signs = model.fc[0].input_quant(torch.flatten(model.pool(model.features(x)), 1))
    # The classifier's binarized input differs between images, and so do the logits.
    assert (signs == -1).any() and (signs == 1).any()
    assert out.std(0).min() > 1e-3


def test_a_binarizing_recipe_that_cannot_replace_relu6_refuses_it():
    class NoReplacement(BNN):
        activation = None

    with pytest.raises(ValueError, match="'features.3' gets its input from ReLU6 module 'features.2'"):
        NoReplacement().prepare(ReLU6Net())


class FunctionalReLU(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.conv1 = nn.Conv2d(3, 8, 3, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.fn(self.bn(self.conv1(x)))
        return self.fc(self.conv2(x).mean((2, 3)))


@pytest.mark.parametrize("fn", [torch.nn.functional.relu, torch.nn.functional.relu6, torch.sigmoid,
                                torch.nn.functional.hardswish])
def test_bnn_refuses_a_functional_activation_before_a_sign(fn):
    with pytest.raises(ValueError, match=r"'conv2' gets its input from \w+\(\) in FunctionalReLU.forward"):
        BNN().prepare(FunctionalReLU(fn))
    # Kept in float by policy, the layer has no sign to starve: prepare accepts it.
    BNN(overrides={"conv2": "weights_only"}).prepare(FunctionalReLU(fn))


def test_dead_sign_through_pooling_and_concatenation():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.gate = nn.Sigmoid()  # not replaced: a sigmoid is no activation before a sign
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            g = self.gate(self.conv(x))
            return self.fc(torch.cat([g.mean((2, 3)), g.amax((2, 3))], 1))

    BNN().prepare(Net())  # amax is not known to keep values >= 0: the check stays silent

    class Dead(Net):
        def forward(self, x):
            g = self.gate(self.conv(x))
            return self.fc(torch.cat([g.mean((2, 3)), g.mean((2, 3)) * 2], 1))

    with pytest.raises(ValueError, match="'fc' gets its input from Sigmoid module 'gate'"):
        BNN().prepare(Dead())


def test_prepare_logs_a_layer_table_and_warns_for_float_layers(caplog):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.seq = nn.Conv1d(8, 8, 1)
            self.up = nn.ConvTranspose2d(8, 8, 2)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = self.up(self.conv(x)).mean(3)
            return self.fc(self.seq(x).mean(2))

    class MyLinear(nn.Linear):
        pass

    with caplog.at_level("INFO", logger="qat.quant.prepare"):
        model = QATUint8().prepare(Net())
    table = caplog.text
    assert "layer" in table and "policy" in table and "conv" in table and "AffineQuant 8b" in table
    warning = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and "seq (Conv1d)" in warning[0].message and "up (ConvTranspose2d)" in warning[0].message
    assert isinstance(model.seq, nn.Conv1d)
    with pytest.raises(ValueError, match=r"these stay in float: seq \(Conv1d\), up \(ConvTranspose2d\)"):
        QATUint8(strict=True).prepare(Net())
    sub = nn.Sequential(nn.Linear(4, 4), MyLinear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"1 \(MyLinear\)"):
        BWN(strict=True).prepare(sub)
