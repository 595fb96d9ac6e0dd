"""``run(cfg)``: build everything from a composed config, fit, test the best checkpoint, write
``metrics.json`` and return the metric a sweep optimises. ``train.py`` is a thin Hydra entry over it."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from qat.models.custom import accepted
from qat.module import Classifier
from qat.utils.checkpoint_io import AtomicCheckpointIO
from qat.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def build_model(cfg: DictConfig, datamodule) -> torch.nn.Module:
    """The model factory gets the data facts (classes, channels, image size) from the data module:
    they are stated once, in the data config or the files themselves. A factory gets those it accepts."""
    factory = hydra.utils.instantiate(cfg.model)
    facts = {"num_classes": datamodule.num_classes, "in_channels": datamodule.in_channels,
             "image_size": tuple(datamodule.image_size)}
    return factory(**accepted(factory, facts))


def data_facts(datamodule) -> dict:
    facts = _data_facts(datamodule)
    return {k: v for k, v in facts.items() if v != []}


def _data_facts(datamodule) -> dict:
    return {"num_classes": int(datamodule.num_classes), "in_channels": int(datamodule.in_channels),
            "image_size": [int(s) for s in datamodule.image_size],
            "class_names": list(getattr(datamodule, "class_names", []) or []),
            # the normalisation, so that an export runs on raw pixels without the data set
            "mean": [float(v) for v in getattr(datamodule, "mean", ()) or ()],
            "std": [float(v) for v in getattr(datamodule, "std", ()) or ()]}


def init_from_checkpoint(model: torch.nn.Module, path) -> None:
    """Start from the weights of a full-precision qat checkpoint (``init_from=CKPT``), before the
    recipe swaps layers: e.g. Jacob et al.'s uint8 training fine-tunes a trained float model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init_from {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = {k[len("model."):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("model.")}
    hint = "it takes a checkpoint of quant=fp32 with the same model config"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes differ
        raise ValueError(f"init_from {path} does not fit this model: {str(err)[:300]}; {hint}") from None
    if missing or unexpected:
        raise ValueError(f"init_from {path} does not fit this model (missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}): {hint}")


def build_module(cfg: DictConfig, datamodule) -> Classifier:
    model = build_model(cfg, datamodule)
    if cfg.get("init_from_required") and not cfg.get("init_from"):
        raise ValueError("this experiment fine-tunes a trained float model: pass init_from=CKPT, e.g. "
                         "OUT/checkpoints/last.ckpt of experiment=paper_resnet20_fp32")
    if cfg.get("init_from"):
        init_from_checkpoint(model, cfg.init_from)
    recipe = hydra.utils.instantiate(cfg.quant)
    precision = str(cfg.get("trainer", {}).get("precision", "32-true"))
    if "mixed" in precision and not getattr(recipe, "mixed_precision", True):
        raise ValueError(f"quant={getattr(recipe, 'name', type(recipe).__name__)} does not train under "
                         f"trainer.precision={precision}; use trainer.precision=32-true")
    model = recipe.prepare(model)
    scheduler = hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    facts = data_facts(datamodule)
    distill = hydra.utils.instantiate(cfg.distill) if cfg.get("distill") else None
    if distill is not None and distill.enabled:
        distill.check_fits(facts)
    meta = {"config": OmegaConf.to_container(cfg, resolve=True), "data": facts}
    return Classifier(model, datamodule.num_classes, optimizer=hydra.utils.instantiate(cfg.optimizer),
                      scheduler=scheduler, recipe=recipe, meta=meta, distill=distill)


def trainer_config(cfg: DictConfig) -> tuple[dict, bool]:
    """The Trainer's arguments from ``cfg.trainer``, and qat's own ``channels_last`` key taken out of them."""
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    return trainer_cfg, bool(trainer_cfg.pop("channels_last", False))


def _instantiate_group(node) -> list:
    if not node:
        return []
    return [hydra.utils.instantiate(v) for v in node.values() if v is not None and "_target_" in v]


def _flat_metrics(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                continue
            v = v.item()
        if isinstance(v, (int, float)):
            out[k] = float(v)
    return out


@dataclass
class Result:
    trainer: pl.Trainer
    module: Classifier
    datamodule: pl.LightningDataModule
    metrics: dict


def resolve_ckpt_path(cfg: DictConfig) -> Path | None:
    """``ckpt_path=PATH`` as given, or with ``resume=true`` this run's ``checkpoints/last.ckpt`` (an error if
    absent); ``resume=auto``: that checkpoint if it exists, else a fresh start (preemptible jobs)."""
    path = cfg.get("ckpt_path")
    resume = cfg.get("resume", False)
    if path is None and resume:
        path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if resume == "auto" and not path.is_file():  # a job that may be requeued: first start, or resume
            return None
        if not path.is_file():
            raise FileNotFoundError(f"resume=true but there is no {path}: pass the interrupted run's folder as "
                                    f"hydra.run.dir=..., or a checkpoint as ckpt_path=...")
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path {path} does not exist")
    return path


def check_checkpoint_fits(path: Path, datamodule) -> None:
    """Fail before training when the checkpoint was trained on data of another shape."""
    meta = torch.load(path, map_location="cpu", weights_only=True).get("qat_meta", {}).get("data", {})
    for key in ("num_classes", "in_channels"):
        theirs, ours = meta.get(key), getattr(datamodule, key)
        if theirs is not None and int(theirs) != int(ours):
            raise ValueError(f"checkpoint {path} was trained with {key}={theirs}, but the data has {key}={ours}; "
                             f"use a checkpoint trained on this data, or the data it was trained on")


def train(cfg: DictConfig) -> Result:
    """Fit, test the best checkpoint, write the resolved config and metrics.json."""
    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    # Data first: a bad root fails here, before any checkpoint, log or metric file is written.
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    ckpt_path = resolve_ckpt_path(cfg)
    if ckpt_path is not None:
        check_checkpoint_fits(ckpt_path, datamodule)

    module = build_module(cfg, datamodule)
    if cfg.get("compile", False):
        # In place (nn.Module.compile): parameter names, checkpoints and exports are unchanged.
        # dynamic=False: shapes are fixed per batch size. With automatic dynamic shapes, the observers'
        # buffers, sized on the first step, made dynamo recompile symbolically, and inductor (torch
        # 2.14) then failed on the backward ("Cannot convert expression to float").
        module.model.compile(dynamic=False)
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    trainer_cfg, channels_last = trainer_config(cfg)
    if channels_last:
        module.model.to(memory_format=torch.channels_last)
    trainer: pl.Trainer = hydra.utils.instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False,
                                                  plugins=[AtomicCheckpointIO()])

    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = _flat_metrics(trainer.callback_metrics)

    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        ckpt = best if best else None
        if ckpt is None:
            log.warning("no best checkpoint was saved; testing the weights in memory")
        log.info("testing %s", ckpt or "the final weights")
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        metrics.update(_flat_metrics(trainer.callback_metrics))
    # Callbacks that measure something after the test (export verification) publish it here.
    for cb in callbacks:
        metrics.update(_flat_metrics(getattr(cb, "extra_metrics", None) or {}))

    if trainer.is_global_zero:
        atomic_write_json(out_dir / "metrics.json", metrics)
        log.info("metrics written to %s", out_dir / "metrics.json")
    return Result(trainer, module, datamodule, metrics)


def run(cfg: DictConfig) -> float | None:
    """Train and return the metric named by ``optimized_metric`` (what a sweep optimises)."""
    metrics = train(cfg).metrics
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric '{name}' was not logged; available: {sorted(metrics)}")
    value = metrics[name]
    return value if math.isfinite(value) else None
