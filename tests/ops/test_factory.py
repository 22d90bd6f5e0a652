"""layers.factory.make_conv: every variant builds, keeps the spatial contract and has sensible sizes."""
import pytest
import torch

from _helpers import conv_configs, conv_variants
from layers import use_backend
from layers.factory import VARIANTS, available_variants, make_conv, split_conv_config

# Every variant a config can select (conf/conv/*.yaml), so a new config is tested here by itself.
ALL = conv_variants()


def _build(variant, *args, **kwargs):
    return make_conv(variant, *args, **kwargs)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registry_has_every_variant():
    assert set(ALL) <= set(available_variants())
    assert available_variants() == sorted(VARIANTS)


@pytest.mark.parametrize("variant", ALL)
@pytest.mark.parametrize("stride", [1, 2])
def test_output_shape(variant, stride):
    conv = _build(variant, 8, 16, kernel_size=3, stride=stride)
    x = torch.randn(2, 8, 9, 10)
    with use_backend("reference"):
        y = conv(x)
    assert y.shape == (2, 16, -(-9 // stride), -(-10 // stride))
    with use_backend("reference"):
        y.sum().backward()
    assert all(p.grad is not None for p in conv.parameters() if p.requires_grad)


@pytest.mark.parametrize("variant", ALL)
def test_parameter_count_relative_to_standard(variant):
    cin, cout, k = 16, 32, 3
    dense = cin * cout * k * k
    conv = _build(variant, cin, cout, kernel_size=k)
    n = _params(conv)
    expected = {
        "standard": lambda: n == dense,
        "dilated": lambda: n == dense,
        "grouped": lambda: n == dense // 4,                                # default groups=4
        "depthwise_separable": lambda: n == cin * k * k + cin * cout,      # depthwise + pointwise
        "spatially_separable": lambda: n == cin * cout * k + cout * cout * k,  # k x 1 then 1 x k
        "deformable": lambda: n > dense,                                   # + the offset predictor
        "deformable_v2": lambda: n > dense,                                # + offsets and mask
    }[variant]
    assert expected(), f"{variant}: {n} parameters (dense: {dense})"


def test_deformable_v2_has_more_parameters_than_v1():
    v1 = _params(_build("deformable", 16, 16))
    v2 = _params(_build("deformable_v2", 16, 16))
    assert v2 > v1


def test_options_reach_the_layer():
    assert make_conv("grouped", 16, 16, groups=8).groups == 8
    dil = make_conv("dilated", 4, 4, dilation=3)
    assert dil.dilation == (3, 3) and dil.padding == (3, 3)
    dw = make_conv("depthwise_separable", 4, 6, depth_multiplier=2)
    assert _params(dw) == 4 * 2 * 9 + 4 * 2 * 6
    assert make_conv("standard", 4, 4, bias=True).bias is not None
    assert make_conv("standard", 4, 4, kernel_size=1, padding=0).kernel_size == (1, 1)


def test_unknown_variant_lists_valid_names():
    with pytest.raises(ValueError, match="unknown convolution variant 'nope'.*standard"):
        make_conv("nope", 4, 4)


def test_bad_options_are_clear():
    with pytest.raises(ValueError, match="groups=3 must divide"):
        make_conv("grouped", 16, 16, groups=3)
    with pytest.raises(TypeError, match="variant 'standard'"):
        make_conv("standard", 4, 4, depth_multiplier=2)


def test_every_config_variant_is_registered_and_builds():
    for name, cfg in conv_configs().items():
        variant, options = split_conv_config(cfg)
        m = _build(variant, 8, 8, **options)
        assert tuple(m(torch.randn(1, 8, 6, 6)).shape) == (1, 8, 6, 6), name


def test_split_conv_config():
    assert split_conv_config(None) == ("standard", {})
    assert split_conv_config({"variant": "grouped", "groups": 2, "dilation": None}) == ("grouped", {"groups": 2})
    cfg = {"variant": "dilated", "dilation": 3}
    assert split_conv_config(cfg) == ("dilated", {"dilation": 3}) and cfg["variant"] == "dilated"  # not mutated
    with pytest.raises(TypeError, match="conv.variant"):
        split_conv_config({"variant": 3})
