"""convlab layers: autograd ops (torch.library custom ops over the Triton kernels) and modules."""
from .backend import get_backend, resolve, set_backend, use_backend
from .conv import (
    Conv2d,
    ConvTranspose2d,
    DepthwiseSeparableConv2d,
    SpatiallySeparableConv2d,
    conv2d,
    conv_transpose2d,
)
from .conv3d import Conv2Plus1d, Conv3d, ConvTranspose3d, DepthwiseSeparableConv3d, conv3d, conv_transpose3d
from .deform import DeformConv2d, OffsetDeformConv2d, deform_conv2d
from .gather import bilinear_gather
from .upsample import SubPixelConv2d, icnr_, make_upsample, subpixel_conv2d
from .roi import DeformRoIPool2d, ModulatedDeformRoIPool2d, OffsetDeformRoIPool2d, deform_roi_pool

__all__ = [
    "conv2d", "conv_transpose2d", "Conv2d", "ConvTranspose2d", "DepthwiseSeparableConv2d",
    "SpatiallySeparableConv2d", "deform_conv2d", "bilinear_gather", "DeformConv2d", "OffsetDeformConv2d",
    "deform_roi_pool", "DeformRoIPool2d", "OffsetDeformRoIPool2d", "ModulatedDeformRoIPool2d",
    "SubPixelConv2d", "subpixel_conv2d", "icnr_", "make_upsample",
    "conv3d", "conv_transpose3d", "Conv3d", "ConvTranspose3d", "DepthwiseSeparableConv3d", "Conv2Plus1d",
    "get_backend", "set_backend", "use_backend", "resolve",
]
