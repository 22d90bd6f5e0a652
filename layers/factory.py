"""One entry point that builds any of the project's convolution variants.

Models call :func:`make_conv` with a variant name and the usual shape arguments and never
special-case a variant::

    conv = make_conv("deformable", 64, 64, kernel_size=3, stride=2)
    conv = make_conv("grouped", 64, 128, groups=8)

``padding=None`` (the default) means "same" padding for odd kernels:
``dilation * (kernel_size - 1) // 2``, so stride 1 keeps the spatial size and stride 2 halves
it (rounding up) for every variant.

Variant-specific settings are keyword options (``groups``, ``dilation``, ``depth_multiplier``,
``mid_channels``, ``offset_groups``, ``modulated``, ``padding_mode``); options a variant does not
accept raise a ``TypeError`` naming the variant. The registry, ``VARIANTS``, maps each name to its
builder; :func:`register_variant` adds new ones.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

Builder = Callable[..., nn.Module]

VARIANTS: dict[str, Builder] = {}


def _registrar(registry: dict, kind: str, name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder to ``registry`` under ``name`` (``kind``: "convolution", "3-D convolution")."""

    def wrap(fn: Builder) -> Builder:
        if name in registry:
            raise ValueError(f"{kind} variant {name!r} is already registered")
        registry[name] = fn
        return fn

    return wrap


def _build(registry: dict, kind: str, variant: str, *args, **options) -> nn.Module:
    """``registry[variant](*args, **options)``, with errors that name the variant and the valid ones."""
    try:
        builder = registry[variant]
    except KeyError:
        raise ValueError(f"unknown {kind} variant {variant!r}; valid variants: {', '.join(sorted(registry))}") \
            from None
    try:
        return builder(*args, **options)
    except TypeError as err:
        raise TypeError(f"{kind} variant {variant!r}: {err}") from err


