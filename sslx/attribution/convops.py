"""Convolution geometry with other weights: forward, adjoint (transposed) and conv-of-ones, on fast CPU paths."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_input


def conv_forward(m, x: Tensor, weight: Tensor) -> Tensor:
    """The step's convolution geometry applied with another weight, without bias."""
    if is_pointwise(m, x):
        return pointwise_conv(x, weight, stride=tuple(m.stride))
    return F.conv2d(x, weight, None, m.stride, m.padding, m.dilation, m.groups)


def is_pointwise(m, x: Tensor) -> bool:
    """On CPU, a 1×1 convolution without padding and with one group: a matrix product over channels
    (elsewhere the convolution libraries do well on their own)."""
    return (x.device.type == "cpu" and tuple(m.kernel_size) == (1, 1) and m.groups == 1
            and not isinstance(m.padding, str) and tuple(m.padding) == (0, 0))


def pointwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: tuple = (1, 1)) -> Tensor:
    """conv2d for a 1×1 kernel (or a C_out×C_in matrix) as one batched matrix product (oneDNN's NCHW 1×1
    kernels are slow)."""
    if tuple(stride) != (1, 1):
        x = x[:, :, ::stride[0], ::stride[1]]
    n, _, h, w = x.shape
    x = x.reshape(n, x.shape[1], h * w)
    w2 = weight.reshape(weight.shape[0], -1).expand(n, -1, -1)  # stride-0 batch: no copy of the weight
    out = torch.bmm(w2, x) if bias is None else torch.baddbmm(bias[:, None].expand(n, -1, h * w), w2, x)
    return out.reshape(n, -1, h, w)


def conv_transpose(m, out: Tensor, weight: Tensor, input_shape: torch.Size) -> Tensor:
    """The adjoint of `conv_forward` (a transposed convolution back to the input's shape).

    On CPU, with stride 1 and one group it is a forward convolution with the flipped, transposed kernel
    where the activation outweighs the kernel (oneDNN runs it faster than its backward-data kernel);
    otherwise oneDNN's deconvolution.
    """
    shape = (out.shape[0],) + tuple(input_shape[1:])
    if is_pointwise(m, out):
        back = pointwise_conv(out, weight.reshape(weight.shape[0], -1).t())
        if tuple(m.stride) == (1, 1):
            return back
        full = back.new_zeros(shape)
        full[:, :, ::m.stride[0], ::m.stride[1]] = back
        return full
    if out.device.type == "cpu" and not isinstance(m.padding, str):
        pad = _adjoint_padding(m, weight)
        if pad is not None and out.numel() >= weight.numel():  # else flipping the kernel costs more than it saves
            kernel = weight.transpose(0, 1).contiguous().flip(2, 3)
            return F.conv2d(out, kernel, None, 1, pad, m.dilation)
        # oneDNN's deconvolution: 5–15 % faster than its backward-data kernel (conv2d_input) on small maps
        extra = tuple(size - ((o - 1) * s - 2 * p + d * (k - 1) + 1) for size, o, s, p, d, k in
                      zip(shape[2:], out.shape[2:], m.stride, m.padding, m.dilation, weight.shape[2:]))
        return F.conv_transpose2d(out, weight, None, m.stride, m.padding, extra, m.groups, m.dilation)
    return conv2d_input(shape, weight, out, m.stride, m.padding, m.dilation, m.groups)


def _adjoint_padding(m, weight: Tensor) -> tuple[int, int] | None:
    """Padding of the forward conv that equals the adjoint of a stride-1, single-group conv; None otherwise."""
    if m.groups != 1 or tuple(m.stride) != (1, 1):
        return None
    pad = tuple(d * (k - 1) - p for d, k, p in zip(m.dilation, weight.shape[2:], m.padding))
    return pad if min(pad) >= 0 else None


def conv_of_ones(m, weight: Tensor, input_shape: torch.Size) -> Tensor:
    """conv(1, W) for an all-ones input of `input_shape`, as a 1×C_out×H'×W' map (summing W over C_in first)."""
    groups = m.groups
    w = weight.reshape((groups, -1) + weight.shape[1:]).sum(dim=2).reshape((-1, 1) + weight.shape[2:])
    ones = weight.new_ones((1, groups) + tuple(input_shape[2:]))
    return F.conv2d(ones, w, None, m.stride, m.padding, m.dilation, groups)
