"""AGF time and peak memory per image vs one forward+backward (input gradient) of the same model and batch.

Usage: python benchmarks/agf_speed.py [--models resnet50,vgg19,alexnet] [--batches 1,8] [--rounds 3]
Prints ratios measured in the same run, plus the authors' per-image ratios from ../shared/golden/README.md.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision

from sslx import AGF

AUTHORS_RATIO = {"vgg19": 8.9, "resnet50": 11.6, "alexnet": 9.5}  # reference AGF / fwd+bwd, B=1, CPU


def forward_backward(model, x):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), x)
    return grad


def timed(fn, rounds):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_extra_mib(model_name: str, method: str, batch: int, size: int, threads: int) -> float:
    """Peak resident memory (MiB) of one call above the level before it, measured in a fresh process."""
    code = (
        "import sys, torch, torchvision\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from agf_speed import forward_backward\n"
        "from sslx import AGF\n"
        f"torch.set_num_threads({threads}); torch.manual_seed(0)\n"
        f"model = getattr(torchvision.models, {model_name!r})(weights=None).eval()\n"
        f"x = torch.randn({batch}, 3, {size}, {size})\n"
        "agf = AGF(model)\n"
        "def kib(field):\n"
        "    line = [l for l in open('/proc/self/status') if l.startswith(field)][0]\n"
        "    return int(line.split()[1])\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"  # reset the peak (VmHWM) to the current RSS
        "before = kib('VmRSS')\n"
        f"agf.attribute(x) if {method!r} == 'agf' else forward_backward(model, x)\n"
        "print((kib('VmHWM') - before) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet50,vgg19,alexnet")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, float32, {args.size}x{args.size}, median of {args.rounds}")
    print(f"{'model':<10}{'B':>3}{'AGF s/img':>11}{'fwd+bwd s/img':>15}{'ratio':>8}{'authors (B=1)':>15}"
          f"{'AGF MiB':>9}{'fwd+bwd MiB':>13}{'mem ratio':>11}")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        agf = AGF(model)
        for b in map(int, args.batches.split(",")):
            x = torch.randn(b, 3, args.size, args.size)
            agf.attribute(x)  # warm-up
            forward_backward(model, x)
            t_agf = t_fb = 0.0
            for _ in range(args.rounds):  # interleaved, so load changes hit both alike
                t_agf += timed(lambda: agf.attribute(x), 1)
                t_fb += timed(lambda: forward_backward(model, x), 1)
            ratio = t_agf / t_fb
            m_fb = peak_extra_mib(name, "fwd+bwd", b, args.size, args.threads)
            m_agf = peak_extra_mib(name, "agf", b, args.size, args.threads)
            print(f"{name:<10}{b:>3}{t_agf / args.rounds / b:>11.3f}{t_fb / args.rounds / b:>15.3f}{ratio:>7.2f}x"
                  f"{AUTHORS_RATIO.get(name, float('nan')):>14.1f}x{m_agf:>9.0f}{m_fb:>13.0f}{m_agf / max(m_fb, 1e-9):>10.2f}x")


if __name__ == "__main__":
    main()
