"""AGF's product floor: the convolutions and matrix products its rules cannot avoid, timed against the same run.

Usage:
  python benchmarks/agf_floor.py [--models resnet50,vgg19,alexnet] [--batches 1,8] [--rounds 3] [--threads 2]

For each model and batch size, four things are timed, interleaved round by round (median of the rounds):
  AGF       the full `AGF(model).attribute(x)`;
  fwd+bwd   one forward + input-gradient backward (the baseline of `agf_speed.py`);
  floor     one inference forward plus only the products AGF's rules need, on tensors of the layers' shapes,
            through the same fast paths the rules use (`sslx.attribution.convops`):
              full conv   gradient adjoint, conv(|x|, |W|), and the C and A adjoints (1 forward + 3 adjoints;
                          C and A as one call on a doubled batch where the rule stacks them)
              flat conv   gradient adjoint, conv(|x|, |W|), the C adjoint
              first conv  conv(x, W), one adjoint with [W⁺, W⁻] stacked (z^B)
              Linear      g·W, one |W| pass, |x|·|W|ᵀ and s·|W| (the C-rule), plus the head's forward/backward
            No elementwise pass, pooling, ReLU or reduction is counted: the floor is what AGF would cost if
            all of those were free.
Ratios: AGF / fwd+bwd (the issue-14 target), floor / fwd+bwd (the best any implementation of these rules
with these kernels can reach) and AGF / floor (what the elementwise work and the walk add). A ratio target
below the floor ratio cannot be met without faster kernels.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from agf_speed import DEFAULT_BATCHES, TARGETS, build, forward_backward, interleaved  # noqa: E402
from sslx import AGF  # noqa: E402
from sslx.attribution.agf_conv import stacking_pays  # noqa: E402
from sslx.attribution.buffers import KernelBuffers  # noqa: E402
from sslx.attribution.convops import conv_forward, conv_transpose, flipped_kernel  # noqa: E402
from sslx.attribution.forward import run_model  # noqa: E402
from sslx.attribution.graph import CONV, LINEAR  # noqa: E402


def product_floor(agf: AGF, x: torch.Tensor) -> Callable[[], None]:
    """A function running every product AGF's rules need for x's shapes (random operands of those shapes)."""
    env, _, _ = run_model(agf.graph, x, None)
    jobs: list[Callable[[], object]] = []
    kernels = KernelBuffers()  # |W| and flipped kernels written into kept buffers, as the rule does
    gen = torch.Generator().manual_seed(0)

    def rand(shape: torch.Size) -> torch.Tensor:
        return torch.rand(shape, generator=gen, dtype=x.dtype)

    for step in agf.graph.layers(CONV):
        m, w = step.module, step.module.weight.detach()
        xin, out_shape = env[step.inputs[0]], env[step.node].shape
        xa, r, g = xin.abs(), rand(out_shape), rand(out_shape)
        if step.role == "first":
            both = torch.cat([w.clamp(min=0), w.clamp(max=0)], dim=1)
            shape2 = (xin.shape[0], 2 * xin.shape[1]) + xin.shape[2:]
            jobs.append(lambda m=m, xin=xin, w=w, r=r, both=both, s=shape2: (
                conv_forward(m, xin, w), conv_transpose(m, r, both, s)))
            continue
        adjoints = 3 if step.role == "full" else 2
        # full convs with small maps take the C and A adjoints as one call on a doubled batch, as the rule does
        r_ca = torch.cat([r, r]) if adjoints == 3 and stacking_pays(r, w) else r

        def conv_job(m=m, xa=xa, w=w, r=r, g=g, shape=xin.shape, n=adjoints, r_ca=r_ca) -> None:
            flipped = flipped_kernel(m, r, w, n, kernels)
            wa = torch.abs(w, out=kernels.get("abs", w.shape, w))
            flipped_a = None if flipped is None else \
                torch.abs(flipped, out=kernels.get("flipped_abs", flipped.shape, w))
            conv_transpose(m, g, w, shape, flipped)
            conv_forward(m, xa, wa)
            for _ in range(n - 1 if r_ca is r else 1):
                conv_transpose(m, r_ca, wa, shape, flipped_a)
        jobs.append(conv_job)
    for step in agf.graph.layers(LINEAR):
        w = step.module.weight.detach()
        xa = env[step.inputs[0]].abs()
        g, s = rand((x.shape[0], w.shape[0])), rand((x.shape[0], w.shape[0]))
        if step is agf.graph.head:
            def head_job(w=w, xa=xa, g=g) -> None:
                xg = xa.detach().requires_grad_(True)
                with torch.enable_grad():
                    torch.autograd.grad(F.linear(xg, w), xg, g)
            jobs.append(head_job)
            continue
        wa = torch.empty_like(w)
        jobs.append(lambda w=w, wa=wa, xa=xa, g=g, s=s: (
            g @ w, torch.abs(w, out=wa), F.linear(xa, wa), s @ wa))
    del env

    def run() -> None:
        with torch.no_grad():
            agf.graph.run(x, keep=lambda node: False)  # the inference forward every AGF call starts with
            for job in jobs:
                job()
    return run


def measure(name: str, batch: int, rounds: int) -> dict[str, float]:
    """Per-image median times of AGF, forward+backward and the floor, and their ratios."""
    model = build(name, torch.device("cpu"))
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    agf = AGF(model)
    floor = product_floor(agf, x)
    t_agf, t_fb, t_floor = interleaved([lambda: agf.attribute(x), lambda: forward_backward(model, x), floor],
                                       rounds, torch.device("cpu"))
    med = statistics.median
    ratios = [a / f for a, f in zip(t_agf, t_fb)], [fl / f for fl, f in zip(t_floor, t_fb)]
    return dict(agf=med(t_agf) / batch, fb=med(t_fb) / batch, floor=med(t_floor) / batch,
                ratio=med(ratios[0]), floor_ratio=med(ratios[1]),
                over_floor=med(a / fl for a, fl in zip(t_agf, t_floor)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,vgg19,alexnet")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes for every model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU, {args.threads} threads, float32, 224x224, median of {args.rounds} "
          "interleaved rounds")
    print(f"{'model':9} {'B':>2} {'AGF ms/img':>10} {'fwd+bwd':>8} {'floor':>8} {'AGF/fb':>7} {'floor/fb':>8} "
          f"{'AGF/floor':>9} {'target':>6}  target vs floor")
    for name in args.models.split(","):
        batches = [int(b) for b in args.batches.split(",")] if args.batches else DEFAULT_BATCHES[name]
        for batch in batches:
            r = measure(name, batch, args.rounds)
            target = TARGETS[name]
            verdict = "below the floor" if target < r["floor_ratio"] else "above the floor"
            print(f"{name:9} {batch:>2} {1e3 * r['agf']:10.1f} {1e3 * r['fb']:8.1f} {1e3 * r['floor']:8.1f} "
                  f"{r['ratio']:6.2f}x {r['floor_ratio']:7.2f}x {r['over_floor']:8.2f}x {target:5.1f}x  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
