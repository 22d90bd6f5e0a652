from experiments.models.resnet import CifarResNet

__all__ = ["CifarResNet"]
