"""qat: quantization-aware training on PyTorch Lightning and Hydra, with verified integer export."""

__version__ = "0.1.0"
