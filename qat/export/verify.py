"""Agreement between the fake-quant model and an export (the runtime, or onnxruntime).

``agreement`` is the fraction of inputs whose top-1 class is the same. The model runs under
:func:`qat.quant.layers.exact_accumulation`: layers with quantized inputs sum their products in
float64, as the export's integer accumulators do, so that the reference is the model's arithmetic
rather than one backend's float32 rounding order. ``agreement_float32`` compares with the plain
float32 evaluation as well. Each disagreement is listed with the model's own top-2 margin
(``logit[top1] - logit[top2]``), so a reader can check that it is a near-tie (the documented cause)
rather than an error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

from qat.quant.layers import QuantMixin, exact_accumulation
from qat.utils.io import atomic_write_text


def compare(model: torch.nn.Module, predict: Callable[[torch.Tensor], torch.Tensor],
            batches: Iterable[tuple[torch.Tensor, torch.Tensor]], keep: int = 20) -> dict:
    """Run ``model`` and ``predict`` on every ``(x, y)`` batch (``x`` float32 network input)."""
    return compare_many(model, {"export": predict}, batches, keep)["export"]


@torch.no_grad()
def compare_many(model: torch.nn.Module, predictors: dict[str, Callable[[torch.Tensor], torch.Tensor]],
                 batches: Iterable[tuple[torch.Tensor, torch.Tensor]], keep: int = 20) -> dict[str, dict]:
    """:func:`compare` for several predictors (the runtime, onnxruntime) in one pass over the data:
    the model runs once per batch for all of them."""
    model.eval()
    # without a quantized-input layer the two evaluations are one computation: run it once
    exact_differs = any(isinstance(m, QuantMixin) and m.input_quantized() for m in model.modules())
    n = model_correct = 0
    stats = {k: {"correct": 0, "same": 0, "same32": 0, "max_diff": 0.0, "seconds": 0.0, "examples": []}
             for k in predictors}
    for x, y in batches:
        with exact_accumulation():
            ref = model(x)
        p_ref = ref.argmax(1)
        p_ref32 = model(x).argmax(1) if exact_differs else p_ref
        model_correct += int((p_ref == y).sum())
        for name, predict in predictors.items():
            st = stats[name]
            t0 = time.perf_counter()
            out = predict(x)
            st["seconds"] += time.perf_counter() - t0
            p_out = out.argmax(1)
            st["correct"] += int((p_out == y).sum())
            agree = p_ref == p_out
            st["same"] += int(agree.sum())
            st["same32"] += int((p_ref32 == p_out).sum())
            st["max_diff"] = max(st["max_diff"], float((ref - out).abs().max()))
            for i in torch.nonzero(~agree).flatten().tolist():
                top2 = ref[i].topk(2).values
                if len(st["examples"]) < keep:
                    st["examples"].append({"index": n + i, "label": int(y[i]), "model": int(p_ref[i]),
                                           "export": int(p_out[i]), "model_margin": float(top2[0] - top2[1])})
        n += int(y.numel())
    if n == 0:
        raise ValueError("no data to verify the export on (empty test split?)")
    return {name: {"n": n, "acc": st["correct"] / n, "model_acc": model_correct / n, "agreement": st["same"] / n,
                   "agreement_float32": st["same32"] / n, "disagreements": n - st["same"],
                   "max_abs_logit_diff": st["max_diff"], "examples": st["examples"],
                   "images_per_s": n / st["seconds"] if st["seconds"] > 0 else float("inf")}
            for name, st in stats.items()}


def test_batches(datamodule, limit: int | None = None):
    """``(float input, labels)`` of the test split, preprocessed for evaluation."""
    for i, (x, y) in enumerate(datamodule.test_dataloader()):
        if limit is not None and i >= limit:
            break
        yield datamodule.preprocess(x, train=False), y


def write_report(folder: str | Path, report: dict) -> Path:
    """``verification.json`` next to the export (a report about it, not part of the artifact)."""
    path = Path(folder) / "verification.json"
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return path
