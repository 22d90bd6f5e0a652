"""Super-resolution experiments (the upsampling study, issue 17): CIFAR-10 pairs made by bicubic
downsampling, a small ESPCN-like network whose upsampling layer is transposed convolution, sub-pixel
convolution (with or without ICNR) or resize-convolution, and the Lightning SuperResModule with
PSNR / SSIM / checkerboard-energy metrics (``experiment=upsampling``)."""
from experiments.superres.data import SuperResDataModule, bicubic_downsample
from experiments.superres.metrics import checkerboard_energy, log_spectrum, periodic_mask
from experiments.superres.model import SRNet, split_upsample_config, upsample_label

__all__ = ["SuperResDataModule", "bicubic_downsample", "checkerboard_energy", "log_spectrum", "periodic_mask",
           "SRNet", "split_upsample_config", "upsample_label"]
