"""experiments/train_moco.py's shuffled-BN forward and in-batch-negative InfoNCE (the options tried against the
MoCo collapse, docs/dev-notes/issue-15b.md)."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def train_moco(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    return importlib.import_module("train_moco")


def _module(train_moco, **kw):
    torch.manual_seed(0)
    return train_moco.MoCoModule((4, 4, 4, 4), 4, 8, 16, 0.99, 0.2, 1e-3, 0.0, 10, 0, 0.5, **kw)


def test_split_forward_restores_the_row_order(train_moco):
    module = _module(train_moco, key_splits=2)
    enc = module.encoder_q.double().eval()  # eval: BatchNorm uses running stats, so grouping cannot change rows
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    order = torch.tensor([3, 7, 0, 5, 1, 6, 2, 4])
    assert torch.allclose(module._split_forward(enc, x, order), enc(x), atol=1e-10)


def test_split_forward_uses_group_statistics_in_training(train_moco):
    module = _module(train_moco, key_splits=2)
    enc = module.encoder_q.double().train()
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    order = torch.arange(8)
    by_group = module._split_forward(enc, x, order)
    assert torch.allclose(by_group[:4], enc(x[:4]), atol=1e-10)   # group 1 alone
    assert not torch.allclose(by_group, enc(x), atol=1e-6)         # not the whole-batch statistics


def test_bad_key_splits_are_refused(train_moco):
    with pytest.raises(ValueError, match="key_splits must be >= 1"):
        _module(train_moco, key_splits=0)
    module = _module(train_moco, key_splits=3)
    with pytest.raises(ValueError, match="multiple of key_splits 3"):
        module._split_forward(module.encoder_q, torch.randn(8, 3, 32, 32), torch.arange(8))
