"""``nn.Module`` quantizers: thin stateful wrappers over :mod:`qat.quant.functional`.

The math (forward, backward, paper) of each quantizer is documented on the
function it calls; this file adds only state and policy:

* ``forward(x)`` returns the fake-quantized float tensor (differentiable).
* ``quantize(x)`` returns :class:`~qat.quant.functional.Codes` (integer codes,
  scale, zero point, bits, axis, kind); ``quantize(x).dequantize()`` equals
  ``forward(x)`` bit for bit for float32 input when no state is updated
  (eval mode, or observers disabled). It never changes state.
* ``bits`` (int, 32 for :class:`Identity`) and ``kind`` (str, the
  ``Codes.kind`` it emits, except 1-bit cases which emit their sign codes).
* Every stateful value is a registered buffer, so ``state_dict`` round trips
  and DDP broadcasts restore it. Switches and counters that ``forward``
  branches on have Python mirrors (:mod:`qat.quant.host_state`).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from . import functional as QF
from .functional import Codes
from .host_state import HostState

__all__ = [
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
    "QUANTIZERS",
]


class Quantizer(HostState, nn.Module):
    """Base class: ``forward`` fake-quantizes, ``quantize`` returns :class:`Codes`."""

    kind: str = "quantizer"
    bits: int = 32

    def quantize(self, x: Tensor) -> Codes:  # pragma: no cover - abstract
        raise NotImplementedError


def _zero_codes(x: Tensor) -> Tuple[Tensor, Tensor]:
    return (torch.ones((), device=x.device),
            torch.zeros((), dtype=torch.int32, device=x.device))


class Identity(Quantizer):
    """No quantization (``bits = 32``): ``forward`` returns ``x`` itself, so a
    quantized layer with Identity quantizers equals the plain torch layer."""

    kind = "identity"
    bits = 32

    def forward(self, x: Tensor) -> Tensor:
        return x

    def quantize(self, x: Tensor) -> Codes:
        """``Codes`` whose ``codes`` is the float tensor itself (kind ``identity``)."""
        return Codes(x, *_zero_codes(x), 32, None, "identity")


# --------------------------------------------------------------------------- #
# Fixed point with data-calibrated scale factor (pytorch-playground style)
# --------------------------------------------------------------------------- #
class _ScaleFactorQuant(Quantizer):
    """Shared policy for quantizers with a power-of-two step ``2**-sf``.

    ``calibrate``:
      * ``"once"`` (default when ``sf is None``; for activations): during the
        first ``calib_batches`` training-mode forwards, ``sf`` is computed with
        :func:`~qat.quant.functional.overflow_sf` and the minimum over those
        batches is kept (as pytorch-playground's ``quantize.py``), quantizing
        with the running value meanwhile. Eval-mode calls before calibration
        use the batch's own ``sf`` and store nothing.
      * ``"always"`` (for weights): recompute ``sf`` from ``x`` on every call;
        training calls store it so ``quantize``/export sees the last value.
      * ``"never"`` (default when ``sf`` is given): fixed ``sf``.

    Buffers: ``sf`` (int64), ``num_calibrated`` (int64, batches used so far).
    """

    _min_bits = 1

    def __init__(self, bits: int, sf: Optional[int] = None, overflow_rate: float = 0.0,
                 calibrate: Optional[str] = None, calib_batches: int = 1) -> None:
        super().__init__()
        name = type(self).__name__
        QF._check_bits(bits, name)
        if self._min_bits > 1 and 1 < bits < self._min_bits:
            raise ValueError(f"{name}: bits must be 1 or >= {self._min_bits}, got {bits}")
        QF._check_rate(overflow_rate, name)
        if sf is not None and (isinstance(sf, bool) or not isinstance(sf, int)):
            raise ValueError(f"{name}: sf (fractional bits) must be an int or None, got {sf!r}")
        if calibrate is None:
            calibrate = "never" if sf is not None else "once"
        if calibrate not in ("once", "always", "never"):
            raise ValueError(f"{name}: calibrate must be 'once', 'always' or 'never', "
                             f"got {calibrate!r}")
        if sf is not None and calibrate != "never":
            raise ValueError(f"{name}: sf={sf} is fixed but calibrate={calibrate!r}; pass "
                             f"sf=None to calibrate from data, or calibrate='never'")
        if sf is None and calibrate == "never":
            raise ValueError(f"{name}: calibrate='never' needs a fixed sf=<int>")
        if isinstance(calib_batches, bool) or not isinstance(calib_batches, int) \
                or calib_batches < 1:
            raise ValueError(f"{name}: calib_batches must be an int >= 1, got {calib_batches!r}")
        self.bits = bits
        self.overflow_rate = float(overflow_rate)
        self.calibrate = calibrate
        self.calib_batches = calib_batches
        self.register_buffer("sf", torch.tensor(0 if sf is None else sf, dtype=torch.int64))
        self.register_host_buffer("num_calibrated", 0 if sf is None else calib_batches, torch.int64)

    def _calibrate(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def _current_sf(self, x: Tensor, update: bool) -> Tensor:
        if self.calibrate == "never":
            return self.sf
        if self.calibrate == "always":
            sf = self._calibrate(x)
            if update:
                self.sf.copy_(sf)
            return sf
        done = self.host("num_calibrated")
        if done >= self.calib_batches:
            return self.sf
        sf = self._calibrate(x)
        if not update:
            return sf
        if done == 0:
            self.sf.copy_(sf)
        else:
            torch.minimum(self.sf, sf.to(self.sf.device), out=self.sf)
        self.set_host("num_calibrated", done + 1)
        return self.sf

    def extra_repr(self) -> str:
        s = f"bits={self.bits}, calibrate={self.calibrate!r}"
        if self.calibrate == "never":
            return s + f", sf={int(self.sf)}"
        return s + f", overflow_rate={self.overflow_rate}, calib_batches={self.calib_batches}"


class LinearQuant(_ScaleFactorQuant):
    """Fixed-point quantizer :func:`~qat.quant.functional.linear_quantize`
    (step ``2**-sf``, ``bits`` signed levels; STE backward).

    Codes: ints in ``[-2^(bits-1), 2^(bits-1) - 1]``, ``scale = 2**-sf``,
    ``zero_point = 0``. ``bits == 1`` is ``sign0`` with codes ``{-1, +1}``.
    """

    kind = "linear"

    def _calibrate(self, x: Tensor) -> Tensor:
        return QF._overflow_sf_tensor(x, self.bits, self.overflow_rate)

    def forward(self, x: Tensor) -> Tensor:
        if self.bits == 1:
            return QF.linear_quantize(x, 0, 1)
        return QF.linear_quantize(x, self._current_sf(x, self.training), self.bits)

    def quantize(self, x: Tensor) -> Codes:
        sf = 0 if self.bits == 1 else self._current_sf(x, False)
        return QF.linear_quantize_codes(x, sf, self.bits)


class LogQuant(_ScaleFactorQuant):
    """Logarithmic quantizer :func:`~qat.quant.functional.log_linear_quantize`
    (1 sign bit + ``bits - 1`` exponent bits; STE backward).

    ``sf`` is calibrated on ``log|x|`` with the exponent width ``bits - 1``
    (exact zeros count as log-magnitude 0 so they do not set the range). The
    reference (pytorch-playground ``quantize.py``) calibrated with ``bits``
    while quantizing with ``bits - 1``, clipping half of the log range.

    ``bits`` must be 1 (sign) or >= 3. Codes: kind ``log`` (see
    :class:`~qat.quant.functional.Codes`): ``code = m`` or ``~m`` by sign,
    ``value = ±exp(scale * (m - zero_point))``, ``scale = 2**-sf``,
    ``zero_point = 2^(bits-2)``.
    """

    kind = "log"
    _min_bits = 3

    def _calibrate(self, x: Tensor) -> Tensor:
        a = x.detach().abs()
        la = torch.where(a > 0, a.log(), torch.zeros_like(a))
        return QF._overflow_sf_tensor(la, self.bits - 1, self.overflow_rate)

    def forward(self, x: Tensor) -> Tensor:
        if self.bits == 1:
            return QF.log_linear_quantize(x, 0, 1)
        return QF.log_linear_quantize(x, self._current_sf(x, self.training), self.bits)

    def quantize(self, x: Tensor) -> Codes:
        sf = 0 if self.bits == 1 else self._current_sf(x, False)
        return QF.log_linear_quantize_codes(x, sf, self.bits)


class TanhQuant(Quantizer):
    """Tanh-space quantizer :func:`~qat.quant.functional.tanh_quantize`
    (stateless; STE backward). Codes: kind ``tanh``, levels ``k`` in
    ``[0, 2**bits - 1]``, ``value = atanh(clamp(2k/n - 1, ±(1 - tanh_eps(bits))))``."""

    kind = "tanh"

    def __init__(self, bits: int) -> None:
        super().__init__()
        QF._check_bits(bits, "TanhQuant")
        self.bits = bits

    def forward(self, x: Tensor) -> Tensor:
        return QF.tanh_quantize(x, self.bits)

    def quantize(self, x: Tensor) -> Codes:
        return QF.tanh_quantize_codes(x, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


# --------------------------------------------------------------------------- #
# Range observers (min-max and integer-affine)
# --------------------------------------------------------------------------- #
_OBSERVERS = ("ema", "minmax", "current")


class _RangeObserved(Quantizer):
    """Running range in buffers ``min_val`` / ``max_val``.

    ``observer``:
      * ``"ema"``: ``v <- v + c * (batch_v - v)`` (torch.ao
        ``MovingAverage*MinMaxObserver``; first batch copied).
      * ``"minmax"``: running extrema over all batches seen (torch.ao ``MinMaxObserver``).
      * ``"current"``: the tensor's own range on every call (what a weight
        quantizer wants); in eval mode it is used without being stored.

    Buffers start empty (shape ``(0,)``) and take their shape (0-d, or
    ``(C,)`` per channel) in place at the first observation, so DDP keeps
    the same tensor objects; ``load_state_dict`` resizes them to match.
    Statistics update only in training mode. Before any observation, the
    tensor's own range is used (and not stored).
    """

    def _init_range(self, observer: str, averaging_constant: float) -> None:
        name = type(self).__name__
        if observer not in _OBSERVERS:
            raise ValueError(f"{name}: observer must be one of {_OBSERVERS}, got {observer!r}")
        if not (isinstance(averaging_constant, (int, float)) and 0 < averaging_constant <= 1):
            raise ValueError(f"{name}: averaging_constant (EMA momentum) must be in (0, 1], "
                             f"got {averaging_constant!r}")
        self.observer = observer
        self.averaging_constant = float(averaging_constant)
        self.register_buffer("min_val", torch.empty(0))
        self.register_buffer("max_val", torch.empty(0))

    def _range_axis(self, x: Tensor) -> Optional[int]:
        return None

    def _data_range(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        x = x.detach()
        axis = self._range_axis(x)
        if axis is None:
            return torch.aminmax(x)
        if axis == 0 and x.is_contiguous():
            return torch.aminmax(x.reshape(x.shape[0], -1), dim=1)
        dims = [d for d in range(x.dim()) if d != axis]
        return torch.amin(x, dim=dims), torch.amax(x, dim=dims)

    @torch.no_grad()
    def _observe(self, x: Tensor) -> None:
        lo, hi = self._data_range(x)
        lo = lo.to(self.min_val.dtype)
        hi = hi.to(self.max_val.dtype)
        if self.min_val.numel() == 0 or self.observer == "current":
            if self.min_val.shape != lo.shape:
                self.min_val.resize_(lo.shape)
                self.max_val.resize_(hi.shape)
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
        elif self.observer == "ema":
            c = self.averaging_constant
            self.min_val.add_(lo.sub_(self.min_val).mul_(c))
            self.max_val.add_(hi.sub_(self.max_val).mul_(c))
        else:
            torch.minimum(self.min_val, lo, out=self.min_val)
            torch.maximum(self.max_val, hi, out=self.max_val)

    def _observer_on(self) -> bool:
        return True

    def _range(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if self.min_val.numel() == 0 or (
                self.observer == "current" and not self.training and self._observer_on()):
            return self._data_range(x)
        return self.min_val, self.max_val

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        for name in ("min_val", "max_val"):
            src = state_dict.get(prefix + name)
            own = getattr(self, name)
            if src is not None and src.shape != own.shape:
                with torch.no_grad():
                    own.resize_(src.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)


class MinMaxQuant(_RangeObserved):
    """Min-max quantizer :func:`~qat.quant.functional.minmax_quantize`
    (per tensor, all ``2**bits`` levels; STE backward).

    ``observer="current"`` (default, the reference's behaviour, for weights)
    uses each tensor's own min/max; ``"ema"``/``"minmax"`` track a running
    range for activations. Buffers: ``min_val``, ``max_val``.
    Codes: ``q`` in ``[0, 2**bits - 1]``, ``scale = (vmax - vmin)/(2**bits - 1)``,
    real-valued ``zero_point = -vmin / scale`` (kind ``minmax``).
    """

    kind = "minmax"

    def __init__(self, bits: int, observer: str = "current",
                 averaging_constant: float = 0.01) -> None:
        super().__init__()
        QF._check_bits(bits, "MinMaxQuant")
        self.bits = bits
        self._init_range(observer, averaging_constant)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self._observe(x)
        lo, hi = self._range(x)
        return QF.minmax_quantize(x, self.bits, lo, hi)

    def quantize(self, x: Tensor) -> Codes:
        lo, hi = self._range(x)
        return QF.minmax_quantize_codes(x, self.bits, lo, hi)

    def extra_repr(self) -> str:
        s = f"bits={self.bits}, observer={self.observer!r}"
        return s + (f", averaging_constant={self.averaging_constant}"
                    if self.observer == "ema" else "")


class AffineQuant(_RangeObserved):
    """Integer-affine fake quantizer for uint8 QAT (Jacob et al. 2018), via
    :func:`~qat.quant.functional.choose_qparams` and
    :func:`~qat.quant.functional.fake_quantize_affine` (STE masked outside the
    representable range; round half to even).

    * ``symmetric=False``: codes ``[0, 2**bits - 1]``, integer zero point
      (real 0 exact). ``symmetric=True``: codes
      ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]``, ``zero_point = 0`` (TFLite-style
      restricted range for weights).
    * ``per_channel``: one scale/zero point per index of ``axis`` (0 for
      weights; 1 for NCHW activations).
    * ``observer``: ``"ema"`` (default, ``averaging_constant`` = momentum
      0.01), ``"minmax"`` or ``"current"``.

    Buffers: ``min_val``, ``max_val`` (float32), ``observer_enabled``,
    ``fake_quant_enabled`` (uint8 0/1). The observer runs only in training
    mode and only if enabled; with fake quant disabled ``forward`` returns
    ``x`` itself (quantization delay: observe only). Flags are read on the
    host through :mod:`qat.quant.host_state`, not with a sync per call.

    Codes: kind ``affine``, ``codes`` uint8 (int8 if symmetric and bits <= 8),
    ``scale`` float32, ``zero_point`` int32 (0-d, or ``(C,)`` with ``axis``).
    """

    kind = "affine"

    def __init__(self, bits: int = 8, per_channel: bool = True, axis: int = 0,
                 observer: str = "ema", averaging_constant: float = 0.01,
                 symmetric: bool = False, momentum: Optional[float] = None) -> None:
        super().__init__()
        QF._check_bits(bits, "AffineQuant", lo=2 if symmetric else 1)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"AffineQuant: axis must be an int, got {axis!r}")
        if momentum is not None:  # alias
            averaging_constant = momentum
        self.bits = bits
        self.per_channel = bool(per_channel)
        self.axis = axis
        self.symmetric = bool(symmetric)
        if self.symmetric:
            self.qmin, self.qmax = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        else:
            self.qmin, self.qmax = 0, 2 ** bits - 1
        self._init_range(observer, averaging_constant)
        self.register_host_buffer("observer_enabled", 1, torch.uint8)
        self.register_host_buffer("fake_quant_enabled", 1, torch.uint8)

    # -- switches (buffers, so they survive checkpoints and DDP) -------------
    def enable_observer(self, enabled: bool = True) -> "AffineQuant":
        self.set_host("observer_enabled", enabled)
        return self

    def disable_observer(self) -> "AffineQuant":
        return self.enable_observer(False)

    def enable_fake_quant(self, enabled: bool = True) -> "AffineQuant":
        self.set_host("fake_quant_enabled", enabled)
        return self

    def disable_fake_quant(self) -> "AffineQuant":
        return self.enable_fake_quant(False)

    def _observer_on(self) -> bool:
        return bool(self.host("observer_enabled"))

    def _range_axis(self, x: Tensor) -> Optional[int]:
        if not self.per_channel:
            return None
        if not -x.dim() <= self.axis < x.dim():
            raise ValueError(f"AffineQuant: axis={self.axis} is out of range for a "
                             f"{x.dim()}-d input; set axis to the channel dim")
        return self.axis % x.dim()

    def _qparams(self, lo: Tensor, hi: Tensor) -> Tuple[Tensor, Tensor]:
        return QF.choose_qparams(lo, hi, self.qmin, self.qmax, self.symmetric)

    def calculate_qparams(self) -> Tuple[Tensor, Tensor]:
        """``(scale, zero_point)`` from the observed range."""
        if self.min_val.numel() == 0:
            raise RuntimeError("AffineQuant: nothing observed yet; run training-mode "
                               "forwards (or load a checkpoint) first")
        return self._qparams(self.min_val, self.max_val)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self._observer_on():
            self._observe(x)
        if not self.host("fake_quant_enabled"):
            return x
        scale, zp = self._qparams(*self._range(x))
        return QF.fake_quantize_affine(x, scale, zp, self.qmin, self.qmax, self._range_axis(x))

    def quantize(self, x: Tensor) -> Codes:
        scale, zp = self._qparams(*self._range(x))
        axis = self._range_axis(x)
        codes = QF.quantize_affine(x, scale, zp, self.qmin, self.qmax, axis)
        return Codes(codes, scale, zp, self.bits, axis, "affine")

    def extra_repr(self) -> str:
        s = (f"bits={self.bits}, qmin={self.qmin}, qmax={self.qmax}, "
             f"per_channel={self.per_channel}")
        if self.per_channel:
            s += f", axis={self.axis}"
        s += f", symmetric={self.symmetric}, observer={self.observer!r}"
        if self.observer == "ema":
            s += f", averaging_constant={self.averaging_constant}"
        return s


# --------------------------------------------------------------------------- #
# Binary and ternary
# --------------------------------------------------------------------------- #
class SignQuant(Quantizer):
    """BNN binarization :func:`~qat.quant.functional.sign_ste` (activations or
    weights; STE with cancellation ``1[|x| <= 1]``).

    ``stochastic=True`` uses :func:`~qat.quant.functional.stochastic_sign_ste`
    in training mode only; eval and ``quantize`` are deterministic. ``grad="approx"`` uses
    :func:`~qat.quant.functional.approx_sign` (Bi-Real's ApproxSign gradient; same forward).
    Codes: ``{-1, +1}`` int8, ``scale = 1``, ``zero_point = 0`` (kind ``sign``).
    """

    kind = "sign"
    bits = 1
    GRADIENTS = ("ste", "approx")

    def __init__(self, stochastic: bool = False, grad: str = "ste") -> None:
        super().__init__()
        if grad not in self.GRADIENTS:
            raise ValueError(f"SignQuant: grad must be one of {self.GRADIENTS} ('approx' is Bi-Real's "
                             f"ApproxSign), got {grad!r}")
        if stochastic and grad != "ste":
            raise ValueError("SignQuant: stochastic binarization has the straight-through gradient only; "
                             "use grad='ste' with stochastic=True")
        self.stochastic = bool(stochastic)
        self.grad = grad

    def forward(self, x: Tensor) -> Tensor:
        if self.stochastic and self.training:
            return QF.stochastic_sign_ste(x)
        if self.grad == "approx":
            return QF.approx_sign(x)
        return QF.sign_ste(x)

    def quantize(self, x: Tensor) -> Codes:
        return QF.sign_codes(x)

    def extra_repr(self) -> str:
        return f"stochastic={self.stochastic}" + (f", grad={self.grad!r}" if self.grad != "ste" else "")


class BinaryWeightQuant(Quantizer):
    """XNOR-Net BWN weights :func:`~qat.quant.functional.binary_weight`:
    ``alpha_c * sign0(W)`` with ``alpha_c = mean|W_c|`` per output channel.
    Codes: ``{-1, +1}`` int8, ``scale = alpha`` ``(C,)``, ``axis = 0`` (kind ``binary``)."""

    kind = "binary"
    bits = 1

    def forward(self, x: Tensor) -> Tensor:
        return QF.binary_weight(x)

    def quantize(self, x: Tensor) -> Codes:
        return QF.binary_weight_codes(x)


class TernaryQuant(Quantizer):
    """Ternary weights ``alpha * Q``, ``Q in {-1, 0, 1}``, STE backward.

    ``method="twn"`` (default): :func:`~qat.quant.functional.twn_quantize`
    (threshold ``threshold * mean|W|``). ``method="admm"``: the optimal
    projection :func:`~qat.quant.functional.ternary_projection` (a few host
    syncs per call; for weights). ``per_channel`` computes alpha per output
    channel (dim 0). Codes: int8 ``Q``, ``scale = alpha`` (kind ``ternary``).
    """

    kind = "ternary"
    bits = 2

    def __init__(self, per_channel: bool = False, threshold: float = 0.7,
                 method: str = "twn") -> None:
        super().__init__()
        if method not in ("twn", "admm"):
            raise ValueError(f"TernaryQuant: method must be 'twn' or 'admm', got {method!r}")
        if not (isinstance(threshold, (int, float)) and threshold > 0):
            raise ValueError(f"TernaryQuant: threshold (fraction of mean|W|) must be > 0, "
                             f"got {threshold!r}; TWN uses 0.7")
        self.per_channel = bool(per_channel)
        self.threshold = float(threshold)
        self.method = method

    def forward(self, x: Tensor) -> Tensor:
        if self.method == "admm":
            return QF.ternary_projection_quantize(x, self.per_channel)
        return QF.twn_quantize(x, self.per_channel, self.threshold)

    def quantize(self, x: Tensor) -> Codes:
        return QF.ternary_quantize_codes(x, self.per_channel, self.threshold, self.method)

    def extra_repr(self) -> str:
        s = f"method={self.method!r}, per_channel={self.per_channel}"
        return s + (f", threshold={self.threshold}" if self.method == "twn" else "")


#: ``kind`` -> class, for config-driven construction.
QUANTIZERS = {
    cls.kind: cls
    for cls in (Identity, LinearQuant, LogQuant, TanhQuant, MinMaxQuant, SignQuant,
                BinaryWeightQuant, TernaryQuant, AffineQuant)
}
