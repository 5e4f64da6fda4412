"""AGF time and peak memory per image against one forward + input-gradient backward, with issue 14's targets.

Usage:
  python benchmarks/agf_speed.py [--models resnet50,vgg19,alexnet] [--batches 1,8] [--rounds 3]
                                 [--threads 2] [--device cpu|cuda] [--reference PATH] [--no-memory]
                                 [--malloc default|keep] [--processes 3]

Both timings come from the same run, interleaved round by round (AGF, then forward+backward), so load
changes hit both alike; a process's ratio is the median of its per-round ratios. Each model is measured in
`--processes` fresh processes (default 3) and the row shows the median of their ratios and times, with every
process's ratio printed below the table: on a 2-vCPU VM whose vCPUs change placement between processes, one
process's ratio for the same code varied by ±7 % (ResNet-50 B = 1: 2.31-2.63x). Memory is the peak above the
level before one call: resident memory of a fresh process on CPU, `torch.cuda.max_memory_allocated` on
CUDA. `--reference PATH` times the authors' implementation (a checkout of github.com/shirgur/AGFVisualization;
VGG-19 and ResNet-50 only) in the same run, at the batch sizes of `--reference-batches` (default 1);
otherwise (and for AlexNet) the authors' column shows the CPU batch-1 numbers of
../shared/golden/timing_cpu.json. "faster" = authors' ratio / ours (target >= 3x).
`--malloc keep` reruns the benchmark under glibc tunables that stop malloc from returning freed memory to
the system (MALLOC_KEEP below: what `sslx.allocator.keep_freed_memory()` sets, as sslx's command lines do):
AGF allocates many short-lived activation-sized buffers, and with glibc's
defaults each one trimmed and re-allocated costs page faults (the reason PyTorch's CPU performance guides
recommend jemalloc or tcmalloc). Both sides of every ratio run under the same allocator settings.
Default batches: ResNet-50 1,8; VGG-19 1,4; AlexNet 1,8.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import multiprocessing
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"resnet50": 2.5, "vgg19": 2.8, "alexnet": 2.2}  # AGF / (forward + input-gradient backward)
SPEEDUP_TARGET = 3.0  # at least this many times faster than the authors' implementation
DEFAULT_BATCHES = {"resnet50": (1, 8), "vgg19": (1, 4), "alexnet": (1, 8)}
MEMORY_TARGET = 2.0  # AGF peak memory / forward+backward peak memory
PER_IMAGE_SLACK = 1.05  # "per-image time never worse at a larger batch", allowing 5 % timing noise
TIMING_FILE = ROOT.parent / "shared" / "golden" / "timing_cpu.json"
# timing_cpu.json as recorded (CPU, float32, batch 1, 2 threads), for checkouts without ../shared.
RECORDED_AUTHORS_RATIO = {"alexnet": 9.5, "resnet50": 11.57, "vgg19": 8.89}
REFERENCE_BUILDERS = {"vgg19": ("modules.vgg", "vgg19"), "resnet50": ("modules.resnet", "resnet50")}

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from sslx import AGF  # noqa: E402  (needs the repository root on sys.path)
from sslx.allocator import GLIBC_TUNABLES  # noqa: E402

MALLOC_KEEP = GLIBC_TUNABLES  # what sslx.allocator.keep_freed_memory() sets (and sslx's command lines), at start-up


@dataclass
class Row:
    """One model and batch size: times per image, memory and the authors' ratio."""

    model: str
    batch: int
    agf_s: float
    fb_s: float
    ratio: float
    agf_mib: float | None = None
    fb_mib: float | None = None
    authors: float | None = None  # the authors' AGF / our forward+backward, same batch

    @property
    def speedup(self) -> float | None:
        """How many times faster our AGF is than the authors' (their ratio over ours)."""
        return None if self.authors is None else self.authors / self.ratio

    @property
    def speedup_met(self) -> bool:
        return self.speedup is None or self.speedup >= SPEEDUP_TARGET

    @property
    def time_met(self) -> bool:
        return self.ratio <= TARGETS.get(self.model, float("inf"))

    @property
    def memory_ratio(self) -> float | None:
        return None if self.agf_mib is None or not self.fb_mib else self.agf_mib / self.fb_mib

    @property
    def memory_met(self) -> bool:
        return self.memory_ratio is None or self.memory_ratio <= MEMORY_TARGET