def register_variant(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``fn(in_channels, out_channels, kernel_size, stride, padding, bias, **options)``."""
    return _registrar(VARIANTS, "convolution", name)


def available_variants() -> list[str]:
    return sorted(VARIANTS)


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    if kernel_size % 2 == 0:
        raise ValueError(f"padding=None ('same') needs an odd kernel_size, got {kernel_size}")
    return dilation * (kernel_size - 1) // 2


def _check_groups(groups: int, in_channels: int, out_channels: int, variant: str) -> None:
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(
            f"variant {variant!r}: groups={groups} must divide in_channels={in_channels} and "
            f"out_channels={out_channels}")


def split_conv_config(conv) -> tuple[str, dict]:
    """Split a ``conv`` config (a mapping such as ``conf/conv/grouped.yaml``: ``variant`` plus that
    variant's options) into ``(variant, options)`` for :func:`make_conv`.

    ``None`` (``null`` in YAML) options are dropped so the builder's default applies; a missing
    ``variant`` means ``"standard"``; ``None`` for ``conv`` itself is the standard convolution.
    """
    conv = dict(conv or {})
    variant = conv.pop("variant", None) or "standard"
    if not isinstance(variant, str):
        raise TypeError(f"conv.variant must be a variant name (str), got {type(variant).__name__}")
    return variant, {k: v for k, v in conv.items() if v is not None}


def make_conv(variant: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
              padding: int | None = None, bias: bool = False, **options) -> nn.Module:
    """Build convolution ``variant`` mapping ``in_channels`` to ``out_channels`` channels.

    Every variant takes NCHW input and returns ``(N, out_channels, ceil(H / stride), ceil(W / stride))``
    with the default padding.
    """
    return _build(VARIANTS, "convolution", variant, in_channels, out_channels, kernel_size, stride, padding, bias,
                  **options)


# --------------------------------------------------------------------------------------------- variants


# The variants both ranks have (standard and grouped, depthwise_separable) register a builder per
# rank below; what those build is written once here.
def _plain_conv(conv: Callable[..., nn.Module], same: Callable, cin, cout, k, stride, padding, bias, dilation, groups,
                padding_mode) -> nn.Module:
    """``conv`` (``layers.Conv2d`` or ``Conv3d``) as the "standard" variant of its rank builds it (the
    "grouped" and "dilated" variants too); padding None is ``same(k, dilation)`` (``same_padding``, or
    per axis ``_same_padding_3d``)."""
    if groups != 1:
        _check_groups(groups, cin, cout, "standard")
    pad = same(k, dilation) if padding is None else padding
    return conv(cin, cout, k, stride=stride, padding=pad, dilation=dilation, groups=groups, bias=bias,
                padding_mode=padding_mode)


def _depthwise_separable_conv(conv: Callable[..., nn.Module], same: Callable, cin, cout, k, stride, padding, bias,
                              depth_multiplier, dilation, padding_mode) -> nn.Module:
    """``conv`` (``layers.DepthwiseSeparableConv2d`` or ``DepthwiseSeparableConv3d``) as the
    "depthwise_separable" variant of its rank builds it; padding None as in :func:`_plain_conv`."""
    pad = same(k, dilation) if padding is None else padding
    return conv(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=bias,
                depth_multiplier=depth_multiplier, padding_mode=padding_mode)


@register_variant("standard")
def _standard(cin, cout, k, stride, padding, bias, dilation=1, groups=1, padding_mode="zeros"):
    from layers import Conv2d

    return _plain_conv(Conv2d, same_padding, cin, cout, k, stride, padding, bias, dilation, groups, padding_mode)


@register_variant("grouped")
def _grouped(cin, cout, k, stride, padding, bias, groups=4, dilation=1, padding_mode="zeros"):
    _check_groups(groups, cin, cout, "grouped")
    return _standard(cin, cout, k, stride, padding, bias, dilation=dilation, groups=groups,
                     padding_mode=padding_mode)


@register_variant("dilated")
def _dilated(cin, cout, k, stride, padding, bias, dilation=2, groups=1, padding_mode="zeros"):
    return _standard(cin, cout, k, stride, padding, bias, dilation=dilation, groups=groups,
                     padding_mode=padding_mode)


@register_variant("depthwise_separable")
def _depthwise_separable(cin, cout, k, stride, padding, bias, depth_multiplier=1, dilation=1,
                         padding_mode="zeros"):
    from layers import DepthwiseSeparableConv2d

    return _depthwise_separable_conv(DepthwiseSeparableConv2d, same_padding, cin, cout, k, stride, padding, bias,
                                     depth_multiplier, dilation, padding_mode)


@register_variant("spatially_separable")
def _spatially_separable(cin, cout, k, stride, padding, bias, mid_channels=None, dilation=1, groups=1,
                         padding_mode="zeros"):
    from layers import SpatiallySeparableConv2d

    if groups != 1:
        _check_groups(groups, cin, cout, "spatially_separable")
    pad = same_padding(k, dilation) if padding is None else padding
    return SpatiallySeparableConv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, groups=groups,
                                    bias=bias, mid_channels=mid_channels, padding_mode=padding_mode)


def _offset_deform(cin, cout, k, stride, padding, bias, modulated, dilation=1, groups=1, offset_groups=1):
    try:
        from layers import OffsetDeformConv2d
    except ImportError:
        try:
            from layers.deform import OffsetDeformConv2d
        except ImportError as err:  # pragma: no cover - only while layers/deform.py is missing
            raise ImportError("deformable variants need layers.OffsetDeformConv2d (layers/deform.py)") from err

    _check_groups(groups, cin, cout, "deformable")
    if offset_groups < 1 or cin % offset_groups:
        raise ValueError(f"offset_groups={offset_groups} must divide in_channels={cin}")
    pad = same_padding(k, dilation) if padding is None else padding
    return OffsetDeformConv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, groups=groups,
                              offset_groups=offset_groups, bias=bias, modulated=modulated)


@register_variant("deformable")
def _deformable(cin, cout, k, stride, padding, bias, modulated=False, **options):
    return _offset_deform(cin, cout, k, stride, padding, bias, modulated=modulated, **options)


@register_variant("deformable_v2")
def _deformable_v2(cin, cout, k, stride, padding, bias, modulated=True, **options):
    return _offset_deform(cin, cout, k, stride, padding, bias, modulated=modulated, **options)


# ------------------------------------------------------------------------------------ 3-D variants
#: The 3-D convolution variants (NCDHW input), a registry of their own beside ``VARIANTS`` (whose
#: variants take NCHW): name -> builder ``fn(in_channels, out_channels, kernel_size, stride, padding,
#: bias, **options)``; :func:`make_conv3d` builds them.
VARIANTS_3D: dict[str, Builder] = {}


def register_variant_3d(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register a 3-D variant builder in ``VARIANTS_3D``."""
    return _registrar(VARIANTS_3D, "3-D convolution", name)


def available_variants_3d() -> list[str]:
    return sorted(VARIANTS_3D)


def _triple_arg(value, name: str) -> tuple:
    if isinstance(value, bool) or not (isinstance(value, int) or (
            isinstance(value, (tuple, list)) and len(value) == 3 and all(isinstance(v, int) for v in value))):
        raise ValueError(f"{name} must be an int or a triple of ints (d, h, w), got {value!r}")
    return (value,) * 3 if isinstance(value, int) else tuple(value)


def _same_padding_3d(kernel_size, dilation) -> tuple:
    """Per-axis ``same_padding`` of a (possibly per-axis) kernel size and dilation."""
    return tuple(same_padding(k, d) for k, d in zip(_triple_arg(kernel_size, "kernel_size"),
                                                     _triple_arg(dilation, "dilation")))


def make_conv3d(variant: str, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None,
                bias: bool = False, **options) -> nn.Module:
    """Build 3-D convolution ``variant`` mapping ``in_channels`` to ``out_channels`` channels.

    Variants (``VARIANTS_3D``): ``standard`` (options ``dilation``, ``groups``, ``padding_mode``),
    ``grouped`` (``groups``, default 4), ``depthwise_separable`` (depthwise 3-D + pointwise 1x1x1;
    ``depth_multiplier``, ``dilation``), ``r2plus1d`` ((2+1)-D: 1 x k x k spatial then k x 1 x 1
    temporal; ``mid_channels``, default Tran et al.'s parameter-matching width, ``dilation``).
    ``kernel_size``, ``stride``, ``padding`` are ints or (d, h, w) triples. Every variant takes
    (N, in_channels, D, H, W) and, with the default padding (None: "same" for odd kernels),
    returns (N, out_channels, ceil(D / s_d), ceil(H / s_h), ceil(W / s_w)).
    """
    return _build(VARIANTS_3D, "3-D convolution", variant, in_channels, out_channels, kernel_size, stride, padding,
                  bias, **options)


@register_variant_3d("standard")
def _standard_3d(cin, cout, k, stride, padding, bias, dilation=1, groups=1, padding_mode="zeros"):
    from layers import Conv3d

    return _plain_conv(Conv3d, _same_padding_3d, cin, cout, k, stride, padding, bias, dilation, groups, padding_mode)


@register_variant_3d("grouped")
def _grouped_3d(cin, cout, k, stride, padding, bias, groups=4, dilation=1, padding_mode="zeros"):
    _check_groups(groups, cin, cout, "grouped")
    return _standard_3d(cin, cout, k, stride, padding, bias, dilation=dilation, groups=groups,
                        padding_mode=padding_mode)


@register_variant_3d("depthwise_separable")
def _depthwise_separable_3d(cin, cout, k, stride, padding, bias, depth_multiplier=1, dilation=1,
                            padding_mode="zeros"):
    from layers import DepthwiseSeparableConv3d

    return _depthwise_separable_conv(DepthwiseSeparableConv3d, _same_padding_3d, cin, cout, k, stride, padding, bias,
                                     depth_multiplier, dilation, padding_mode)


@register_variant_3d("r2plus1d")
def _r2plus1d(cin, cout, k, stride, padding, bias, mid_channels=None, dilation=1, padding_mode="zeros"):
    from layers import Conv2Plus1d

    pad = _same_padding_3d(k, dilation) if padding is None else padding
    return Conv2Plus1d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=bias,
                       mid_channels=mid_channels, padding_mode=padding_mode)
