"""AGF explains the models ssl_models.load returns, with no special cases."""
import pytest
import torch

import ssl_models
from sslx import AGF

import ssl_fixtures as fx


def _save_and_load(tmp_path, obj, name):
    path = fx.save(obj, tmp_path / name)
    return ssl_models.load(path).double()


@pytest.mark.parametrize("kind", ["rotnet", "sela", "scan_cifar", "scan_imagenet"])
def test_agf_runs_on_loaded_ssl_models(tmp_path, kind):
    if kind == "rotnet":
        ref = fx.small_rotnet()
        model = _save_and_load(tmp_path, {"epoch": 50, "network": fx.legacy_state(ref.state_dict())}, "rot")
        size = 128
    elif kind == "sela":
        model = _save_and_load(tmp_path, fx.small_sela_alexnet().state_dict(), "sela.pth")
        size = 128
    elif kind == "scan_cifar":
        model = _save_and_load(tmp_path, {"model": fx.small_scan_cifar().state_dict(), "head": 1}, "scan.pth")
        size = 32
    else:
        fx.write_scan_imagenet(tmp_path / "scan50.pth", nheads=2, clusters=5, head=1)
        model = ssl_models.load(tmp_path / "scan50.pth").double()
        size = 64
    x = fx.images(size, batch=2).double()
    agf = AGF(model)
    heat = agf.attribute(x)
    assert heat.shape == (2, 1, size, size) and torch.isfinite(heat).all()
    assert (heat.abs().amax(dim=(1, 2, 3)) > 0).all()
    single = torch.cat([agf.attribute(x[i:i + 1], heat.new_tensor([0]).long()) for i in range(2)])
    assert torch.allclose(agf.attribute(x, torch.tensor([0, 0])), single, atol=1e-6)
    roles = agf.conv_roles
    assert list(roles.values())[0] == "first" and "full" in roles.values()
