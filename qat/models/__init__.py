"""Plain ``nn.Module`` classifiers. They know nothing of quantization: ``qat.quant.prepare`` swaps
their layers. A factory gets ``num_classes``, ``in_channels`` and ``image_size`` from the data
module (those it accepts: ``qat.models.custom.accepted``), so that the data alone states those facts.
``torchvision_model`` builds any torchvision classifier, ``custom_model`` any user factory."""

from qat.models.custom import custom_model
from qat.models.mlp import mlp
from qat.models.resnet import resnet20
from qat.models.torchvision import torchvision_model
from qat.models.vgg import vgg_small

__all__ = ["custom_model", "mlp", "resnet20", "torchvision_model", "vgg_small"]
