"""Sub-pixel convolution, ICNR and the upsampling factory against plain PyTorch."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layers.upsample import SubPixelConv2d, icnr_, make_upsample, subpixel_conv2d


@pytest.mark.parametrize("variant", ["transposed", "subpixel", "resize_conv"])
@pytest.mark.parametrize("r", [1, 2, 3])
def test_make_upsample_shape(variant, r):
    m = make_upsample(variant, 3, 5, scale_factor=r)
    y = m(torch.randn(2, 3, 5, 7))
    assert y.shape == (2, 5, 5 * r, 7 * r)


def test_subpixel_matches_conv_then_pixel_shuffle():
    torch.manual_seed(0)
    m = SubPixelConv2d(4, 3, 3, upscale_factor=2).double()
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    ref = F.pixel_shuffle(F.conv2d(x, m.weight, m.bias, padding=1), 2)
    torch.testing.assert_close(m(x), ref)
    assert m.weight.shape == (12, 4, 3, 3)


def test_icnr_gives_nearest_neighbour_blocks():
    torch.manual_seed(0)
    m = SubPixelConv2d(4, 3, 3, upscale_factor=3, icnr=True)
    y = m(torch.randn(1, 4, 5, 5))
    # every 3x3 block of the output is constant at initialisation: no checkerboard
    blocks = y.unflatten(2, (5, 3)).unflatten(4, (5, 3))
    assert torch.allclose(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))
    assert torch.count_nonzero(m.bias) == 0


def test_icnr_rejects_bad_weight():
    with pytest.raises(ValueError, match="upscale_factor"):
        icnr_(torch.empty(5, 2, 3, 3), 2)
    with pytest.raises(ValueError, match="weight must be 4-D"):
        subpixel_conv2d(torch.randn(1, 2, 4, 4), torch.randn(6, 2, 3, 3), None, 2)


def test_make_upsample_errors():
    with pytest.raises(ValueError, match="unknown upsampling variant 'bogus'"):
        make_upsample("bogus", 3, 3)
    with pytest.raises(ValueError, match="icnr"):
        make_upsample("transposed", 3, 3, icnr=True)
    with pytest.raises(ValueError, match="scale_factor"):
        make_upsample("subpixel", 3, 3, scale_factor=0)
    with pytest.raises(ValueError, match="kernel_size >= scale_factor"):
        make_upsample("transposed", 3, 3, scale_factor=4, kernel_size=3)


def test_resize_conv_is_upsample_then_conv():
    torch.manual_seed(0)
    m = make_upsample("resize_conv", 2, 3, scale_factor=2).double()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    conv = m[1]
    ref = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(m(x), ref)
    assert isinstance(m[0], nn.Upsample)
