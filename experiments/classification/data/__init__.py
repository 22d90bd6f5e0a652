from experiments.classification.data.cifar import CIFAR10DataModule, CorruptImage, DataUnavailable, find_local_copy
from experiments.classification.data.synthetic import make_synthetic

__all__ = ["CIFAR10DataModule", "CorruptImage", "DataUnavailable", "find_local_copy", "make_synthetic"]
