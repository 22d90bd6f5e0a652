"""Model size: parameter count and forward FLOPs of one sample.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts as 2
FLOPs) on a CPU copy of the model running the PyTorch reference backend, so the count does not
depend on the device or on which kernels run. Convolutions, matmuls and the project's custom ops
(which register their formulas) are counted; element-wise ops (BN, ReLU, additions) are not, as
usual. ``torchvision::deform_conv2d`` (what the reference backend runs for the deformable layers) gets a
formula here with layers/deform.py's convention for ``convlab::deform_conv2d``: the convolution's
multiply-adds plus 7 FLOPs per bilinearly sampled value (8 with a modulation mask).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, flop_registry, register_flop_formula


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _register_deform_conv_formula() -> None:
    try:
        import torchvision  # noqa: F401  (registers torch.ops.torchvision)

        op = torch.ops.torchvision.deform_conv2d
    except (ImportError, AttributeError, RuntimeError):
        return
    if op in flop_registry or getattr(op, "default", None) in flop_registry:
        return

    @register_flop_formula(op)
    def _deform_conv2d_flops(x_shape, w_shape, offset_shape, mask_shape, bias_shape, *args, out_shape, **kwargs):
        n, cin = x_shape[0], x_shape[1]
        kh, kw = w_shape[-2:]
        sampled = n * cin * kh * kw * out_shape[-2] * out_shape[-1]
        # (..., n_weight_grps, n_offset_grps, use_mask): v1 passes a dummy (N, 1) mask with use_mask=False
        use_mask = bool(args[-1]) if args and isinstance(args[-1], bool) else False
        return conv_flop_count(list(x_shape), list(w_shape), list(out_shape), transposed=False) + \
            sampled * (8 if use_mask else 7)


_register_deform_conv_formula()


def count_flops(model: nn.Module, input_shape=(3, 32, 32)) -> int:
    """Forward FLOPs of ``model`` on one sample of ``input_shape`` (batch size 1)."""
    from layers import use_backend

    clone = copy.deepcopy(model).to("cpu").float().eval()
    x = torch.zeros(1, *input_shape)
    with use_backend("reference"), torch.no_grad(), FlopCounterMode(display=False) as counter:
        clone(x)
    return int(counter.get_total_flops())
