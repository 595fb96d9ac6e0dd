"""Train a classifier with a quantization recipe: ``python train.py quant=bnn data=cifar10``.

A thin Hydra entry point over ``qat.experiment.run``, which returns the metric named by
``optimized_metric`` for sweeps.
"""

import hydra
from omegaconf import DictConfig

from qat.experiment import run


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
