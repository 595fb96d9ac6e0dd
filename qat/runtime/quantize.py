"""Activation quantizers of the runtime: float32 tensor -> integer codes, and codes -> float32.

Each ``quantize`` spec in a manifest names a kind; the formulas are those of ``qat.quant.functional``
written out again here, op for op in float32, so that the runtime computes the codes the trained
model computed from the same float input (``tests/runtime`` checks this against the library):

* ``sign``:    ``+1`` if ``x >= 0`` (``-0.0`` too) else ``-1``.
* ``affine``:  ``clamp(round_half_even(x * fl(1/S)) + Z, qmin, qmax)``  (Jacob et al. 2018).
* ``linear``:  ``clamp(floor(x * 2^sf + 0.5), -2^(b-1), 2^(b-1) - 1)``.
* ``log``:     ``m = clamp(floor(log(|x| + 1e-20) * 2^sf + 0.5), -2^(b-2), 2^(b-2) - 1) + 2^(b-2)``,
  code ``m`` if ``x >= 0`` else ``~m`` (= ``-m - 1``).
* ``tanh``:    ``floor((tanh(x) + 1) / 2 * n + 0.5)``, ``n = 2^b - 1``.
* ``minmax``:  ``clamp(floor((x - vmin) / r * n + 0.5), 0, n)``, ``r = vmax - vmin`` (``n`` if
  ``r <= 0``); ``range: dynamic`` takes ``vmin, vmax`` = min and max of the whole input tensor.

Decoding (``dequantize``): ``scale * (code - zero_point)`` for sign / affine / linear / minmax
(``linear``: scale ``2^-sf``, zero point 0; ``minmax``: scale ``r / n``, real zero point
``-vmin / scale``), and for the non-uniform kinds::

    log:   m = code if code >= 0 else ~code;  value = +-exp((m - 2^(b-2)) * 2^-sf)   (sign of code)
    tanh:  value = atanh(clamp(2 code / n - 1, -(1 - e), 1 - e)),  e = 1 / (2n)

Exports also store these levels as a float32 codebook (for decoders without torch). torch evaluates
``exp`` and ``atanh`` with vectorised code for most elements of a tensor and scalar code for a
remainder, which can differ in the last bit; the runtime therefore evaluates the formula on tensors
of the model's own shapes, as the model's fake quantizer does, and matches it bit for bit.
"""

from __future__ import annotations

import torch

from qat.runtime.errors import FormatError

CODEBOOK_KINDS = ("log", "tanh")
KINDS = ("sign", "affine", "linear", "log", "tanh", "minmax")


def code_bounds(spec: dict) -> tuple[int, int]:
    """The range of codes a quantize spec produces."""
    kind, b = spec["kind"], int(spec["bits"])
    if kind == "sign":
        return -1, 1
    if kind == "affine":
        return int(spec["qmin"]), int(spec["qmax"])
    if kind in ("linear", "log"):
        return -(1 << (b - 1)), (1 << (b - 1)) - 1
    if kind in ("tanh", "minmax"):
        return 0, (1 << b) - 1
    raise FormatError(f"unknown quantizer kind {kind!r}; expected one of {KINDS}")


def code_dtype(lo: int, hi: int) -> torch.dtype:
    if lo >= -128 and hi <= 127:
        return torch.int8
    if lo >= 0 and hi <= 255:
        return torch.uint8
    if lo >= -(1 << 15) and hi < (1 << 15):
        return torch.int16
    return torch.int32


def _f32(v: float) -> torch.Tensor:
    return torch.tensor(float(v), dtype=torch.float32)


