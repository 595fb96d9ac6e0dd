"""Small integer state that a quantized module's ``forward`` branches on (switches such as
``fake_quant_enabled``, ``bn_frozen``, ADMM's ``projecting``; counters such as ``num_calibrated``).

Each value lives in two places, for two reasons:

* a registered buffer, so that checkpoints, ``load_state_dict`` and DDP broadcasts carry it;
* a Python ``int`` mirror, because branching on a tensor needs ``.item()``: a device sync in eager
  mode, and a graph break per read under ``torch.compile``. dynamo instead specializes the compiled
  graph on the mirror's value and recompiles when it changes (a switch flips a few times per run).

Eager reads go to the buffer, re-read only when its version counter changed (in-place writes,
``load_state_dict`` and DDP broadcasts all bump it), and refresh the mirror. Compiled reads use the
mirror, which ``set_host`` and ``load_state_dict`` keep equal to the buffer; code that writes a
buffer in place directly must call :func:`refresh_host_state` before the next compiled forward
(``QATModule`` does so before every batch of a compiled model).
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn


def _mirror(name: str) -> str:
    return f"_host_{name}"


class HostState:
    """Mixin for ``nn.Module`` subclasses: ``register_host_buffer``, ``set_host``, ``host``."""

    def register_host_buffer(self: nn.Module, name: str, value: int | bool, dtype: torch.dtype) -> None:
        self.register_buffer(name, torch.tensor(value, dtype=dtype))
        if not hasattr(self, "_host_names"):
            self._host_names: Tuple[str, ...] = ()
            self._host_cache: Dict[str, Tuple[Tuple[int, int, int], int]] = {}
            self.register_load_state_dict_post_hook(_refresh_after_load)
        self._host_names += (name,)
        setattr(self, _mirror(name), int(value))

    def set_host(self: nn.Module, name: str, value: int | bool) -> None:
        """Write the buffer and its mirror."""
        getattr(self, name).fill_(int(value))
        setattr(self, _mirror(name), int(value))

    def host(self: nn.Module, name: str) -> int:
        """The value as a Python int, without a device sync per call."""
        if torch.compiler.is_compiling():
            return getattr(self, _mirror(name))
        t = getattr(self, name)
        if t.is_inference():  # made under torch.inference_mode: no version counter
            return int(t.item())
        key = (id(t), t.data_ptr(), t._version)
        hit = self._host_cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        val = int(t.item())
        self._host_cache[name] = (key, val)
        setattr(self, _mirror(name), val)
        return val

    def refresh_host(self: nn.Module) -> None:
        for name in self._host_names:
            self.host(name)


def _refresh_after_load(module: HostState, _incompatible_keys) -> None:
    module.refresh_host()


def refresh_host_state(model: nn.Module) -> None:
    """Bring every mirror in ``model`` up to date with its buffer (eager; a sync only for values
    whose buffer was written since the last read)."""
    for m in model.modules():
        if isinstance(m, HostState) and getattr(m, "_host_names", None):
            m.refresh_host()
