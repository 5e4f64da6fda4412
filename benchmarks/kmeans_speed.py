"""k-means speed of sslx.cluster_head.ClusterHead.fit (FAISS) against a batched torch Lloyd's iteration, same run.

Usage: python benchmarks/kmeans_speed.py [--n 200000] [--d 2048] [--k 1000] [--niter 20] [--baseline-iters 1]
Prints the FAISS fit time (all iterations) and the time per Lloyd iteration of both, with their ratio. The
torch baseline runs only --baseline-iters iterations (a full torch run at the default size takes many minutes).
"""
from __future__ import annotations

import argparse
import os

# torch and faiss each bring an OpenMP runtime; see benchmarks/knn_speed.py. Set before importing either.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import torch  # noqa: E402

from _timing import clustered_data, timed  # noqa: E402
from sslx.cluster_head import ClusterHead  # noqa: E402


def lloyd_iteration(points: torch.Tensor, centroids: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """One batched Lloyd's step: assign every point to its nearest centroid, return the new centroids."""
    assign = torch.cat([torch.cdist(p, centroids).argmin(dim=1) for p in points.split(batch)])
    sums = torch.zeros_like(centroids).index_add_(0, assign, points)
    counts = torch.bincount(assign, minlength=len(centroids)).clamp_min(1).unsqueeze(1)
    return sums / counts


def main() -> None:
    """Time both and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="reference set size")
    parser.add_argument("--d", type=int, default=2048, help="feature dimension")
    parser.add_argument("--k", type=int, default=1000, help="clusters")
    parser.add_argument("--niter", type=int, default=20, help="FAISS k-means iterations")
    parser.add_argument("--baseline-iters", type=int, default=1, help="torch Lloyd iterations to time")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"N={args.n} d={args.d} k={args.k} niter={args.niter} torch threads={torch.get_num_threads()} "
          f"faiss threads={faiss.omp_get_max_threads()} faiss GPUs={faiss.get_num_gpus()} "
          f"load average={os.getloadavg()[0]:.1f}", flush=True)
    base, _ = clustered_data(args.n, args.d, 0, max(args.k, 2), 1.0, args.seed)
    head, faiss_s = timed(ClusterHead.fit, base, args.k, args.seed, niter=args.niter)
    points = torch.from_numpy(base)
    centroids = points[torch.randperm(len(points), generator=torch.Generator().manual_seed(args.seed))[:args.k]]
    start_centroids = centroids.clone()

    def run_baseline() -> torch.Tensor:
        c = start_centroids
        for _ in range(args.baseline_iters):
            c = lloyd_iteration(points, c)
        return c

    _, torch_s = timed(run_baseline)
    faiss_iter, torch_iter = faiss_s / args.niter, torch_s / args.baseline_iters
    print(f"load average at the end={os.getloadavg()[0]:.1f}")
    print(f"\n{'method':<34} {'total s':>9} {'s / iteration':>14} {'speed-up':>9}")
    print(f"{'torch Lloyd (cdist+argmin)':<34} {torch_s:>9.2f} {torch_iter:>14.3f} {1.0:>8.1f}x")
    print(f"{'ClusterHead.fit (faiss.Kmeans)':<34} {faiss_s:>9.2f} {faiss_iter:>14.3f} {torch_iter / faiss_iter:>8.1f}x")
    print(f"\nk-means N={args.n} d={args.d} k={args.k}: {faiss_s:.1f} s for {args.niter} iterations "
          f"(temperature {head.temperature:.3g})")


if __name__ == "__main__":
    main()
