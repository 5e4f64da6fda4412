"""Convolution geometry with other weights: forward, adjoint (transposed) and conv-of-ones, on fast CPU paths."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_input


def conv_forward(m, x: Tensor, weight: Tensor) -> Tensor:
    """The step's convolution geometry applied with another weight, without bias."""
    if is_pointwise(m):
        return pointwise_conv(x, weight)
    return F.conv2d(x, weight, None, m.stride, m.padding, m.dilation, m.groups)


def is_pointwise(m) -> bool:
    """A 1×1 convolution with stride 1, no padding and one group: a matrix product over channels."""
    return (tuple(m.kernel_size) == (1, 1) and tuple(m.stride) == (1, 1) and m.groups == 1
            and not isinstance(m.padding, str) and tuple(m.padding) == (0, 0))


def pointwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """conv2d(x, weight, bias) for a 1×1 kernel as one batched matrix product (oneDNN's NCHW 1×1 kernels are slow)."""
    n, _, h, w = x.shape
    x = x.reshape(n, x.shape[1], h * w)
    w2 = weight.reshape(weight.shape[0], -1)
    out = torch.matmul(w2, x) if bias is None else torch.baddbmm(bias[:, None].expand(n, -1, h * w), w2.expand(n, -1, -1), x)
    return out.reshape(n, -1, h, w)


def conv_transpose(m, out: Tensor, weight: Tensor, input_shape: torch.Size) -> Tensor:
    """The adjoint of `conv_forward` (a transposed convolution back to the input's shape).

    With stride 1 and one group it is a forward convolution with the flipped, transposed kernel, which
    the CPU backends run faster than their backward-data kernels.
    """
    shape = (out.shape[0],) + tuple(input_shape[1:])
    if is_pointwise(m):
        return pointwise_conv(out, weight.transpose(0, 1))
    pad = _adjoint_padding(m, weight)
    if pad is None:
        return conv2d_input(shape, weight, out, m.stride, m.padding, m.dilation, m.groups)
    return F.conv2d(out, weight.transpose(0, 1).flip(2, 3), None, 1, pad, m.dilation)


def _adjoint_padding(m, weight: Tensor) -> tuple[int, int] | None:
    """Padding of the forward conv that equals the adjoint of a stride-1, single-group conv; None otherwise."""
    if m.groups != 1 or tuple(m.stride) != (1, 1) or isinstance(m.padding, str):
        return None
    pad = tuple(d * (k - 1) - p for d, k, p in zip(m.dilation, weight.shape[2:], m.padding))
    return pad if min(pad) >= 0 else None


def conv_of_ones(m, weight: Tensor, input_shape: torch.Size) -> Tensor:
    """conv(1, W) for an all-ones input of `input_shape`, as a 1×C_out×H'×W' map (summing W over C_in first)."""
    groups = m.groups
    w = weight.reshape((groups, -1) + weight.shape[1:]).sum(dim=2).reshape((-1, 1) + weight.shape[2:])
    ones = weight.new_ones((1, groups) + tuple(input_shape[2:]))
    return F.conv2d(ones, w, None, m.stride, m.padding, m.dilation, groups)
