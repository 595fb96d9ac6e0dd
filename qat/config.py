"""Compose the training config outside a Hydra run (scripts, tests, notebooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"


def compose_config(overrides: Sequence[str] = (), output_dir: str | Path | None = None,
                   config_name: str = "train") -> DictConfig:
    """``configs/train.yaml`` with overrides, as train.py would see it. ``hydra:`` interpolations
    (run dir, cwd) have no value outside a run, so ``output_dir`` stands in for the run dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        extra = [] if output_dir is None else [f"paths.output_dir={output_dir}", f"paths.root_dir={ROOT}"]
        return compose(config_name=config_name, overrides=list(overrides) + extra)
