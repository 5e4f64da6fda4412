"""Linear-probe accuracy of an SSL model's frozen penultimate features on the 12 true scene classes.

    python experiments/linear_probe_eval.py rotnet            # an embedded asset (rotnet|sela|scan)
    python experiments/linear_probe_eval.py path/to/model.pth # any checkpoint ssl_models.load reads

Features (the input of the SSL head) of single-object train scenes are standardised and fit by
multinomial logistic regression (full-batch L-BFGS, L2 penalty); the accuracy is on the test split.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scene_tensors import SceneTensors, load_split, to_input  # noqa: E402

NUM_CLASSES = 12


@torch.no_grad()
def extract(features: Callable[[Tensor], Tensor], scenes: SceneTensors, batch_size: int = 200) -> Tensor:
    """B×D float64 features of every scene (call with the model in eval mode)."""
    chunks = [features(to_input(scenes.images[i:i + batch_size])) for i in range(0, len(scenes), batch_size)]
    out = torch.cat(chunks).double()
    if out.dim() != 2 or not torch.isfinite(out).all():
        raise ValueError(f"features must be finite B×D, got shape {tuple(out.shape)}")
    return out


def fit_logistic(x: Tensor, y: Tensor, num_classes: int, l2: float = 1e-3, steps: int = 200) -> tuple[Tensor, Tensor]:
    """Weights D×K and bias K of L2-regularised multinomial logistic regression (full-batch L-BFGS)."""
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need as many labels as feature rows (> 0), got {x.shape[0]} and {y.shape[0]}")
    w = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def probe_accuracy(features: Callable[[Tensor], Tensor], train: SceneTensors, test: SceneTensors,
                   l2: float = 1e-3) -> dict[str, float]:
    """Train/test accuracy of a linear classifier on standardised frozen features."""
    xtr, xte = extract(features, train), extract(features, test)
    mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    w, b = fit_logistic(xtr, train.labels, NUM_CLASSES, l2)
    return {"probe_train_acc": float(((xtr @ w + b).argmax(1) == train.labels).double().mean()),
            "probe_test_acc": float(((xte @ w + b).argmax(1) == test.labels).double().mean()),
            "feature_dim": float(xtr.shape[1])}


def probe_model(model: torch.nn.Module, train_size: int = 9600, test_size: int = 1200, seed: int = 0) -> dict[str, float]:
    """Linear-probe accuracy of `model.features` (an ssl_models.SSLModel) on single-object scenes."""
    model.eval()
    train = load_split("train", train_size, "single", seed=seed)
    test = load_split("test", test_size, "single", seed=seed)
    return probe_accuracy(model.features, train, test)


def main() -> None:
    """Command line: probe an embedded asset or a checkpoint file."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="rotnet | sela | scan (embedded assets) or a checkpoint path")
    parser.add_argument("--train-size", type=int, default=9600)
    parser.add_argument("--test-size", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import ssl_models

    model = ssl_models.embedded(args.model) if args.model in ("rotnet", "sela", "scan") else ssl_models.load(args.model)
    start = time.time()
    result = probe_model(model, args.train_size, args.test_size)
    print(f"{args.model}: linear probe on {result['feature_dim']:.0f}-d features: "
          f"train {result['probe_train_acc']:.4f}, test {result['probe_test_acc']:.4f} "
          f"(chance {1 / NUM_CLASSES:.4f}; {time.time() - start:.0f}s)")


if __name__ == "__main__":
    main()
