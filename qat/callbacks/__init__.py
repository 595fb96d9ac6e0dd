"""Lightning callbacks configured in ``configs/callbacks/``: quantization diagnostics for TensorBoard,
the analytic model size for metrics.json, and quantizer-state sync across DDP ranks."""

from qat.callbacks.ddp_sync import SyncQuantState
from qat.callbacks.diagnostics import QuantDiagnostics
from qat.callbacks.size import ModelSize, model_size

__all__ = ["ModelSize", "QuantDiagnostics", "SyncQuantState", "model_size"]
