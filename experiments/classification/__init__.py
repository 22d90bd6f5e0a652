"""Image classification experiments: CIFAR-10 data (with the procedural synthetic fallback), the NiN and
CIFAR ResNet models built from convlab's convolution variants, and the Lightning ClassifierModule
(``experiment=`` anything but detection)."""
