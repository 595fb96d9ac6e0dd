"""``export_model``: a prepared (quantized) model -> an export folder.

Folder contents: ``manifest.json`` (format version, recipe, model and data facts, input normalisation,
the ordered operations with shapes and parameters, a table of every tensor with its SHA-256),
``tensors.safetensors`` (packed weight codes, scales, zero points, biases, thresholds, requantization
constants), ``summary.md``, ``SHA256SUMS``, and for integer-affine models ``model.onnx``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import qat
from qat.export import c as c_program, summary as summary_md
from qat.export.errors import ExportError
from qat.export.lower import LayerInfo, Lowering
from qat.export.trace import trace
from qat.export.writer import core_files, write_folder
from qat.runtime.artifact import FORMAT, FORMAT_VERSION, MANIFEST, TENSORS
from qat.runtime.program import Program

log = logging.getLogger(__name__)

SUMMARY = "summary.md"
ONNX = "model.onnx"
_QUANT_STATE = ("weight_quant.", "input_quant.")


@dataclass
class ExportResult:
    folder: Path
    manifest: dict
    tensors: dict[str, np.ndarray]
    layers: list[LayerInfo]
    size_bytes: int                    # manifest.json + tensors.safetensors
    fp32_bytes: int                    # the float model's state_dict in fp32
    files: dict[str, int] = field(default_factory=dict)
    onnx: Path | None = None

    @property
    def compression(self) -> float:
        return self.fp32_bytes / self.size_bytes

    def program(self) -> Program:
        return Program(self.manifest, self.tensors)


def fp32_state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the float model's state_dict: every parameter and buffer of the prepared model except
    quantizer state (observer ranges, ADMM's G and U, flags), floats counted as float32."""
    total = 0
    for name, t in model.state_dict().items():
        if any(p in name for p in _QUANT_STATE) or name.endswith("bn_frozen"):
            continue
        total += t.numel() * (4 if t.is_floating_point() else t.element_size())
    return total


def plain_copy(model: nn.Module) -> nn.Module:
    """A CPU eval-mode copy made outside inference mode: Lightning tests under
    ``torch.inference_mode``, and inference tensors have no version counter (which the quantizers
    read) and cannot be updated."""
    with torch.inference_mode(False):
        return copy.deepcopy(model).cpu().eval()


def is_quantized(model: nn.Module) -> bool:
    from qat.quant.layers import QuantMixin

    return any(isinstance(m, QuantMixin) for m in model.modules())


def export_model(model: nn.Module, out_dir: str | Path, *, input_shape: tuple[int, int, int],
                 normalization: dict, recipe=None, meta: dict | None = None,
                 ternary_packing: str = "bits", onnx: bool | None = None, onnx_form: str = "exact") -> ExportResult:
    """Export ``model`` (prepared, in its deployed form: ``recipe.finalize`` already applied).

    ``input_shape`` is ``(C, H, W)``; ``normalization`` holds the per-channel ``mean`` and ``std`` that
    map uint8 pixels to the model's input. ``onnx``: also write ``model.onnx`` (None: when the model
    is integer-affine, i.e. qat_uint8). ``onnx_form``: ``"exact"``, the runtime's integer arithmetic
    (``qat.export.onnx_export``), or ``"qdq"``, the layout onnxruntime fuses into ``QLinearConv``
    (faster, further from the model: ``qat.export.onnx_qdq``).
    """
    if onnx_form not in ("exact", "qdq"):
        raise ValueError(f"onnx_form must be 'exact' or 'qdq', got {onnx_form!r}")
    if not is_quantized(model):
        raise ExportError("the model has no quantized layer (quant=fp32?): there is nothing to export as "
                          "integers; train with a quantized recipe (bnn, bwn, twn, admm_ternary, qat_uint8, "
                          "linear, log, tanh, int)")
    model = plain_copy(model)
    c, h, w = (int(v) for v in input_shape)
    example = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))
    nodes, input_name, output_name = trace(model, example)
    lowered = Lowering(nodes, input_name, output_name, (2, c, h, w), ternary_packing).run()
    meta = dict(meta or {})
    config = meta.get("config", {}) or {}
    recipe_info = recipe.describe() if recipe is not None and hasattr(recipe, "describe") else {}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "producer": {"name": "qat", "version": getattr(qat, "__version__", "unknown"),
                     "torch": torch.__version__},
        "recipe": recipe_info,
        "model": config.get("model", {}),
        "data": {**meta.get("data", {}), "config": config.get("data", {})},
        "input": {"name": input_name, "shape": [None, c, h, w], "dtype": "float32",
                  "normalization": {"mean": [float(v) for v in normalization["mean"]],
                                    "std": [float(v) for v in normalization["std"]],
                                    "formula": "x = pixel_uint8 * float32(1 / (255 std)) - float32(mean / std)"}},
        "output": lowered["output"],
        "ops": lowered["ops"],
        "values": lowered["values"],
    }
    tensors = lowered["tensors"]
    files = core_files(manifest, tensors)
    size = len(files[MANIFEST]) + len(files[TENSORS])
    fp32 = fp32_state_dict_bytes(model)
    onnx_path = None
    if onnx is None:
        onnx = recipe_info.get("name") == "qat_uint8"
    if onnx:
        from qat.export.onnx_export import OnnxUnsupported, to_onnx
        from qat.export.onnx_qdq import to_qdq_onnx

        try:
            files[ONNX] = (to_onnx(manifest, tensors) if onnx_form == "exact" else
                           to_qdq_onnx(model, nodes, input_name, output_name, (c, h, w)))
        except OnnxUnsupported as err:
            log.warning("no ONNX export: %s", err)
    sizes = {k: len(v) for k, v in files.items()}
    files[SUMMARY] = (summary_md.render(
        f"{config.get('model', {}).get('_target_', type(model).__name__)}", recipe_info.get("name", "?"),
        lowered["layers"], tensors, sizes, fp32, size, lowered["ops"])
        + c_program.footprint_markdown(manifest, tensors)).encode()
    folder = write_folder(out_dir, files)
    if ONNX in files:
        onnx_path = folder / ONNX
    log.info("exported to %s: %d bytes (%.1fx smaller than fp32)", folder, size, fp32 / size)
    return ExportResult(folder, manifest, tensors, lowered["layers"], size, fp32,
                        {k: len(v) for k, v in files.items()}, onnx_path)
