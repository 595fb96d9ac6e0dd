"""``torch_ao_qat``: torch.ao's eager-mode QAT, as a baseline to compare ``qat_uint8`` with.

Conv-BN(-ReLU) groups found on the traced graph are fused with ``fuse_modules_qat``, the default
QAT qconfig of the backend (fbgemm: per-channel weights, histogram-free moving-average observers) is
attached, and ``prepare_qat`` swaps the modules; BN statistics and observers freeze on the same
schedule as ``qat_uint8``. It trains and tests like any recipe; qat's integer export does not read
torch.ao's modules (use torch.ao's own ``convert``).
"""

from __future__ import annotations

import torch
from torch import nn

from qat.quant.affine import check_when, fractions_of_training, steps_at
from qat.quant.recipe import Recipe, check_started, check_total_steps


def fusion_groups(model: nn.Module) -> list[list[str]]:
    """[conv, bn] or [conv, bn, relu] module-name groups where each feeds only the next."""
    modules = dict(model.named_modules())
    graph = torch.fx.symbolic_trace(model).graph
    groups = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules.get(node.target)) is not nn.Conv2d or len(node.users) != 1:
            continue
        bn = next(iter(node.users))
        if bn.op != "call_module" or not isinstance(modules.get(bn.target), nn.BatchNorm2d):
            continue
        group = [node.target, bn.target]
        if len(bn.users) == 1:
            act = next(iter(bn.users))
            if act.op == "call_module" and isinstance(modules.get(act.target), nn.ReLU):
                group.append(act.target)
        groups.append(group)
    return groups


class TorchAOQAT(Recipe):
    name = "torch_ao_qat"
    quantized = True
    exportable = False
    # torch.ao's FakeQuantize kernels take float32 only ("expected scalar type Float but found BFloat16").
    mixed_precision = False

    def __init__(self, backend: str = "fbgemm", freeze_bn=0.9, freeze_observers=0.95):
        if backend not in ("fbgemm", "x86", "qnnpack"):
            raise ValueError(f"torch_ao_qat backend must be fbgemm, x86 or qnnpack, got {backend!r}")
        self.backend = backend
        self.freeze_bn = check_when(freeze_bn, "freeze_bn")
        self.freeze_observers = check_when(freeze_observers, "freeze_observers")
        self._steps: dict[str, int | None] = {}
        self._done: dict[str, bool] = {}

    def prepare(self, model: nn.Module) -> nn.Module:
        import torch.ao.quantization as tq

        model.train()
        groups = fusion_groups(model)
        if groups:
            model = tq.fuse_modules_qat(model, groups)
        model.qconfig = tq.get_default_qat_qconfig(self.backend)
        return tq.prepare_qat(model)

    def on_train_start(self, model, total_steps=None, step: int = 0) -> None:
        total = check_total_steps(self, total_steps, fractions_of_training(
            freeze_bn=self.freeze_bn, freeze_observers=self.freeze_observers))
        self._steps = {"bn": steps_at(self.freeze_bn, total), "obs": steps_at(self.freeze_observers, total)}
        self._started = True
        self.after_optimizer_step(model, int(step))

    def after_optimizer_step(self, model, step: int) -> None:
        check_started(self)
        # torch.ao keeps these switches in plain attributes, not buffers: on_train_start re-applies
        # them after a resume.
        import torch.ao.nn.intrinsic.qat as nniqat
        import torch.ao.quantization as tq

        bn, obs = self._steps.get("bn"), self._steps.get("obs")
        if bn is not None and step >= bn and not self._done.get("bn"):
            model.apply(nniqat.freeze_bn_stats)
            self._done["bn"] = True
        if obs is not None and step >= obs and not self._done.get("obs"):
            model.apply(tq.disable_observer)
            self._done["obs"] = True

    def describe(self) -> dict:
        return {"name": self.name, "backend": self.backend, "freeze_bn": self.freeze_bn,
                "freeze_observers": self.freeze_observers}