def build(name: str, device: torch.device) -> torch.nn.Module:
    """A torchvision model with its default random initialisation (seed 0), in eval mode."""
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval().to(device)


def forward_backward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One forward and the gradient of each image's top logit with respect to the input."""
    x = x.detach().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), x)
    return grad


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call; on CUDA measured with events after a synchronize."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: list[Callable[[], object]], rounds: int, device: torch.device) -> list[list[float]]:
    """Per-round times of each function, after one warm-up call each."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, out in zip(fns, times):
            out.append(seconds(fn, device))
    return times


def cuda_peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak allocated CUDA memory of one call above the level before it."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def cpu_peak_mib(name: str, method: str, batch: int, size: int, threads: int) -> float:
    """Peak resident memory (MiB) of one call above the level before it, in a fresh process."""
    cmd = [sys.executable, __file__, "--measure-memory", method, "--models", name, "--batches", str(batch),
           "--size", str(size), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _resident_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1])


def measure_memory_here(name: str, method: str, batch: int, size: int) -> float:
    """The body of `cpu_peak_mib`: reset the peak (VmHWM) to the current RSS, run once, report the rise."""
    model = build(name, torch.device("cpu"))
    x = torch.randn(batch, 3, size, size)
    agf = AGF(model)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _resident_kib("VmRSS")
    agf.attribute(x) if method == "agf" else forward_backward(model, x)
    return (_resident_kib("VmHWM") - before) / 1024


@contextlib.contextmanager
def reference_on_path(path: Path, device: torch.device) -> Iterator[None]:
    """Import the authors' modules from `path`; on CPU their `.cuda()` calls become no-ops (restored after)."""
    sys.path.insert(0, str(path))
    cuda = torch.Tensor.cuda
    if device.type == "cpu":
        torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda
        sys.path.remove(str(path))


def reference_agf(path: Path, name: str, model: torch.nn.Module, device: torch.device) -> Callable | None:
    """A callable running the authors' AGF on a copy of `model`'s weights, or None for models they lack."""
    if name not in REFERENCE_BUILDERS:
        return None
    module, builder = REFERENCE_BUILDERS[name]
    with reference_on_path(path, device):
        ref = getattr(__import__(module, fromlist=[builder]), builder)()
    ref.load_state_dict(model.state_dict(), strict=True)
    ref = ref.eval().to(device)

    def run(x: torch.Tensor) -> torch.Tensor:
        with reference_on_path(path, device):
            ref(x.detach().clone().requires_grad_(True))
            return ref.AGF()

    return run


def recorded_authors_ratios() -> tuple[dict[str, float], str]:
    """Authors' AGF / fwd+bwd at batch 1 on CPU, and where the numbers come from."""
    if TIMING_FILE.is_file():
        data = json.loads(TIMING_FILE.read_text())
        return {k: v["ratio"] for k, v in data.items() if isinstance(v, dict)}, f"{TIMING_FILE} (CPU, B=1)"
    return dict(RECORDED_AUTHORS_RATIO), "timing_cpu.json as recorded in this script (CPU, B=1; file not found)"


