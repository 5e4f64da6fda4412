"""Fixtures shared by the sslx.probe tests: one CPU thread, and tiny random RotNet-layout checkpoints."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ssl_fixtures import RotNetAlexNet, legacy_state, random_model, save

TINY_WIDTHS = (8, 16, 16, 16, 16)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest single-threaded (and two threads crawl on a busy shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_tiny_rotnet(path: Path, seed: int) -> Path:
    """Save a random RotNet-layout AlexNet checkpoint (gidariss layout, 64-px input, narrow widths) at `path`."""
    ref = random_model(lambda: RotNetAlexNet(TINY_WIDTHS, fc=16, input_size=64), seed=seed)
    save({"epoch": 1, "network": legacy_state(ref.state_dict())}, path)
    return path
