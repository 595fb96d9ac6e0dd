"""Plain ``nn.Module`` classifiers. They know nothing of quantization: ``qat.quant.prepare`` swaps
their layers. Every factory takes ``num_classes``, ``in_channels`` and ``image_size`` so that the
data module alone states those facts."""

from qat.models.mlp import mlp
from qat.models.resnet import resnet20
from qat.models.vgg import vgg_small

__all__ = ["mlp", "resnet20", "vgg_small"]
