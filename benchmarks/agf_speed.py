"""AGF time and peak memory per image vs one forward+backward (input gradient) of the same model and batch.

Usage: python benchmarks/agf_speed.py [--models resnet50,vgg19,alexnet] [--batches 1,8] [--rounds 3]
Prints ratios measured in the same run, plus the authors' per-image ratios from ../shared/golden/README.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import torch
import torchvision

from sslx import AGF

AUTHORS_RATIO = {"vgg19": 8.9, "resnet50": 11.6, "alexnet": 9.5}  # reference AGF / fwd+bwd, B=1, CPU


def forward_backward(model, x):
    x = x.clone().requires_grad_(True)
    out = model(x)
    out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
    return x.grad


def timed(fn, rounds):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_extra_bytes(fn) -> int:
    """Peak resident memory above the level before the call (sampled every 2 ms; Linux only)."""
    base, peak, done = _rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    fn()
    done.set()
    thread.join()
    return max(peak[0], _rss()) - base


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
            m_fb = peak_extra_bytes(lambda: forward_backward(model, x)) / 2**20
            m_agf = peak_extra_bytes(lambda: agf.attribute(x)) / 2**20
            print(f"{name:<10}{b:>3}{t_agf / args.rounds / b:>11.3f}{t_fb / args.rounds / b:>15.3f}{ratio:>7.2f}x"
                  f"{AUTHORS_RATIO.get(name, float('nan')):>14.1f}x{m_agf:>9.0f}{m_fb:>13.0f}{m_agf / max(m_fb, 1e-9):>10.2f}x")


if __name__ == "__main__":
    main()
