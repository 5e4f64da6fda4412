"""Convolution geometry with other weights: forward, adjoint (transposed) and conv-of-ones, on fast CPU paths."""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_input

from .buffers import KernelBuffers

POINTWISE_BMM_MAX_CHANNELS = 64  # oneDNN's NCHW 1×1 kernels are slow from few input channels on every CPU tried


def conv_forward(m, x: Tensor, weight: Tensor) -> Tensor:
    """The step's convolution geometry applied with another weight, without bias."""
    if is_pointwise(m, x):
        return pointwise_conv(x, weight, stride=tuple(m.stride))
    if x.device.type == "cpu" and _strided_pointwise(m):
        # a strided 1×1 conv reads every s-th pixel: oneDNN runs it 10–25 % faster on the subsampled view
        stride = int_pair(m.stride)
        return F.conv2d(x[:, :, ::stride[0], ::stride[1]], weight)
    return F.conv2d(x, weight, None, m.stride, m.padding, m.dilation, m.groups)


def is_pointwise(m, x: Tensor) -> bool:
    """Whether a 1×1 convolution of x goes faster as a matrix product over channels: on CPU, without padding,
    one group, and either few input channels or a CPU without AVX-512 (elsewhere oneDNN does well).

    Measured, 2 threads, B = 1 and 8, ResNet-50's 1×1 shapes: on an AVX2 EPYC the product is 1.0–1.2× faster
    than oneDNN (4× from 64 channels); on an AVX-512 EPYC (Zen 5) oneDNN is 1.7–2.7× faster, except from 64
    channels, where the product is 4× faster.
    """
    return (x.device.type == "cpu" and tuple(m.kernel_size) == (1, 1) and m.groups == 1
            and not isinstance(m.padding, str) and tuple(m.padding) == (0, 0)
            and (x.shape[1] <= POINTWISE_BMM_MAX_CHANNELS or not _avx512()))


@lru_cache(maxsize=1)
def _avx512() -> bool:
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


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


def flipped_kernel(m, out: Tensor, weight: Tensor, uses: int = 1,
                   buffers: KernelBuffers | None = None) -> Tensor | None:
    """The flipped, transposed kernel with which `conv_transpose` is a forward convolution, when that pays
    for `uses` adjoints of outputs like `out` (CPU, stride 1, one group); None otherwise.
    Written into the buffer "flipped" of `buffers` when given (a new tensor otherwise).

    oneDNN runs the forward convolution faster than its deconvolution, but the flip is a copy of the weight:
    it pays once the activation outweighs the kernel (B = 8, 512 channels at 28×28: 92 ms against 110), or
    a quarter of it when three adjoints share one flip (AGF's gradient, C and A).
    """
    if not flip_pays(m, out, weight, uses):
        return None
    shape = (weight.shape[1], weight.shape[0]) + tuple(weight.shape[2:])
    into = weight.new_empty(shape) if buffers is None else buffers.get("flipped", shape, weight)
    return torch.ops.aten.flip.out(weight.transpose(0, 1), [2, 3], out=into)  # one pass, no transposed copy


def flip_pays(m, out: Tensor, weight: Tensor, uses: int = 1) -> bool:
    """Whether `flipped_kernel` makes a kernel for `uses` adjoints of outputs like `out` (see there)."""
    return not (out.device.type != "cpu" or is_pointwise(m, out) or isinstance(m.padding, str)
                or _adjoint_padding(m, weight) is None or out.numel() * (4 if uses >= 3 else 1) < weight.numel())


def conv_transpose(m, out: Tensor, weight: Tensor, input_shape: torch.Size, flipped: Tensor | None = None) -> Tensor:
    """The adjoint of `conv_forward` (a transposed convolution back to the input's shape).

    On CPU, with stride 1 and one group it is a forward convolution with the flipped, transposed kernel
    (`flipped`, made here when not given and `flipped_kernel` says it pays); otherwise oneDNN's
    deconvolution.
    """
    if flipped is None:
        flipped = flipped_kernel(m, out, weight)  # None unless CPU, stride 1, one group: disjoint from the paths below
    shape = (out.shape[0],) + tuple(input_shape[1:])
    if flipped is not None:
        return F.conv2d(out, flipped, None, 1, _adjoint_padding(m, weight), m.dilation)
    if is_pointwise(m, out):
        return _spread(pointwise_conv(out, weight.reshape(weight.shape[0], -1).t()), m.stride, shape)
    if out.device.type == "cpu" and _strided_pointwise(m):
        return _spread(F.conv_transpose2d(out, weight), m.stride, shape)
    if out.device.type == "cpu" and not isinstance(m.padding, str):
        if _phases_pay(m, weight):
            return _strided_adjoint_by_phases(m, out, weight, shape)
        # oneDNN's deconvolution: 5–15 % faster than its backward-data kernel (conv2d_input) on small maps
        extra = tuple(size - ((o - 1) * s - 2 * p + d * (k - 1) + 1) for size, o, s, p, d, k in
                      zip(shape[2:], out.shape[2:], m.stride, m.padding, m.dilation, weight.shape[2:]))
        return F.conv_transpose2d(out, weight, None, m.stride, m.padding, extra, m.groups, m.dilation)
    return conv2d_input(shape, weight, out, m.stride, m.padding, m.dilation, m.groups)


