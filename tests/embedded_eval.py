"""Shared by the embedded-model tests: the experiments' scene loader, kNN-20 and linear-probe accuracy of features."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 12


def scene_tensors() -> ModuleType:
    """experiments/scene_tensors.py imported by path (registered once in sys.modules)."""
    name = "experiments_scene_tensors"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / "scene_tensors.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def knn_accuracy(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, k: int = 20) -> float:
    """Top-1 accuracy of a majority vote among the k most cosine-similar train features."""
    sims = F.normalize(test_f, dim=1) @ F.normalize(train_f, dim=1).T
    votes = F.one_hot(train_y[sims.topk(k, dim=1).indices], NUM_CLASSES).sum(1)
    return float((votes.argmax(1) == test_y).double().mean())


def probe_accuracy(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor) -> float:
    """Test accuracy of an L2-regularised linear probe (L-BFGS) on standardised features."""
    mean, std = train_f.mean(0), train_f.std(0).clamp_min(1e-6)
    a, b = (train_f - mean) / std, (test_f - mean) / std
    w = torch.zeros(a.shape[1], NUM_CLASSES, requires_grad=True)
    bias = torch.zeros(NUM_CLASSES, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(a @ w + bias, train_y) + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return float(((b @ w + bias).argmax(1) == test_y).double().mean())
