"""Train a CIFAR ResNet whose 3x3 convolutions are one of convlab's variants.

    python train.py                                   # CPU preset / GPU schedule, picked automatically
    python train.py conv=deformable data.root=data/cifar10
    python train.py -m conv=standard,grouped,depthwise_separable,dilated,deformable,deformable_v2 seed=0,1,2

Configs live in conf/ (see conf/train.yaml); the task itself is experiments.train.train.
Returns the value of ``optimized_metric`` (val/acc by default) for Hydra sweepers.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

import experiments  # noqa: F401  (registers the config resolvers)


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from experiments.train import metric_value, train

    metrics = train(cfg)
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
