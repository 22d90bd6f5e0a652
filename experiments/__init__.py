"""Lightning experiments comparing the convolution variants on CIFAR-10.

Importing the package registers the OmegaConf resolvers the configs in conf/ use.
"""
from experiments import resolvers as _resolvers  # noqa: F401  (registers ${on_cuda:...}, ${project_root:})
