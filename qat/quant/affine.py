"""``qat_uint8``: affine uint8 quantization-aware training (Jacob et al. 2018, "Quantization and
Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference").

r = S (q - Z) with q in [0, 255]; weights per output channel (or per tensor), activations per tensor
from EMA min/max observers; BatchNorm folded into the conv weights (``QuantConvBn2d``).

Schedule, each a step count (int) or a fraction of all training steps (float in (0, 1]), or null:
- ``quant_delay``: observers only, no fake quantization, for the first steps;
- ``freeze_bn``: from then on BatchNorm uses its running statistics (the deployed folding);
- ``freeze_observers``: from then on the quantization ranges stop moving.
The flags live in buffers of the quantizers and layers, so checkpoints and DDP carry them.
"""

from __future__ import annotations

from torch import nn

from qat.quant.layers import QuantConvBn2d
from qat.quant.quantizers import AffineQuant
from qat.quant.recipe import QuantRecipe, check_started, check_total_steps


def check_when(value, what: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a step count, a fraction in (0, 1], or null; got {value!r}")
    if isinstance(value, float) and not 0 < value <= 1:
        raise ValueError(f"{what} as a fraction of training must be in (0, 1], got {value}; "
                         "write an integer for a step count")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{what} must be >= 0 steps, got {value}")
    return value


def fractions_of_training(**points) -> str | None:
    """Why a schedule needs the run's length (its points given as fractions), or None."""
    fractions = [f"{k}={v}" for k, v in points.items() if isinstance(v, float)]
    return f"{', '.join(fractions)} {'is a fraction' if len(fractions) == 1 else 'are fractions'} of training" \
        if fractions else None


def steps_at(value, total_steps: int) -> int | None:
    """A schedule point as a step count: fractions (floats) of ``total_steps``, step counts as they are."""
    if value is None:
        return None
    return int(round(value * total_steps)) if isinstance(value, float) else value


class QATUint8(QuantRecipe):
    name = "qat_uint8"
    fold_bn = True

    def __init__(self, per_channel: bool = True, ema_decay: float = 0.99, quant_delay=0,
                 freeze_bn=0.9, freeze_observers=0.95, **policies):
        super().__init__(**policies)
        self.per_channel = bool(per_channel)
        if not 0 < ema_decay < 1:
            raise ValueError(f"qat_uint8 ema_decay must be in (0, 1), got {ema_decay}")
        self.ema_decay = float(ema_decay)
        self.quant_delay = check_when(quant_delay, "quant_delay")
        self.freeze_bn = check_when(freeze_bn, "freeze_bn")
        self.freeze_observers = check_when(freeze_observers, "freeze_observers")
        self._steps: dict[str, int | None] = {}

    def weight_quantizer(self, layer):
        return AffineQuant(bits=8, per_channel=self.per_channel, axis=0, observer="current")

    def input_quantizer(self, layer):
        return AffineQuant(bits=8, per_channel=False, observer="ema", momentum=1 - self.ema_decay)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        self._apply(model, 0)
        return model

    def on_train_start(self, model, total_steps=None, step: int = 0) -> None:
        total = check_total_steps(self, total_steps, fractions_of_training(
            quant_delay=self.quant_delay, freeze_bn=self.freeze_bn, freeze_observers=self.freeze_observers))
        self._steps = {"quant": steps_at(self.quant_delay, total), "bn": steps_at(self.freeze_bn, total),
                       "obs": steps_at(self.freeze_observers, total)}
        self._started = True
        self._apply(model, int(step))

    def after_optimizer_step(self, model, step: int) -> None:
        check_started(self)
        self._apply(model, step)

    def _apply(self, model, step: int) -> None:
        s = self._steps or {"quant": self.quant_delay if isinstance(self.quant_delay, int) else None,
                            "bn": None, "obs": None}
        fq_on = s["quant"] is None or step >= s["quant"]
        bn_frozen = s["bn"] is not None and step >= s["bn"]
        obs_on = s["obs"] is None or step < s["obs"]
        for m in model.modules():
            if isinstance(m, AffineQuant):
                m.enable_fake_quant(fq_on)
                m.enable_observer(obs_on)
            elif isinstance(m, QuantConvBn2d):
                m.set_host("bn_frozen", bn_frozen)

    def describe(self) -> dict:
        return {**super().describe(), "per_channel": self.per_channel, "ema_decay": self.ema_decay,
                "quant_delay": self.quant_delay, "freeze_bn": self.freeze_bn,
                "freeze_observers": self.freeze_observers}
