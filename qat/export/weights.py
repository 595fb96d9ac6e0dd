"""Weight codes -> packed tensors and the manifest's ``weight`` entry.

Conv weights are stored in ``OHWI`` order (output channel, kernel row, kernel column, input channel:
the reduction runs over ``(kh, kw, c_in)`` with ``c_in`` fastest), linear weights in ``OI`` order, so a
row of the packing matrix is one output channel's whole reduction (``qat.runtime.packing``).
"""

from __future__ import annotations

import numpy as np
import torch

from qat.export.errors import ExportError
from qat.quant.functional import Codes
from qat.runtime.packing import code_range, pack_bits, pack_planes, pack_trits

LAYOUTS = {4: "OHWI", 2: "OI"}


def to_layout(t: torch.Tensor) -> np.ndarray:
    """OIHW -> OHWI (conv) or OI (linear) as a contiguous numpy array."""
    if t.dim() == 4:
        return t.permute(0, 2, 3, 1).contiguous().numpy()
    if t.dim() == 2:
        return t.contiguous().numpy()
    raise ExportError(f"weights of {t.dim()} dimensions do not export (expected conv or linear)")


def field_format(codes: Codes) -> tuple[int, str]:
    """(bits, values) of the packed fields for these codes."""
    kind, bits = codes.kind, int(codes.bits)
    if kind in ("sign", "binary"):
        return 1, "sign"
    if kind == "ternary":
        return 2, "signed"
    lo = int(codes.codes.min())
    if kind in ("linear", "log"):
        return bits, "signed"
    if kind in ("tanh", "minmax"):
        return bits, "unsigned"
    if kind == "affine":
        values = "unsigned" if lo >= 0 else "signed"
        if lo < 0 and bits < 2:
            raise ExportError("1-bit signed affine weights do not export")
        return bits, values
    raise ExportError(f"weight codes of kind {kind!r} do not export")


def encode(prefix: str, codes: Codes | None, effective: torch.Tensor, ternary_packing: str,
           codebook: np.ndarray | None) -> tuple[dict, dict[str, np.ndarray]]:
    """``(weight spec, tensors)`` for one layer's weights."""
    layout = LAYOUTS.get(effective.dim())
    if layout is None:
        raise ExportError(f"{prefix}: weights of {effective.dim()} dimensions do not export")
    tensors: dict[str, np.ndarray] = {}
    if codes is None:
        arr = to_layout(effective.to(torch.float32))
        tensors[f"{prefix}.weight"] = arr
        return {"tensor": f"{prefix}.weight", "kind": "float", "encoding": "float32", "layout": layout,
                "shape": list(arr.shape)}, tensors
    arr = to_layout(codes.codes.to(torch.int64))
    bits, values = field_format(codes)
    lo, hi = code_range(bits, values)
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise ExportError(f"{prefix}: weight codes span [{arr.min()}, {arr.max()}], outside {bits}-bit "
                          f"{values} fields")
    spec = {"tensor": f"{prefix}.weight", "kind": codes.kind, "layout": layout, "shape": list(arr.shape),
            "bits": bits, "values": values}
    if codes.kind == "ternary" and ternary_packing == "trits":
        spec["encoding"] = "trits"
        tensors[spec["tensor"]] = pack_trits(arr)
    elif codes.kind == "ternary" and ternary_packing == "planes":  # what a ternary_popcount kernel reads
        spec["encoding"] = "planes"
        tensors[spec["tensor"]] = pack_planes(arr)
    else:
        spec["encoding"] = "bits"
        tensors[spec["tensor"]] = pack_bits(arr, bits, values)
    if codes.kind in ("log", "tanh"):
        if codebook is None:
            raise ExportError(f"{prefix}: {codes.kind} weights need a codebook")
        spec["codebook"] = f"{prefix}.weight_codebook"
        tensors[spec["codebook"]] = codebook.astype(np.float32)
        if codes.kind == "log":  # scale = 2^-sf
            sf = -np.log2(float(codes.scale))
            if sf != round(sf):
                raise ExportError(f"{prefix}: log weight scale {float(codes.scale)} is not a power of two")
            spec["sf"] = int(round(sf))
        return spec, tensors
    if codes.kind == "sign":  # scale 1, zero point 0 by definition
        return spec, tensors
    per_channel = codes.axis is not None and codes.scale.dim() == 1
    if codes.axis not in (None, 0):
        raise ExportError(f"{prefix}: weight scales along axis {codes.axis} do not export (need axis 0)")
    spec["axis"] = 0 if per_channel else None
    spec["scale"] = f"{prefix}.weight_scale"
    tensors[spec["scale"]] = codes.scale.detach().to(torch.float32).reshape(-1 if per_channel else ()).numpy()
    zp = codes.zero_point.detach()
    spec["zero_point"] = f"{prefix}.weight_zero_point"
    if codes.kind == "minmax":  # real-valued zero point
        tensors[spec["zero_point"]] = zp.to(torch.float32).reshape(-1 if per_channel else ()).numpy()
    else:
        if zp.is_floating_point() and not bool((zp == zp.round()).all()):
            raise ExportError(f"{prefix}: {codes.kind} weights with a non-integer zero point")
        tensors[spec["zero_point"]] = zp.to(torch.int32).reshape(-1 if per_channel else ()).numpy()
    return spec, tensors


def weight_codebook(codes: Codes) -> np.ndarray | None:
    """Decoded value of every possible code for codebook kinds (log, tanh)."""
    if codes is None or codes.kind not in ("log", "tanh"):
        return None
    from qat.export.quantspec import codebook

    bits, values = field_format(codes)
    lo, hi = code_range(bits, values)
    return codebook(codes, lo, hi)
