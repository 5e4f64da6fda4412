"""Run an unmodified ViT once and record what transformer explanations need: per block its attention
probabilities, q/k/v, residual operands and MLP inputs, plus the classifier's Linear inputs.

Works on torchvision `VisionTransformer` (encoder.layers[i].self_attention = nn.MultiheadAttention) and on
timm/DINO-style ViTs (blocks[i].attn with a fused `qkv` Linear). Each attention module's `forward` is replaced
for the duration of one call by an explicit computation with the module's own weights, and forward hooks
record the rest; everything is removed and the train/eval mode restored before returning.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .._validate import check_input_channels, check_image_batch, check_model_matches


@dataclass
class BlockRecord:
    """One transformer block's recorded tensors (B = batch, h = heads, N = tokens, D = width)."""

    x: Tensor | None = None                        # block input, B×N×D
    attn_in: Tensor | None = None                  # norm1 output = qkv input, B×N×D
    q: Tensor | None = None                        # B×h×N×d
    k: Tensor | None = None
    v: Tensor | None = None
    attn: Tensor | None = None                     # softmax probabilities, B×h×N×N
    merged: Tensor | None = None                   # attn @ v with heads merged = proj input, B×N×D
    attn_out: Tensor | None = None                 # attention branch output, B×N×D
    qkv_weight: Tensor | None = None               # 3D×D, rows [q; k; v], each (heads × head_dim)
    proj_weight: Tensor | None = None
    mlp_out: Tensor | None = None                  # MLP branch output, B×N×D
    mlp_linears: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # (input, weight) in call order
    out: Tensor | None = None                      # block output, checked to be x + attn_out + mlp_out
    grad: Tensor | None = None                     # ∂ score / ∂ attn, filled by `attention_gradients`


@dataclass
class ViTRun:
    """The recorded forward pass: output B×C, per-block records, classifier Linear (input, weight) in order."""

    output: Tensor
    blocks: list[BlockRecord]
    head_linears: list[tuple[Tensor, Tensor]]
    grid: tuple[int, int]
    image_size: tuple[int, int]
    pooling: str = "cls"  # how the classifier reads the tokens: the CLS token, or the mean of the patch tokens


def find_blocks(model: nn.Module) -> tuple[nn.ModuleList | nn.Sequential, str]:
    """The ViT's transformer blocks and their style ("torchvision" or "timm"); TypeError when there are none."""
    for path, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > 0:
            first = module[0]
            if isinstance(getattr(first, "self_attention", None), nn.MultiheadAttention) and hasattr(first, "mlp"):
                return module, "torchvision"
            attn = getattr(first, "attn", None)
            if attn is not None and isinstance(getattr(attn, "qkv", None), nn.Linear) and hasattr(first, "mlp"):
                return module, "timm"
    raise TypeError(f"{type(model).__name__} is not a Vision Transformer this walk knows: expected torchvision "
                    "encoder.layers[i].self_attention (nn.MultiheadAttention) or timm/DINO blocks[i].attn.qkv")