def _minmax_params(spec: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(vmin, r, scale, zero_point) as float32 0-d tensors, as ``_minmax_qparams`` computes them."""
    n = (1 << int(spec["bits"])) - 1
    if spec.get("range") == "dynamic":
        vmin, vmax = torch.aminmax(x)
    else:
        vmin, vmax = _f32(spec["vmin"]), _f32(spec["vmax"])
    r = vmax - vmin
    r = torch.where(r > 0, r, torch.full_like(r, n))
    scale = r / n
    return vmin, r, scale, -vmin / scale


def quantize(x: torch.Tensor, spec: dict) -> torch.Tensor:
    """Codes of float32 ``x`` under a manifest quantize spec (smallest integer dtype)."""
    if x.dtype != torch.float32:
        raise TypeError(f"quantize expects float32 input, got {x.dtype}")
    kind = spec["kind"]
    lo, hi = code_bounds(spec)
    dtype = code_dtype(lo, hi)
    if kind == "sign":
        return (x >= 0).to(dtype).mul_(2).sub_(1)
    if kind == "affine":
        s = _f32(spec["scale"])
        t = x.mul(1.0 / s).round_().add_(float(spec["zero_point"])).clamp_(lo, hi)
        return t.to(dtype)
    if kind == "linear":
        t = (x / 2.0 ** -int(spec["sf"])).add_(0.5).floor_().clamp_(lo, hi)
        return t.to(dtype)
    if kind == "log":
        b = int(spec["bits"])
        half = 1 << (b - 2)
        e = (torch.log(x.abs() + 1e-20) / 2.0 ** -int(spec["sf"])).add_(0.5).floor_().clamp_(-half, half - 1)
        m = e.add_(half).to(dtype)
        return torch.where(x >= 0, m, torch.bitwise_not(m))
    if kind == "tanh":
        n = (1 << int(spec["bits"])) - 1
        return torch.tanh(x).add_(1).div_(2).mul_(n).add_(0.5).floor_().to(dtype)
    if kind == "minmax":
        vmin, r, _, _ = _minmax_params(spec, x)
        return (x - vmin).div_(r).mul_(hi).add_(0.5).floor_().clamp_(0, hi).to(dtype)
    raise FormatError(f"unknown quantizer kind {kind!r}; expected one of {KINDS}")


def dequantize(codes: torch.Tensor, spec: dict, x: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 values of codes (what the trained model's fake quantizer outputs).

    ``x`` is the float input the codes came from; only ``minmax`` with a dynamic range needs it.
    """
    kind = spec["kind"]
    if kind == "log":
        neg = codes < 0
        m = torch.where(neg, torch.bitwise_not(codes), codes).to(torch.float32)
        mag = m.sub_(1 << (int(spec["bits"]) - 2)).mul_(2.0 ** -int(spec["sf"])).exp_()
        return torch.where(neg, -mag, mag)
    if kind == "tanh":
        n = (1 << int(spec["bits"])) - 1
        lim = 1.0 - 0.5 / n
        return codes.to(torch.float32).mul(2).div_(n).sub_(1).clamp_(-lim, lim).atanh_()
    c = codes.to(torch.float32)
    if kind == "sign":
        return c
    if kind == "affine":
        return _f32(spec["scale"]) * (c - float(spec["zero_point"]))
    if kind == "linear":
        return _f32(2.0 ** -int(spec["sf"])) * c
    if kind == "minmax":
        if spec.get("range") == "dynamic" and x is None:
            raise FormatError("dynamic-range minmax codes need their float input to decode")
        _, _, scale, zp = _minmax_params(spec, x)
        return scale * (c - zp)
    raise FormatError(f"unknown quantizer kind {kind!r}; expected one of {KINDS}")


def scale_and_zero_point(spec: dict) -> tuple[float, int]:
    """``(S, Z)`` of an integer-affine spec (sign, affine, linear): ``value = S * (code - Z)``."""
    kind = spec["kind"]
    if kind == "sign":
        return 1.0, 0
    if kind == "affine":
        return float(spec["scale"]), int(spec["zero_point"])
    if kind == "linear":
        return 2.0 ** -int(spec["sf"]), 0
    raise FormatError(f"{kind} codes have no integer zero point")
