import pytest
import torch

from qat.models import mlp, resnet20, vgg_small


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_resnet20_matches_paper_size():
    # He et al. 2016, table 6: ResNet-20 has 0.27 M parameters.
    assert 0.26e6 < n_params(resnet20(num_classes=10)) < 0.28e6


def test_vgg_small_width_one_is_binarynet_size():
    # The BinaryNet CIFAR-10 ConvNet has about 14 M parameters.
    assert 13.5e6 < n_params(vgg_small(num_classes=10, width=1.0)) < 14.5e6


@pytest.mark.parametrize("factory", [resnet20, vgg_small, mlp])
@pytest.mark.parametrize("channels,size", [(3, (32, 32)), (1, (16, 24))])
def test_output_shape_and_gradients(factory, channels, size):
    model = factory(num_classes=7, in_channels=channels, image_size=size)
    x = torch.randn(4, channels, *size)
    out = model(x)
    assert out.shape == (4, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_every_relu_is_its_own_module():
    # Recipes swap activations module by module; a shared or functional ReLU would escape the swap.
    model = resnet20(num_classes=10)
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert len(relus) == 1 + 9 * 2
    assert len({id(r) for r in relus}) == len(relus)


@pytest.mark.parametrize("bad", [dict(width=0), dict(image_size=(30, 30))])
def test_vgg_bad_arguments(bad):
    with pytest.raises(ValueError):
        vgg_small(num_classes=10, **bad)
