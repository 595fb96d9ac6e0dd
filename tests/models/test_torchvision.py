"""torchvision models from configs: head sized to the data, small-input stem, cached weights only."""

import pytest
import torch
import torchvision
from torch import nn

from qat.models.torchvision import WeightsNotCachedError, torchvision_model, weights_cache_file


def test_random_weights_head_channels_and_small_input():
    torch.manual_seed(0)
    m = torchvision_model("resnet18", num_classes=7, in_channels=1, small_input=True)
    assert m.fc.out_features == 7
    assert m.conv1.in_channels == 1 and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, nn.Identity)
    assert isinstance(m.layer2[0].downsample[0], nn.Conv2d)  # only the stem changed
    m.eval()
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    # Without small_input, torchvision's stem as it is: 32x32 becomes 8x8 after the stem.
    plain = torchvision_model("resnet18", num_classes=7)
    assert plain.conv1.stride == (2, 2) and isinstance(plain.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize("name", ["squeezenet1_1", "shufflenet_v2_x0_5", "googlenet"])
def test_other_stems_and_heads(name):
    m = torchvision_model(name, num_classes=5, small_input=True, kwargs={} if name != "googlenet" else
                          {"init_weights": False})
    first = next(x for x in m.modules() if isinstance(x, nn.Conv2d))
    assert first.stride == (1, 1)
    convs = [n for n, x in m.named_modules() if isinstance(x, nn.Conv2d)]
    order = [n for n, _ in m.named_modules()]
    assert not any(isinstance(x, nn.MaxPool2d) and order.index(n) < order.index(convs[1])
                   for n, x in m.named_modules())
    m.train()  # googlenet: no auxiliary heads, a plain tensor while training
    out = m(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)


def test_pretrained_weights_come_from_the_cache_and_the_head_is_resized(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    weights = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT
    with pytest.raises(WeightsNotCachedError, match="not in the local cache.*model.download=true"):
        torchvision_model("squeezenet1_1", num_classes=10, weights="DEFAULT")
    torch.manual_seed(1)
    reference = torchvision.models.squeezenet1_1()  # stands in for the ImageNet weights
    path = weights_cache_file(weights.url)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    m = torchvision_model("squeezenet1_1", num_classes=10, weights="DEFAULT")
    assert torch.equal(m.features[0].weight, reference.features[0].weight)
    assert m.classifier[1].out_channels == 10
    m = torchvision_model("squeezenet1_1", num_classes=1000, weights="IMAGENET1K_V1")
    assert torch.equal(m.classifier[1].weight, reference.classifier[1].weight)


def test_bad_names_list_the_choices():
    with pytest.raises(ValueError, match="not a torchvision classification model; choose one of: alexnet"):
        torchvision_model("resnet_18", num_classes=10)
    with pytest.raises(ValueError, match="no weights 'NOPE'; choose DEFAULT or one of: IMAGENET1K_V1"):
        torchvision_model("resnet18", num_classes=10, weights="NOPE")
