"""benchmarks/agf_floor.py: the floor runs exactly the convolutions AGF runs (no timing)."""
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import agf_floor  # noqa: E402
import sslx.attribution.agf_conv as agf_conv  # noqa: E402
import sslx.attribution.agf_rules as agf_rules  # noqa: E402
from sslx import AGF  # noqa: E402


def _count_products(monkeypatch, calls: Counter) -> None:
    for module in (agf_floor, agf_conv, agf_rules):
        for name in ("conv_forward", "conv_transpose"):
            original = getattr(module, name)

            def counted(*args, _original=original, _name=name, **kwargs):
                calls[_name] += 1
                return _original(*args, **kwargs)
            monkeypatch.setattr(module, name, counted)


def _full_conv_output_maps(agf: AGF, x: torch.Tensor) -> list:
    from sslx.attribution.forward import run_model
    from sslx.attribution.graph import CONV

    env, _, _ = run_model(agf.graph, x, None)
    return [(s, env[s.node].shape[2:]) for s in agf.graph.layers(CONV) if s.role == "full"]


@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
def test_floor_runs_the_convolutions_agf_runs(monkeypatch, arch):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=5).eval()
    x = torch.randn(2, 3, 128, 128)
    agf = AGF(model)
    roles = Counter(agf.conv_roles.values())
    floor = agf_floor.product_floor(agf, x)
    agf_calls, floor_calls = Counter(), Counter()
    _count_products(monkeypatch, agf_calls)
    agf.attribute(x)
    monkeypatch.undo()
    _count_products(monkeypatch, floor_calls)
    floor()
    # first: conv(x, W) + one stacked adjoint; flat: gradient, C forward, C adjoint; full: + the A adjoint, which
    # shares the C adjoint's call where the map is no larger than the kernel
    stacked = sum(agf_conv.stacking_pays(torch.empty(x.shape[0], s.module.out_channels, *shape), s.module.weight)
                  for s, shape in _full_conv_output_maps(agf, x))
    assert 0 < stacked < roles["full"]  # both forms are counted
    expected = Counter(conv_forward=sum(roles.values()),
                       conv_transpose=roles["first"] + 2 * roles["flat"] + 3 * roles["full"] - stacked)
    assert floor_calls == expected
    assert agf_calls == expected