def measure(name: str, batches: list[int], args: argparse.Namespace, device: torch.device,
            authors: dict[str, float]) -> list[Row]:
    """Rows for one model: interleaved timings, memory and the authors' column."""
    model = build(name, device)
    agf = AGF(model)
    ref = reference_agf(Path(args.reference), name, model, device) if args.reference else None
    rows = []
    for b in batches:
        x = torch.randn(b, 3, args.size, args.size, device=device)
        fns = [lambda: agf.attribute(x), lambda: forward_backward(model, x)]
        timed_ref = ref is not None and b in args.reference_batches
        if timed_ref:
            fns.append(lambda: ref(x))
        times = interleaved(fns, args.rounds, device)
        ratio = statistics.median(a / f for a, f in zip(times[0], times[1]))
        row = Row(name, b, statistics.median(times[0]) / b, statistics.median(times[1]) / b, ratio)
        if timed_ref:
            row.authors = statistics.median(r / f for r, f in zip(times[2], times[1]))
        elif ref is None and b == 1 and device.type == "cpu":  # recorded numbers are CPU, batch 1
            row.authors = authors.get(name)
        if not args.no_memory:
            if device.type == "cuda":
                row.agf_mib = cuda_peak_mib(lambda: agf.attribute(x), device)
                row.fb_mib = cuda_peak_mib(lambda: forward_backward(model, x), device)
            else:
                row.agf_mib = cpu_peak_mib(name, "agf", b, args.size, args.threads)
                row.fb_mib = cpu_peak_mib(name, "fwd+bwd", b, args.size, args.threads)
        rows.append(row)
    return rows


def combine(runs: list[Row]) -> Row:
    """One row from the same model and batch measured in several processes: the median ratio, times and authors'
    ratio; memory from the run that measured it."""
    memory = next((r for r in runs if r.agf_mib is not None), runs[0])
    authors = [r.authors for r in runs if r.authors is not None]
    return Row(runs[0].model, runs[0].batch, statistics.median(r.agf_s for r in runs),
               statistics.median(r.fb_s for r in runs), statistics.median(r.ratio for r in runs),
               memory.agf_mib, memory.fb_mib, statistics.median(authors) if authors else None)


def _timing_only(args: argparse.Namespace) -> argparse.Namespace:
    """The options for a repeat process: memory is measured once per row, by the first process."""
    return argparse.Namespace(**{**vars(args), "no_memory": True})


def measure_in_fresh_process(name: str, batches: list[int], args: argparse.Namespace, device: torch.device,
                             authors: dict[str, float]) -> list[Row]:
    """`measure` in a new interpreter, so that no model's row depends on which models ran before it.

    The allocator's state carries over within a process: AlexNet measured after ResNet-50 and VGG-19 in one
    process gave 2.53x / 2.27x, alone 2.12x / 1.96x (same code, same machine, minutes apart).
    """
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_measure_child, name, batches, args, device, authors).result()


def _measure_child(name: str, batches: list[int], args: argparse.Namespace, device: torch.device,
                   authors: dict[str, float]) -> list[Row]:
    torch.set_num_threads(args.threads)
    return measure(name, batches, args, device, authors)


HEADER = (f"{'model':<9}{'B':>3}{'AGF s/img':>11}{'fwd+bwd s/img':>15}{'ratio':>8}{'target':>8}{'met':>5}"
          f"{'AGF MiB':>9}{'fwd+bwd MiB':>13}{'mem':>7}{'met':>5}{'authors':>9}{'faster':>8}{'met':>5}")


def _fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def format_row(r: Row) -> str:
    """One table line."""
    target = TARGETS.get(r.model)
    return (f"{r.model:<9}{r.batch:>3}{r.agf_s:>11.4f}{r.fb_s:>15.4f}{r.ratio:>7.2f}x"
            f"{_fmt(target, '.1f', 'x'):>8}{'yes' if r.time_met else 'NO':>5}"
            f"{_fmt(r.agf_mib, '.0f'):>9}{_fmt(r.fb_mib, '.0f'):>13}{_fmt(r.memory_ratio, '.2f', 'x'):>7}"
            f"{'yes' if r.memory_met else 'NO':>5}{_fmt(r.authors, '.1f', 'x'):>9}"
            f"{_fmt(r.speedup, '.1f', 'x'):>8}{'yes' if r.speedup_met else 'NO':>5}")


