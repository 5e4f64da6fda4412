"""ViT explanation speed: each transformer method's time ÷ one forward+backward of the same ViT, same run.

Usage: python benchmarks/vit_speed.py [--model vit_b_16|small] [--batch 8] [--repeats 5] [--device cpu|cuda]
       python benchmarks/vit_speed.py --model small --batch 2 --repeats 2      (seconds on a laptop CPU)
ViT-B/16 is torchvision's architecture with random weights (no download). The baseline is
Σ_b logits[b, t_b] backpropagated to the attention probabilities' parameters (what every gradient method pays);
attention_rollout needs no backward, generic_attention one, transformer_attribution one plus the LRP pass.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torchvision

from sslx.explain_api import METHODS

VIT_METHODS = ("attention_rollout", "generic_attention", "transformer_attribution")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("vit_b_16", "small"), default="vit_b_16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def build(name: str) -> tuple[torch.nn.Module, int]:
    """The ViT and its input side."""
    if name == "vit_b_16":
        return torchvision.models.vit_b_16(weights=None), 224
    return torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=4, num_heads=4,
                                                hidden_dim=128, mlp_dim=256, num_classes=100), 64


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print the table; return {method: time ratio}."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model, side = build(args.model)
    model = model.to(device).eval()
    x = torch.randn(args.batch, 3, side, side, device=device)
    target = torch.arange(args.batch, device=device) % 100

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        model(x).gather(1, target[:, None]).sum().backward()

    base = timed(forward_backward, args.repeats, device)
    model.zero_grad(set_to_none=True)
    print(f"{args.model}, batch {args.batch}, {device}, {args.threads} thread(s): forward+backward {base * 1e3:.1f} ms")
    print("| method | ms / batch | × forward+backward |\n|---|---|---|")
    ratios = {}
    for name in VIT_METHODS:
        explainer = METHODS[name](model)
        t = timed(lambda: explainer.attribute(x, target), args.repeats, device)
        ratios[name] = t / base
        print(f"| {name} | {t * 1e3:.1f} | {t / base:.2f} |", flush=True)
    return ratios


if __name__ == "__main__":
    main()
