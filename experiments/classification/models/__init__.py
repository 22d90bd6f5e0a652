from experiments.classification.models.resnet import CifarResNet

__all__ = ["CifarResNet"]