def failures(rows: list[Row]) -> list[str]:
    """Every target a row (or a model's batch series) misses."""
    out = [f"{r.model} B={r.batch}: ratio {r.ratio:.2f}x > {TARGETS[r.model]}x" for r in rows if not r.time_met]
    out += [f"{r.model} B={r.batch}: memory {r.memory_ratio:.2f}x > {MEMORY_TARGET}x" for r in rows if not r.memory_met]
    out += [f"{r.model} B={r.batch}: {r.speedup:.1f}x faster than the authors' code < {SPEEDUP_TARGET}x"
            for r in rows if not r.speedup_met]
    for small in rows:
        for large in rows:
            if large.model == small.model and large.batch > small.batch and large.agf_s > small.agf_s * PER_IMAGE_SLACK:
                out.append(f"{small.model}: AGF per image {large.agf_s:.4f}s at B={large.batch} is worse than "
                           f"{small.agf_s:.4f}s at B={small.batch}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet50,vgg19,alexnet")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes for every model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--reference", default=None, help="a checkout of the authors' AGFVisualization")
    parser.add_argument("--reference-batches", default="1",
                        help="batch sizes at which the authors' code is timed (default 1; 'all' for every batch)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--malloc", choices=("default", "keep"), default="default",
                        help="'keep': rerun under glibc tunables that keep freed memory (no trimming)")
    parser.add_argument("--processes", type=int, default=3,
                        help="fresh processes per model; rows show the median of their ratios (default 3)")
    parser.add_argument("--measure-memory", default=None, help=argparse.SUPPRESS)  # internal: one measurement
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print the table and whether every target is met; exit status 0 either way (a report, not a test)."""
    args = parse_args(argv)
    if args.malloc == "keep" and os.environ.get("GLIBC_TUNABLES") != MALLOC_KEEP:
        env = dict(os.environ, GLIBC_TUNABLES=MALLOC_KEEP)  # read by glibc at start-up only: re-execute
        os.execve(sys.executable, [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)], env)
    args.reference_batches = (range(1, 1 << 30) if args.reference_batches == "all"
                              else {int(b) for b in args.reference_batches.split(",")})
    torch.set_num_threads(args.threads)
    if args.measure_memory:
        print(measure_memory_here(args.models, args.measure_memory, int(args.batches), args.size))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    authors, source = recorded_authors_ratios()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    allocator = f"GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}" if os.environ.get("GLIBC_TUNABLES") else "default malloc"
    print(f"torch {torch.__version__}, {where}, {allocator}, float32, {args.size}x{args.size}, median of {args.rounds} "
          f"interleaved rounds in each of {args.processes} fresh processes, median over the processes; targets: ratio per model, memory <= {MEMORY_TARGET}x, per-image time not worse "
          f"at a larger batch (5 % slack)")
    if args.reference:
        print(f"authors: their AGF / our fwd+bwd measured now from {args.reference} at B in "
              f"{'all' if isinstance(args.reference_batches, range) else sorted(args.reference_batches)}; "
              f"models they lack: {source}" if device.type == "cpu" else
              f"authors: their AGF / our fwd+bwd measured now from {args.reference}")
    else:
        print(f"authors: {source}" if device.type == "cpu" else "authors: no recorded GPU numbers (use --reference)")
    if args.processes < 1:
        raise SystemExit(f"--processes must be >= 1, got {args.processes}")
    print(HEADER, flush=True)
    rows: list[Row] = []
    spreads: list[str] = []
    for name in args.models.split(","):
        batches = [int(b) for b in args.batches.split(",")] if args.batches else list(DEFAULT_BATCHES.get(name, (1,)))
        runs = [measure_in_fresh_process(name, batches, args if i == 0 else _timing_only(args), device, authors)
                for i in range(args.processes)]
        for per_batch in zip(*runs):
            row = combine(list(per_batch))
            rows.append(row)
            print(format_row(row), flush=True)
            spreads.append(f"{row.model} B={row.batch}: " + ", ".join(f"{r.ratio:.2f}x" for r in per_batch))
    print(f"ratio in each of the {args.processes} processes:")
    for line in spreads:
        print(f"  {line}")
    missed = failures(rows)
    print("all targets met: " + ("yes" if not missed else "NO"))
    for line in missed:
        print(f"  missed: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
