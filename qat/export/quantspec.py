"""What a quantized layer computes, read from its quantizers: the input quantize spec and the weight
codes, each checked against the float values the model actually computes with.

An input spec is the manifest's ``quant`` object (see ``qat.runtime.quantize``); ``None`` means the
layer sees its float input. Only quantizers whose parameters are fixed at inference can be exported
statically; a range the model recomputes from every batch is exported as ``range: dynamic`` where
the runtime can do the same (min-max), and is an error otherwise.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from qat.export.errors import ExportError
from qat.quant import functional as QF
from qat.quant.functional import Codes
from qat.quant.layers import QuantConvBn2d, QuantMixin

log = logging.getLogger(__name__)

#: weight kinds whose decode is ``scale * (code - zero_point)`` with an integer zero point
INTEGER_KINDS = ("sign", "binary", "ternary", "affine", "linear")


def _f32(v) -> float:
    """A float32 value as the Python float (double) that holds it exactly."""
    return float(np.float32(float(v)))


def _calibrated(q, who: str) -> None:
    """Fixed-point quantizers (``LinearQuant``, ``LogQuant``) must hold a fixed ``sf``."""
    if q.calibrate == "never":
        return
    if q.calibrate == "once" and int(q.num_calibrated) >= q.calib_batches:
        return
    raise ExportError(f"{who}: the input quantizer computes its scale factor from each batch "
                      f"(calibrate={q.calibrate!r}, {int(q.num_calibrated)}/{q.calib_batches} batches "
                      "calibrated), so the export has no fixed scale; train at least calib_batches "
                      "batches (calibrate='once') or set a fixed sf")


def codebook(codes: Codes, lo: int, hi: int) -> np.ndarray:
    """Float32 value of every code in ``[lo, hi]``, decoded by the library's own ``dequantize``."""
    all_codes = torch.arange(lo, hi + 1, dtype=torch.int32).to(codes.codes.dtype)
    return codes._replace(codes=all_codes).dequantize().to(torch.float32).numpy()


def input_spec(layer: nn.Module, who: str) -> tuple[dict | None, np.ndarray | None]:
    """``(spec, codebook)`` of a layer's input quantizer (``(None, None)``: float input)."""
    from qat.quant.quantizers import (AffineQuant, Identity, LinearQuant, LogQuant, MinMaxQuant,
                                      SignQuant, TanhQuant)

    q = getattr(layer, "input_quant", None)
    if q is None or isinstance(q, Identity):
        return None, None
    probe = torch.zeros(1)
    if isinstance(q, SignQuant) or (isinstance(q, (LinearQuant, LogQuant, TanhQuant)) and q.bits == 1):
        return {"kind": "sign", "bits": 1}, None
    if isinstance(q, AffineQuant):
        if not int(q.fake_quant_enabled):
            return None, None  # observe-only: the model passes the float input through
        if q.per_channel:
            raise ExportError(f"{who}: per-channel input quantization does not export; use a "
                              "per-tensor input quantizer")
        if q.min_val.numel() == 0:
            raise ExportError(f"{who}: the input quantizer has observed nothing (no range); train or "
                              "calibrate before exporting")
        if q.observer == "current" and int(q.observer_enabled):
            raise ExportError(f"{who}: the input quantizer takes its range from each batch "
                              "(observer='current'); export needs a fixed range (observer 'ema' or "
                              "'minmax', or disable the observer)")
        scale, zp = q.calculate_qparams()
        return {"kind": "affine", "bits": int(q.bits), "scale": _f32(scale), "zero_point": int(zp),
                "qmin": int(q.qmin), "qmax": int(q.qmax)}, None
    if isinstance(q, LinearQuant):
        _calibrated(q, who)
        return {"kind": "linear", "bits": int(q.bits), "sf": int(q.sf)}, None
    if isinstance(q, LogQuant):
        _calibrated(q, who)
        b, sf = int(q.bits), int(q.sf)
        return {"kind": "log", "bits": b, "sf": sf}, codebook(
            QF.log_linear_quantize_codes(probe, sf, b), -(1 << (b - 1)), (1 << (b - 1)) - 1)
    if isinstance(q, TanhQuant):
        b = int(q.bits)
        return {"kind": "tanh", "bits": b}, codebook(QF.tanh_quantize_codes(probe, b), 0, (1 << b) - 1)
    if isinstance(q, MinMaxQuant):
        if q.min_val.numel() == 0 or q.observer == "current":
            log.warning("%s: min-max input range is taken from each batch (observer=%r); exported as a "
                        "dynamic range: outputs depend on the batch an image is in", who, q.observer)
            return {"kind": "minmax", "bits": int(q.bits), "range": "dynamic"}, None
        return {"kind": "minmax", "bits": int(q.bits), "vmin": _f32(q.min_val),
                "vmax": _f32(q.max_val)}, None
    raise ExportError(f"{who}: input quantizer {type(q).__name__} is not supported by the exporter")


def float_weight_and_bias(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The float weight the weight quantizer sees, and the float bias the layer adds."""
    if isinstance(layer, QuantConvBn2d):
        w, b = layer.folded_weight_and_bias()
        return w.detach(), b.detach()
    return layer.weight.detach(), (layer.bias.detach() if layer.bias is not None else None)


def weight_codes(layer: nn.Module, who: str) -> tuple[Codes | None, torch.Tensor, torch.Tensor | None]:
    """``(codes or None for float weights, effective float weight, bias)``.

    The effective weight is what the model's forward pass multiplies with; the codes must decode to
    it exactly, or the export would not compute what the model computes.
    """
    w, bias = float_weight_and_bias(layer)
    if not isinstance(layer, QuantMixin):
        return None, w, bias
    from qat.quant.quantizers import AffineQuant, Identity

    q = layer.weight_quant
    with torch.no_grad():
        effective = layer.quantized_weight().detach()
    if isinstance(q, Identity) or (isinstance(q, AffineQuant) and not int(q.fake_quant_enabled)):
        return None, effective, bias
    if not hasattr(q, "quantize"):
        raise ExportError(f"{who}: weight quantizer {type(q).__name__} has no quantize(); cannot export")
    codes = q.quantize(w)
    decoded = codes.dequantize()
    if not torch.equal(decoded, effective):
        codes = _rescale_to(codes, effective)
        if codes is None:
            diff = (decoded - effective).abs().max().item()
            raise ExportError(
                f"{who}: the weight codes do not decode to the weights the model computes with (max "
                f"difference {diff:.3g}). For ADMM, run recipe.finalize(model) first (W <- G); "
                "otherwise the weight quantizer's quantize() disagrees with its forward()")
    return codes, effective, bias


def _rescale_to(codes: Codes, effective: torch.Tensor) -> Codes | None:
    """Binary / ternary codes whose scale is off by rounding (ADMM: W = G = alpha * Q, and projecting
    W again recomputes alpha as a float mean): take each channel's scale from ``effective`` itself
    when ``effective == scale * codes`` exactly. None when that is not possible."""
    if codes.kind not in ("sign", "binary", "ternary"):
        return None
    q = codes.codes.to(effective.dtype)
    if codes.axis is None:
        mag = effective.abs().max()
        scale = mag.reshape(())
        recon = scale * q
    else:
        mag = effective.abs().reshape(effective.shape[0], -1).max(dim=1).values
        scale = mag
        recon = mag.reshape([-1] + [1] * (effective.dim() - 1)) * q
    if not torch.equal(recon, effective):
        return None
    return codes._replace(scale=scale.to(codes.scale.dtype), kind="binary" if codes.kind == "sign" and
                          not bool((scale == 1).all()) else codes.kind)