def _patch_stride(model: nn.Module) -> int:
    """Pixels per token side: the stride of the patch projection, times those of a convolutional stem before it
    (the convs inside a `patch_embed` module); without a `patch_embed`, the first Conv2d is the projection."""
    embed = next((m.patch_embed for m in model.modules() if isinstance(getattr(m, "patch_embed", None), nn.Module)),
                 None)
    convs = [m for m in (model if embed is None else embed).modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise TypeError("no Conv2d patch embedding found in the ViT")
    convs = convs[:1] if embed is None else convs
    proj = convs[-1]
    if proj.kernel_size != proj.stride or proj.kernel_size[0] != proj.kernel_size[1]:
        raise TypeError(f"the ViT's patch embedding must be a square non-overlapping Conv2d, got "
                        f"kernel {proj.kernel_size} stride {proj.stride}")
    stride = 1
    for conv in convs:
        if conv.stride[0] != conv.stride[1]:
            raise TypeError(f"the ViT's patch-embedding stem has a non-square stride {conv.stride}")
        stride *= int(conv.stride[0])
    return stride


def _check_pooling(model: nn.Module) -> None:
    pool = getattr(model, "global_pool", None)
    if isinstance(pool, str) and pool not in ("token", ""):
        raise TypeError(f"only CLS-token ViTs are supported, this one pools with global_pool={pool!r}")


def _timm_attention(module: nn.Module, rec: BlockRecord, returns_tuple: list[bool | None],
                    original: Callable[..., Any]) -> Callable[..., Any]:
    heads = int(module.num_heads)
    scale = float(module.scale)
    for name in ("q_norm", "k_norm", "norm"):
        sub = getattr(module, name, None)
        if sub is not None and not isinstance(sub, nn.Identity):
            raise TypeError(f"attention with a {name} layer ({type(sub).__name__}) is not supported")

    def forward(x: Tensor, *args: Any, **kwargs: Any) -> Any:
        if any(a is not None and a is not False for a in args) or \
                any(v is not None and v is not False for v in kwargs.values()):  # attn_mask=None, is_causal=False
            raise ValueError("attention masks are not supported by the transformer explanation methods")
        if returns_tuple[0] is None:  # DINO returns (x, attn), timm returns x: ask the original once
            with torch.no_grad():
                returns_tuple[0] = isinstance(original(x), tuple)
        b, n, d = x.shape
        qkv = F.linear(x, module.qkv.weight, module.qkv.bias).reshape(b, n, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)
        merged = (attn @ v).transpose(1, 2).reshape(b, n, d)
        out = F.linear(merged, module.proj.weight, module.proj.bias)
        rec.attn_in, rec.q, rec.k, rec.v, rec.attn, rec.merged, rec.attn_out = x, q, k, v, attn, merged, out
        rec.qkv_weight, rec.proj_weight = module.qkv.weight, module.proj.weight
        return (out, attn) if returns_tuple[0] else out

    return forward


def _torchvision_attention(module: nn.MultiheadAttention, rec: BlockRecord) -> Callable[..., Any]:
    if not module.batch_first or not module._qkv_same_embed_dim or module.bias_k is not None \
            or module.add_zero_attn:
        raise TypeError("only batch_first self-attention with a packed in_proj (torchvision ViT) is supported")
    heads = module.num_heads

    def forward(query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, None]:
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ValueError("attention masks are not supported by the transformer explanation methods")
        if not (query is key is value):
            raise TypeError("only self-attention (query is key is value) is supported")
        b, n, d = query.shape
        qkv = F.linear(query, module.in_proj_weight, module.in_proj_bias).reshape(b, n, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (d // heads) ** -0.5, dim=-1)
        merged = (attn @ v).transpose(1, 2).reshape(b, n, d)
        out = F.linear(merged, module.out_proj.weight, module.out_proj.bias)
        rec.attn_in, rec.q, rec.k, rec.v, rec.attn, rec.merged, rec.attn_out = query, q, k, v, attn, merged, out
        rec.qkv_weight, rec.proj_weight = module.in_proj_weight, module.out_proj.weight
        return out, None

    return forward


@contextlib.contextmanager
def _instrumented(model: nn.Module, records: list[BlockRecord], head_linears: list[tuple[Tensor, Tensor]]
                  ) -> Iterator[None]:
    blocks, style = find_blocks(model)
    handles: list[Any] = []
    patched: list[tuple[nn.Module, Any]] = []
    was_training = model.training
    block_ids = {id(m) for block in blocks for m in block.modules()}
    done = [False]

    def linear_hook(store: list[tuple[Tensor, Tensor]], only_after_blocks: bool) -> Callable[..., None]:
        def hook(module: nn.Linear, args: tuple[Tensor, ...], output: Tensor) -> None:
            if not only_after_blocks or done[0]:
                store.append((args[0], module.weight))
        return hook

    try:
        model.eval()  # dropout / drop-path off: the explained function is the inference network
        for i, block in enumerate(blocks):
            rec = records[i]
            handles.append(block.register_forward_pre_hook(
                lambda m, args, rec=rec: setattr(rec, "x", args[0])))
            handles.append(block.mlp.register_forward_hook(
                lambda m, args, out, rec=rec: setattr(rec, "mlp_out", out)))
            handles.append(block.register_forward_hook(
                lambda m, args, out, rec=rec: setattr(rec, "out", out)))
            for lin in block.mlp.modules():
                if isinstance(lin, nn.Linear):
                    handles.append(lin.register_forward_hook(linear_hook(rec.mlp_linears, False)))
            attn = block.self_attention if style == "torchvision" else block.attn
            previous = attn.__dict__.get("forward")
            patched.append((attn, previous))
            attn.forward = (_torchvision_attention(attn, rec) if style == "torchvision"
                            else _timm_attention(attn, rec, [None], type(attn).forward.__get__(attn)))
        handles.append(blocks[len(blocks) - 1].register_forward_hook(
            lambda m, args, out: done.__setitem__(0, True)))
        for module in model.modules():
            if isinstance(module, nn.Linear) and id(module) not in block_ids:
                handles.append(module.register_forward_hook(linear_hook(head_linears, True)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, previous in patched:
            del module.forward
            if previous is not None:
                module.forward = previous
        model.train(was_training)


def record_vit(model: nn.Module, x: Tensor) -> ViTRun:
    """Run `model` on `x` with gradients enabled and return every tensor the transformer methods need."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_image_batch(x, channels=None)
    check_model_matches(model, x)
    patch = next(((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if patch is not None:  # the patch embedding (its absence is reported by _patch_stride)
        check_input_channels(x, {patch[0]: patch[1].in_channels})
    _check_pooling(model)
    blocks, _ = find_blocks(model)
    stride = _patch_stride(model)
    if x.shape[-2] % stride or x.shape[-1] % stride:
        raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size {stride}")
    records = [BlockRecord() for _ in blocks]
    head_linears: list[tuple[Tensor, Tensor]] = []
    with torch.enable_grad(), _instrumented(model, records, head_linears):
        output = model(x.detach().requires_grad_(True))
    if not isinstance(output, Tensor) or output.dim() != 2:
        raise TypeError(f"the ViT must return B×C logits or features, got "
                        f"{tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__}")
    missing = [i for i, r in enumerate(records) if r.attn is None or r.x is None or r.mlp_out is None]
    if missing:
        raise TypeError(f"blocks {missing} were not run by the model's forward; cannot explain it")
    for i, r in enumerate(records):
        expected = r.x + r.attn_out + r.mlp_out
        if not isinstance(r.out, Tensor) or r.out.shape != expected.shape or not torch.allclose(
                r.out, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(expected.detach().abs().max()))):
            raise TypeError(f"block {i} is not the pre-norm residual block x + attn(norm1(x)) + mlp(norm2(·)) the "
                            "transformer methods assume (layer scale, post-norm or extra branches are not supported)")
    grid = (x.shape[-2] // stride, x.shape[-1] // stride)
    tokens = records[0].attn.shape[-1]
    if tokens < grid[0] * grid[1] + 1:
        raise TypeError(f"{tokens} tokens cannot hold a CLS token and a {grid[0]}×{grid[1]} patch grid")
    pooling = next((m.token_pooling for m in model.modules() if isinstance(getattr(m, "token_pooling", None), str)),
                   "cls")
    if pooling not in ("cls", "mean"):
        raise TypeError(f"unknown token pooling {pooling!r} (expected 'cls' or 'mean')")
    return ViTRun(output, records, head_linears, grid, (x.shape[-2], x.shape[-1]), pooling)


def attention_gradients(run: ViTRun, target: Tensor) -> None:
    """Fill each block's `grad` with ∂(Σ_b output[b, target_b]) / ∂ attn (images are independent)."""
    with torch.enable_grad():  # the caller may be inside torch.no_grad()
        score = run.output.gather(1, target[:, None]).sum()
    grads = torch.autograd.grad(score, [r.attn for r in run.blocks], allow_unused=True)
    for rec, grad in zip(run.blocks, grads):
        rec.grad = torch.zeros_like(rec.attn) if grad is None else grad
