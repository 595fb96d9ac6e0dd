"""Knowledge distillation from a trained teacher (Hinton, Vinyals & Dean 2015, "Distilling the
Knowledge in a Neural Network"), for every recipe: ``distill.teacher=CKPT``.

Loss, with student logits s, teacher logits t, temperature T and weight alpha::

    L = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

T^2 keeps the soft term's gradient on the scale of the hard term's as T changes (Hinton et al.,
section 2). The teacher is any qat checkpoint (typically the fp32 run on the same data), rebuilt
from the checkpoint alone with ``torch.load(weights_only=True)`` in its deployed form; it runs in
eval mode without gradients, and it is held outside the student's modules, so it is never in the
student's checkpoints or export (they store only the teacher's path, from which a resumed run
reloads it).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class Distillation:
    """``teacher``: path of a qat checkpoint, or None (plain cross-entropy); ``alpha`` in [0, 1]: the
    weight of the soft term; ``temperature`` > 0."""

    def __init__(self, teacher: str | None = None, alpha: float = 0.9, temperature: float = 4.0):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"distill.alpha must be in [0, 1] (the weight of the teacher's soft targets), got {alpha!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"distill.temperature must be a positive number, got {temperature!r}")
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.teacher_path = None if teacher in (None, "") else str(teacher)
        self.teacher: nn.Module | None = None
        self.teacher_meta: dict = {}
        if self.teacher_path is not None:
            self._load()

    @property
    def enabled(self) -> bool:
        return self.teacher is not None

    def _load(self) -> None:
        from qat.export.checkpoint import load_checkpoint  # the rebuild-from-checkpoint code, shared with export

        path = Path(self.teacher_path)
        if not path.is_file():
            raise FileNotFoundError(f"distill.teacher {path} does not exist; pass a checkpoint written by "
                                    f"python train.py (e.g. OUT/checkpoints/last.ckpt of the fp32 run)")
        restored = load_checkpoint(path)
        self.teacher = restored.model.eval()
        self.teacher.requires_grad_(False)
        self.teacher_meta = restored.meta

    def check_fits(self, data: dict) -> None:
        """The teacher must have been trained on data of the student's shape."""
        theirs = self.teacher_meta.get("data", {})
        for key in ("num_classes", "in_channels", "image_size"):
            if key in theirs and key in data and theirs[key] != data[key]:
                raise ValueError(f"distill.teacher {self.teacher_path} was trained with {key}={theirs[key]}, "
                                 f"but the data has {key}={data[key]}; use a teacher trained on this data")

    def to(self, device) -> "Distillation":
        if self.teacher is not None:
            self.teacher.to(device)
        return self

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()  # stays in eval mode whatever the student's trainer does
        return self.teacher(x)

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor):
        """(total loss, cross-entropy, soft term) for a batch."""
        ce = F.cross_entropy(student, target)
        t = self.temperature
        kd = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher.detach() / t, dim=1),
                      reduction="batchmean", log_target=True) * (t * t)
        return (1 - self.alpha) * ce + self.alpha * kd, ce, kd

    def describe(self) -> dict:
        return {"teacher": self.teacher_path, "alpha": self.alpha, "temperature": self.temperature}
