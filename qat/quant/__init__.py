"""Quantizers: pure functions with custom gradients (``functional``) and their modules (``quantizers``)."""

from qat.quant.functional import Codes, dequantize
from qat.quant.quantizers import (
    QUANTIZERS,
    AffineQuant,
    BinaryWeightQuant,
    Identity,
    LinearQuant,
    LogQuant,
    MinMaxQuant,
    Quantizer,
    SignQuant,
    TanhQuant,
    TernaryQuant,
)

__all__ = [
    "Codes",
    "dequantize",
    "QUANTIZERS",
    "Quantizer",
    "Identity",
    "LinearQuant",
    "LogQuant",
    "TanhQuant",
    "MinMaxQuant",
    "SignQuant",
    "BinaryWeightQuant",
    "TernaryQuant",
    "AffineQuant",
]
