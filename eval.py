"""Evaluate a checkpoint without training: validate (and test) it and write summary.json + a W&B run.

    python eval.py ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt
    python eval.py ckpt_path=... conv=deformable data.root=data/cifar10 stages=[validate,test]

Configs live in conf/ (conf/eval.yaml); the task itself is experiments.eval.evaluate.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

import experiments  # noqa: F401  (registers the config resolvers)


@hydra.main(config_path="conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from experiments.eval import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
