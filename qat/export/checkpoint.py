"""Rebuild a prepared model from a training checkpoint alone (no Python pickles).

The checkpoint carries ``qat_meta`` (the resolved config and the data facts, see
``qat.module.Classifier``): the model factory and the recipe are instantiated from the stored
config, the recipe prepares the model, the ``model.*`` weights load, and ``recipe.finalize`` brings
the weights to their deployed form (ADMM: W <- G), exactly as before a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from torch import nn

from qat.export.errors import ExportError


@dataclass
class Restored:
    model: nn.Module
    recipe: object
    meta: dict

    @property
    def config(self) -> dict:
        return self.meta.get("config", {})

    @property
    def data(self) -> dict:
        return self.meta.get("data", {})

    @property
    def input_shape(self) -> tuple[int, int, int]:
        d = self.data
        return (int(d["in_channels"]), int(d["image_size"][0]), int(d["image_size"][1]))


def load_checkpoint(path: str | Path) -> Restored:
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses pickled objects: say so
        raise ExportError(f"{path} could not be read as a weights-only checkpoint ({err}); qat loads "
                          "checkpoints with torch.load(weights_only=True) and never unpickles objects") from None
    meta = ckpt.get("qat_meta") if isinstance(ckpt, dict) else None
    if not meta or "config" not in meta or "data" not in meta:
        raise ExportError(f"{path} has no qat_meta (config and data facts); it was not written by qat's "
                          "training (python train.py ...)")
    cfg, data = meta["config"], meta["data"]
    for key in ("model", "quant"):
        if key not in cfg:
            raise ExportError(f"{path}: the stored config has no '{key}' section")
    factory = hydra.utils.instantiate(cfg["model"])
    model = factory(num_classes=int(data["num_classes"]), in_channels=int(data["in_channels"]),
                    image_size=tuple(int(s) for s in data["image_size"]))
    recipe = hydra.utils.instantiate(cfg["quant"])
    model = recipe.prepare(model)
    state = {k[len("model."):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("model.")}
    if not state:
        raise ExportError(f"{path} has no model.* weights in its state_dict")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"{path} does not match the model built from its config: missing "
                          f"{missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    recipe.finalize(model)
    return Restored(model, recipe, meta)