SUBPIXEL_MAX_CHANNELS = 9  # oneDNN's deconvolution is slow when it writes few channels (an image-facing conv)


def _phases_pay(m, weight: Tensor) -> bool:
    """Whether the strided adjoint goes faster as one forward convolution over stride² phases. CPU, 1 thread,
    11×11/4 and 7×7/2 convs from 64 channels, B = 1 and 8: 2.5–4.1× for 3 channels, 1.4–2.0× for 6 (AGF's z^B),
    0.97–1.45× for 9 (LRP's z^B), mixed from 12 on (the phases' zero taps cost more than they save)."""
    return (m.groups == 1 and tuple(m.dilation) == (1, 1) and max(m.stride) > 1
            and weight.shape[1] <= SUBPIXEL_MAX_CHANNELS)


def _strided_adjoint_by_phases(m, out: Tensor, weight: Tensor, shape: tuple) -> Tensor:
    """The strided transposed convolution as a forward convolution (sub-pixel form).

    Input pixel y = q·S + φ − P receives Σ_j out[q − j]·W[φ + j·S]: for each phase φ a stride-1
    convolution with the taps φ, φ + S, … (flipped, zero-filled to a common J = ⌈K/S⌉); one convolution
    computes all S² phases as channels, pixel_shuffle interleaves them and the padding is cropped.
    """
    c_out, c_in, kh, kw = weight.shape
    (sh, sw), (ph, pw) = tuple(m.stride), tuple(m.padding)
    jh, jw = -(-kh // sh), -(-kw // sw)
    padded = weight.new_zeros((c_out, c_in, jh * sh, jw * sw))
    padded[:, :, :kh, :kw] = weight
    # [c_out, c_in, j_y, φ_y, j_x, φ_x] -> [c_in, φ_y, φ_x, c_out, j_y, j_x], taps flipped
    kernel = padded.reshape(c_out, c_in, jh, sh, jw, sw).permute(1, 3, 5, 0, 2, 4).flip(4, 5)
    if sh != sw:  # pixel_shuffle needs one factor: shuffle rows and columns by hand
        phases = F.conv2d(out, kernel.reshape(c_in * sh * sw, c_out, jh, jw), None, 1, (jh - 1, jw - 1))
        n, _, qh, qw = phases.shape
        full = phases.reshape(n, c_in, sh, sw, qh, qw).permute(0, 1, 4, 2, 5, 3).reshape(n, c_in, qh * sh, qw * sw)
    else:
        full = F.pixel_shuffle(F.conv2d(out, kernel.reshape(c_in * sh * sw, c_out, jh, jw), None, 1,
                                        (jh - 1, jw - 1)), sh)
    height, width = shape[2:]
    if full.shape[2] < ph + height or full.shape[3] < pw + width:  # input rows no output reaches stay 0
        full = F.pad(full, (0, max(0, pw + width - full.shape[3]), 0, max(0, ph + height - full.shape[2])))
    return full[:, :, ph:ph + height, pw:pw + width].contiguous()


def _strided_pointwise(m) -> bool:
    """A 1×1, single-group, unpadded convolution with a stride > 1. Its adjoint is the stride-1 adjoint at the
    output's resolution, spread onto every s-th input pixel: Zen 5, 2 threads, ResNet-50's downsampling convs,
    B = 1: 0.68–0.99 ms against oneDNN's strided deconvolution's 1.1–4.2 ms (2,300 page faults a call at
    256→512); B = 8: 4.3–6.2 ms against 7.4–33 ms. (A forward conv by the transposed kernel is as fast, but
    transposing 2048×1024 took 6 ms.)"""
    return (tuple(m.kernel_size) == (1, 1) and m.groups == 1 and not isinstance(m.padding, str)
            and tuple(m.padding) == (0, 0) and int_pair(m.stride) != (1, 1))


def _spread(small: Tensor, stride, shape: tuple) -> Tensor:
    """`small` written onto every stride-th pixel of a zero tensor of `shape` (itself when the stride is 1)."""
    sh, sw = int_pair(stride)
    if (sh, sw) == (1, 1):
        return small
    full = small.new_zeros(shape)
    full[:, :, ::sh, ::sw] = small
    return full


def _adjoint_padding(m, weight: Tensor) -> tuple[int, int] | None:
    """Padding of the forward conv that equals the adjoint of a stride-1, single-group conv; None otherwise."""
    if m.groups != 1 or tuple(m.stride) != (1, 1):
        return None
    pad = tuple(d * (k - 1) - p for d, k, p in zip(m.dilation, weight.shape[2:], m.padding))
    return pad if min(pad) >= 0 else None


def conv_of_ones(m, weight: Tensor, input_shape: torch.Size) -> Tensor:
    """conv(1, W) for an all-ones input of `input_shape`, as a 1×C_out×H'×W' map.

    With numeric padding the map is separable: output pixel (i, j) of channel o sums the kernel K_o = Σ_c W[o, c]
    over the taps that land inside the image, a row condition times a column condition, so it is R·K_o·Cᵀ with
    0/1 matrices R (H'×k_h) and C (W'×k_w): two small matrix products instead of a one-channel convolution
    (Zen 5, 2 threads: 7.9 → 0.3 ms for VGG's 64-channel convs at 224², 2.1 → 0.14 ms for ResNet-50's first conv).
    Below 100² output pixels the one-channel convolution is 20–60 µs faster, and is used.
    """
    taps = _separable_taps(m, weight, input_shape)
    if taps is not None:
        rows, cols = taps
        kernel = weight.sum(dim=1)  # C_out×k_h×k_w: the input is 1 in every channel
        return torch.matmul(rows, torch.matmul(kernel, cols.t()))[None]
    groups = m.groups
    ones = weight.new_ones((1, groups) + tuple(input_shape[2:]))
    per_group = weight.reshape((groups, -1) + weight.shape[1:]).sum(dim=2).reshape((-1, 1) + weight.shape[2:])
    return F.conv2d(ones, per_group, None, m.stride, m.padding, m.dilation, groups)


SEPARABLE_MIN_PIXELS = 100 * 100


def conv_of_bounds(m, w_pos: Tensor, w_neg: Tensor, low: Tensor, high: Tensor, input_shape: torch.Size) -> Tensor:
    """low·conv(1, W⁺) + high·conv(1, W⁻) for per-image bounds low, high (B×1×1×1): z^B's bound terms, B×C_out×H'×W'.

    Where `conv_of_ones` is separable, one product R·(low·K⁺ + high·K⁻)·Cᵀ per image gives the sum (one map
    instead of two, and no pass to combine them); otherwise the two maps are combined.
    """
    taps = _separable_taps(m, w_pos, input_shape)
    if taps is not None:
        rows, cols = taps
        kernels = low * w_pos.sum(dim=1) + high * w_neg.sum(dim=1)  # B×C_out×k_h×k_w (input all ones)
        return torch.matmul(rows, torch.matmul(kernels, cols.t()))
    return (low * conv_of_ones(m, w_pos, input_shape)).addcmul_(high, conv_of_ones(m, w_neg, input_shape))


def _separable_taps(m, weight: Tensor, input_shape: torch.Size) -> tuple[Tensor, Tensor] | None:
    """The 0/1 row and column tap matrices R, C of `conv_of_ones`'s separable form, or None where it is not used
    (string padding, or fewer than SEPARABLE_MIN_PIXELS output pixels)."""
    if isinstance(m.padding, str):
        return None
    dims = list(zip(input_shape[2:], weight.shape[2:], int_pair(m.stride), int_pair(m.padding), int_pair(m.dilation)))
    if _output_size(*dims[0]) * _output_size(*dims[1]) < SEPARABLE_MIN_PIXELS:
        return None
    rows, cols = (_inside_taps(*d, like=weight) for d in dims)
    return rows, cols


def _output_size(size: int, taps: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (taps - 1) - 1) // stride + 1


def _inside_taps(size: int, taps: int, stride: int, padding: int, dilation: int, like: Tensor) -> Tensor:
    """out × taps matrix: 1 where tap t of output position i reads an input position inside [0, size)."""
    out = _output_size(size, taps, stride, padding, dilation)
    pos = (torch.arange(out, device=like.device)[:, None] * stride
           + torch.arange(taps, device=like.device)[None, :] * dilation - padding)
    return ((pos >= 0) & (pos < size)).to(like.dtype)


def int_pair(v) -> tuple[int, int]:
    """A conv or pool argument given as an int or a pair, as a pair of ints."""
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))
